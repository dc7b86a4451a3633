"""The playground at `GET /`, in a real browser: Debian's chromium, headless, driven through
chromium-driver by Selenium (no browser download). A real server process on loopback, the tiny
model; the page's images are checked against the API's own answers, pixel for pixel, and the
code it offers to copy is run as it is, with the official clients and curl."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from support.api_server import KEYS, REPO, Server
from support.helpers import pixels, smooth_image

from sdxl.config import COG_INPUTS

pytestmark = pytest.mark.http

QUICK = {"width": "256", "height": "256", "num_inference_steps": "3"}


@pytest.fixture(scope="module")
def server(playground_server):
    return playground_server


@pytest.fixture(scope="module")
def browser(playground_browser):
    return playground_browser


@pytest.fixture
def page(browser, server):
    """The playground, freshly loaded, the API key entered."""
    browser.set_window_size(1280, 1400)
    browser.get(server.base + "/")
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    key = browser.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys(KEYS[0], Keys.ENTER)
    return browser


def wait(driver, condition, timeout: float = 120):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def fill(driver, values: dict[str, str]) -> None:
    advanced = driver.find_element(By.ID, "advanced")
    if advanced.get_attribute("open") is None:
        summary = advanced.find_element(By.TAG_NAME, "summary")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
        summary.click()
    for name, value in values.items():
        field = driver.find_element(By.ID, f"in-{name}")
        field.clear()
        field.send_keys(value)


def run_and_wait(driver, until=("succeeded", "failed", "canceled", "refused")) -> str:
    driver.find_element(By.ID, "in-prompt").send_keys(Keys.CONTROL, Keys.ENTER)
    body = driver.find_element(By.TAG_NAME, "body")
    return wait(driver, lambda d: body.get_attribute("data-prediction-status") in until and body)


def status_of(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-prediction-status")


def decoded(uri: str) -> np.ndarray:
    header, payload = uri.split(",", 1)
    assert header.startswith("data:image/"), header
    return pixels(Image.open(io.BytesIO(base64.b64decode(payload))))


def page_images(driver) -> list[str]:
    return [
        img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, "#gallery img")
    ]


def api_images(server: Server, inputs: dict) -> list[str]:
    prediction = server.create_prediction(inputs)
    done = server.wait_prediction(prediction["id"])
    assert done["status"] == "succeeded", done
    return done["output"]


def test_the_form_is_the_schema_and_a_run_gives_the_apis_pixels(page, server):
    for name, spec in COG_INPUTS.items():  # every input of the predictor, with its default
        field = page.find_element(By.ID, f"in-{name}")
        if field.get_attribute("type") == "checkbox":
            assert field.is_selected() == spec.default, name
        elif spec.kind == "number" and spec.default is not None:  # 0.0 is written 0
            assert float(field.get_attribute("value")) == spec.default, name
        elif field.get_attribute("type") != "file":
            assert field.get_attribute("value") == (
                "" if spec.default is None else str(spec.default)
            ), name
    assert page.find_element(By.ID, "advanced").get_attribute("open") is None  # folded away
    fill(page, {**QUICK, "seed": "7"})
    prompt = page.find_element(By.ID, "in-prompt")
    prompt.clear()
    prompt.send_keys("a lighthouse at dusk")
    run_and_wait(page)
    assert status_of(page) == "succeeded", page.find_element(By.ID, "error").text
    (shown,) = page_images(page)
    inputs = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256}
    (expected,) = api_images(server, {**inputs, "num_inference_steps": 3, "seed": 7})
    assert (decoded(shown) == decoded(expected)).all()
    caption = page.find_element(By.CSS_SELECTOR, "#gallery figcaption")
    assert "seed 7" in caption.text
    assert caption.find_element(By.LINK_TEXT, "Download").get_attribute("href") == shown
    assert "base step 3/3" in page.find_element(By.ID, "logs").get_attribute("textContent")
    assert KEYS[0] not in page.current_url
    assert page.execute_script("return sessionStorage.length") == 1


@pytest.mark.parametrize("language", ["python", "javascript", "curl"])
def test_copied_code_runs_and_gives_the_pages_image(page, server, tmp_path, language):
    fill(page, {**QUICK, "seed": "11"})
    page.find_element(By.ID, f"tab-{language}").click()
    code = page.find_element(By.ID, "code").get_attribute("textContent")
    assert server.base in code and "11" in code
    env = {**os.environ, "SDXL_API_KEY": KEYS[0]}
    if language == "python":
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
    elif language == "javascript":
        script = REPO / "tests" / "js" / f"copied-{os.getpid()}.mjs"  # beside its node_modules
        script.write_text(code)
        try:
            done = subprocess.run(
                ["node", str(script)], env=env, capture_output=True, text=True, timeout=300
            )
        finally:
            script.unlink()
    else:
        done = subprocess.run(
            ["bash", "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr
    uris = re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", done.stdout)
    assert len(uris) == 1, done.stdout[:500]
    if language == "curl":
        assert json.loads(done.stdout)["status"] == "succeeded"
    run_and_wait(page)
    (shown,) = page_images(page)
    assert (decoded(uris[0]) == decoded(shown)).all()


def paint_right_part(driver) -> None:
    """Brush strokes over the right 40% of the image, with the pointer."""
    size = driver.find_element(By.ID, "brush-size")
    driver.execute_script(
        "arguments[0].value = 64; arguments[0].dispatchEvent(new Event('input'))", size
    )
    canvas = driver.find_element(By.CSS_SELECTOR, ".painter canvas")
    width, height = canvas.size["width"], canvas.size["height"]
    scale = width / 256  # the canvas is shown scaled; 64 image pixels of brush
    rows = [*range(2, height - 2, int(24 * scale)), height - 2]
    for y in rows:
        start = (int(0.75 * width) - width // 2, y - height // 2)  # offsets from the centre
        stroke = ActionChains(driver).move_to_element_with_offset(canvas, *start).click_and_hold()
        stroke.move_by_offset(width // 2 - 2 - start[0], 0).release().perform()


@pytest.mark.slow  # the brush in a browser; inpainting's pixels are checked on every API
def test_a_painted_mask_repaints_only_where_painted(page, server, tmp_path):
    source = smooth_image(256, 256, seed=4)
    path = tmp_path / "photo.png"
    source.save(path)
    page.find_element(By.ID, "in-image").send_keys(str(path))
    wait(
        page,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, ".painter canvas").get_attribute("width") == "256"
        ),
    )
    paint_right_part(page)
    page.find_element(By.ID, "brush-clear").click()
    assert '"mask"' not in page.find_element(By.ID, "code").get_attribute("textContent")
    paint_right_part(page)
    fill(page, {**QUICK, "seed": "5"})
    run_and_wait(page)
    assert status_of(page) == "succeeded", page.find_element(By.ID, "error").text
    (shown,) = page_images(page)
    got, original = decoded(shown), pixels(source)
    keep = np.s_[:, : int(0.6 * 256)]  # the brush's reach ends at 75% - 32 pixels
    assert (got[keep] == original[keep]).all(), "kept pixels changed"
    assert np.abs(got[:, int(0.8 * 256) :] - original[:, int(0.8 * 256) :]).mean() > 5
    sent = server.prediction(
        page.find_element(By.TAG_NAME, "body").get_attribute("data-prediction-id")
    )
    mask = decoded(sent["input"]["mask"])
    assert mask.shape == (256, 256, 3) and set(np.unique(mask)) == {0, 255}
    assert (mask[keep] == 0).all() and (mask[:, 200:] == 255).all()
    (expected,) = api_images(server, sent["input"])
    assert (decoded(expected) == got).all()
    screenshot = os.environ.get("SDXL_PLAYGROUND_SCREENSHOT")
    if screenshot:  # docs/playground.png is made this way
        page.execute_script("scrollTo(0, 0)")
        page.save_screenshot(screenshot)


def test_a_long_run_shows_progress_and_cancels(page, server):
    fill(page, {**QUICK, "num_inference_steps": "400"})
    page.find_element(By.ID, "run").click()
    wait(page, lambda d: d.find_element(By.ID, "status").text.startswith("Running: base"))
    wait(page, lambda d: float(d.find_element(By.ID, "progress").get_attribute("value")) > 0)
    preview = page.find_element(By.ID, "preview")
    wait(page, lambda d: preview.is_displayed() and preview.get_attribute("data-step"))
    size = page.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", preview
    )
    assert size == [32, 32]  # the latents' size, an eighth of 256x256
    prediction_id = page.find_element(By.TAG_NAME, "body").get_attribute("data-prediction-id")
    route = requests.get(
        f"{server.base}/v1/predictions/{prediction_id}/preview",
        headers={"Authorization": f"Bearer {KEYS[0]}"},
        timeout=10,
    )
    assert route.headers["Content-Type"] == "image/jpeg", route
    assert route.headers["X-Preview-Total"] == "400" and int(route.headers["X-Preview-Step"]) >= 5
    page.find_element(By.ID, "cancel").click()
    run_and_wait(page, until=("canceled",))
    assert page.find_element(By.ID, "status").text == "Canceled."
    assert not preview.is_displayed()
    assert server.prediction(prediction_id)["status"] == "canceled"


def test_a_bad_value_shows_the_servers_422_message(page):
    fill(page, {**QUICK, "width": "5000"})
    run_and_wait(page, until=("refused",))
    error = page.find_element(By.ID, "error")
    assert error.is_displayed() and "input.width" in error.text and "2048" in error.text


def test_a_refused_key_says_so(page):
    key = page.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys("not-a-key", Keys.ENTER)
    fill(page, QUICK)
    run_and_wait(page, until=("refused",))
    assert "API key was refused" in page.find_element(By.ID, "error").text
    assert page.switch_to.active_element == key


def test_phone_sized_and_keyboard_only(page):
    page.set_window_size(390, 844)
    wide = page.execute_script("return document.documentElement.scrollWidth > innerWidth")
    assert not wide, "the page scrolls sideways on a phone-sized screen"
    page.execute_script("document.activeElement.blur()")
    reached = []
    for _ in range(12):  # Tab through the top of the page
        ActionChains(page).send_keys(Keys.TAB).perform()
        reached.append(page.switch_to.active_element.get_attribute("id"))
    assert {"api-key", "in-prompt", "in-negative_prompt", "in-image"} <= set(reached), reached
    tabs = page.find_element(By.ID, "tab-javascript")
    tabs.send_keys(Keys.ARROW_RIGHT)
    assert page.switch_to.active_element.get_attribute("id") == "tab-python"
    assert "client.run(" in page.find_element(By.ID, "code").get_attribute("textContent")
