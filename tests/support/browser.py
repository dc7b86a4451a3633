"""The playground's browser and server, one each for the whole session (its Generate page's
tests and its Train page's share them): Debian's chromium, headless, driven through
chromium-driver by Selenium (no browser download), and a server process on loopback."""

from __future__ import annotations

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

from support.api_server import KEYS, serving

MISSING = (
    "the playground's tests need Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver, as the README's test command does)"
)


@pytest.fixture(scope="session")
def playground_server(tiny_weights, tmp_path_factory):
    with serving(
        tiny_weights, tmp_path_factory.mktemp("playground"), {"SDXL_API_KEYS": KEYS[0]}
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def playground_browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1400")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a browser online
    driver = webdriver.Chrome(service=ChromeService(executable_path=driver_path), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
