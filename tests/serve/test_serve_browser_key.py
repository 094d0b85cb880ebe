"""The web page against a server started with an API key, in a real headless Chromium.

The page loads without the key, asks for it when the API answers 401, keeps it in localStorage and
sends it with every call. Skipped where Chromium is absent, like ``test_serve_browser.py``.
"""

from __future__ import annotations

import pytest

from cope.serve.app import create_app
from cope.serve.config import ServeSettings
from cope.serve.server import BackgroundServer
from tests.serve.support import BROWSER_TESTS, MODEL_NAME, SAMPLE, load, tiny_checkpoint

KEY = "page-key-123"

pytestmark = BROWSER_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("browser-key-model") / "tiny")
    settings = ServeSettings(
        model_name=MODEL_NAME, work_root=tmp_path_factory.mktemp("browser-key-work"), api_key=KEY
    )
    with BackgroundServer(create_app(load(checkpoint), settings)) as running:
        yield running


def test_page_asks_for_the_key_and_then_works(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(ready.visibility_of_element_located((By.ID, "key-form")))
    assert "API key" in browser.find_element(By.ID, "upload-status").text

    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "model-name"), MODEL_NAME))
    assert browser.execute_script("return localStorage.getItem('cope-api-key')") == KEY

    browser.find_element(By.ID, "file-input").send_keys(str(SAMPLE))
    wait.until(ready.visibility_of_element_located((By.ID, "summary")))
    question = browser.find_element(By.ID, "question")
    wait.until(lambda _: question.is_enabled())
    question.send_keys("what is moving ?")
    browser.find_element(By.ID, "ask-button").click()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".bubble.assistant .meta.ttft")))
    answer = browser.find_element(By.CSS_SELECTOR, ".bubble.assistant")
    assert "error" not in answer.get_attribute("class")

    # A reload remembers the key.
    browser.refresh()
    wait.until(ready.text_to_be_present_in_element((By.ID, "model-name"), MODEL_NAME))
