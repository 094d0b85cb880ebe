"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Skipped where Chromium is absent; ``make test`` installs it (``make browser``). The screenshot goes
to ``tests/artifacts/serve-browser.png`` (ignored by git); its path is printed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cope.serve.app import create_app
from cope.serve.config import ServeSettings
from cope.serve.server import BackgroundServer
from tests.serve.support import MODEL_NAME, SAMPLE, load, tiny_checkpoint

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.slow,  # a real browser against a real server
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="Chromium / chromedriver not installed (make browser)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("browser-model") / "tiny")
    settings = ServeSettings(model_name=MODEL_NAME, work_root=tmp_path_factory.mktemp("browser-work"))
    with BackgroundServer(create_app(load(checkpoint), settings)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with both paths given, Selenium Manager never downloads anything
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


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
