"""Fixtures of the serve tests: a headless Chromium for the web-page tests."""

from __future__ import annotations

import pytest

from tests.serve.support import CHROMEDRIVER, CHROMIUM


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium through Selenium; with both paths given, Selenium Manager never downloads."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
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
