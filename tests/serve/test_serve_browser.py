"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Skipped where Chromium is absent; ``make test`` installs it (``make browser``). The screenshot goes
to ``tests/artifacts/serve-browser.png`` (ignored by git); its path is printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cope.serve.app import create_app
from cope.serve.config import ServeSettings
from cope.serve.server import BackgroundServer
from tests.serve.support import BROWSER_TESTS, MODEL_NAME, SAMPLE, load, tiny_checkpoint

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = BROWSER_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("browser-model") / "tiny")
    settings = ServeSettings(model_name=MODEL_NAME, work_root=tmp_path_factory.mktemp("browser-work"))
    with BackgroundServer(create_app(load(checkpoint), settings)) as running:
        yield running


def test_page_uploads_video_shows_summary_and_streams_an_answer(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(ready.text_to_be_present_in_element((By.ID, "model-name"), MODEL_NAME))

    browser.find_element(By.ID, "file-input").send_keys(str(SAMPLE))
    wait.until(ready.visibility_of_element_located((By.ID, "summary")))
    assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("blob:")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-plan='cope_k1']").text.split()
    # RGB frames, Δ-frames, paper-layout tokens, % of dense64, this model's tokens (3×3 grid + newlines)
    assert row == ["cope_k1", "1", "7", "280", "2.1", "82"]  # the 8-s sample is one GOP: 1 I + 7 P
    assert "1 I-frames" in browser.find_element(By.ID, "summary-stream").text

    question = browser.find_element(By.ID, "question")
    wait.until(lambda _: question.is_enabled())
    question.send_keys("what is moving ?")
    browser.find_element(By.ID, "ask-button").click()

    meta = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".bubble.assistant .meta.ttft")))
    answer = browser.find_element(By.CSS_SELECTOR, ".bubble.assistant")
    assert answer.find_element(By.CSS_SELECTOR, ".text").text.strip(), "an answer appeared"
    assert int(answer.get_attribute("data-chunks")) >= 2, "the answer streamed in several pieces"
    assert meta.text.startswith("TTFT ") and float(answer.get_attribute("data-ttft")) > 0
    assert "error" not in answer.get_attribute("class")

    # A second question reuses the conversation (and the server's encoded video).
    question.send_keys("which direction ?")
    browser.find_element(By.ID, "ask-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bubble.assistant .meta.ttft")) == 2)
    second = browser.find_elements(By.CSS_SELECTOR, ".bubble.assistant .meta.ttft")[1].text
    assert "video embeddings reused, KV cache reused" in second

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-browser.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
