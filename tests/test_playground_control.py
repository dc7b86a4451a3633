"""The playground's ControlNet section, in a real browser (the session's chromium and server,
tests/support/browser.py): pick a control type from the schema's choices, drop a control
image, run; the detected map is shown apart from the image, both as the Replicate API returns
them for the inputs the page sent."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from test_datacrunch_control import shapes
from test_playground import (
    QUICK,
    api_images,
    browser,
    decoded,
    fill,
    page,
    page_images,
    run_and_wait,
    server,
    status_of,
    wait,
)

pytestmark = pytest.mark.http
# fixtures, imported (named here so that linters see them used).
__all__ = ["browser", "page", "server"]

DROP = """
const [zone, payload] = arguments;
const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], "shapes.png", { type: "image/png" }));
const options = { dataTransfer: transfer, bubbles: true, cancelable: true };
zone.dispatchEvent(new DragEvent("drop", options));
"""


def open_control_section(driver) -> None:
    section = driver.find_element(By.ID, "control")
    if section.get_attribute("open") is None:
        summary = section.find_element(By.TAG_NAME, "summary")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
        summary.click()


def test_a_canny_unit_shows_its_detected_map_apart_from_the_image(page, server, tmp_path):
    open_control_section(page)
    section = page.find_element(By.ID, "control-fields")
    kind = Select(section.find_element(By.ID, "in-controlnet_1"))
    choices = [option.get_attribute("value") for option in kind.options]
    assert {"none", "canny", "depth", "union_canny"} <= set(choices), choices
    assert not page.find_element(By.ID, "in-return_control_maps").is_selected()
    kind.select_by_value("canny")
    assert section.find_element(By.ID, "in-return_control_maps").is_selected()
    path = tmp_path / "shapes.png"
    shapes().save(path)
    zone = section.find_element(By.CSS_SELECTOR, ".drop")
    page.execute_script(DROP, zone, base64.b64encode(path.read_bytes()).decode())
    code = page.find_element(By.ID, "code")
    wait(page, lambda d: "controlnet_1_image" in code.get_attribute("textContent"))
    fill(page, {**QUICK, "seed": "9"})
    run_and_wait(page)
    assert status_of(page) == "succeeded", page.find_element(By.ID, "error").text
    maps = page.find_element(By.ID, "maps")
    assert maps.is_displayed()
    (shown_map,) = [img.get_attribute("src") for img in maps.find_elements(By.TAG_NAME, "img")]
    (shown,) = page_images(page)
    assert "canny map" in maps.find_element(By.TAG_NAME, "figcaption").text
    edges = decoded(shown_map)  # an edge map: black, with white edges
    assert set(np.unique(edges)) <= {0, 255} and 0.002 < (edges == 255).mean() < 0.3
    sent = server.prediction(page.find_element(By.TAG_NAME, "body").get_attribute(
        "data-prediction-id"))["input"]  # fmt: skip
    assert (sent["controlnet_1"], sent["return_control_maps"]) == ("canny", True)
    expected_map, expected = api_images(server, sent)
    assert (decoded(expected_map) == edges).all() and (decoded(expected) == decoded(shown)).all()
    kind.select_by_value("none")  # no unit: no maps asked for, none shown after the next run
    remove = zone.find_element(By.TAG_NAME, "button")  # the control image's Remove
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", remove)
    remove.click()
    assert not page.find_element(By.ID, "in-return_control_maps").is_selected()
    run_and_wait(page)
    assert status_of(page) == "succeeded", page.find_element(By.ID, "error").text
    assert not maps.is_displayed() and len(page_images(page)) == 1
