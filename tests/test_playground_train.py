"""The playground's Train page in a real browser, as in tests/test_playground.py (Debian's
chromium driven by Selenium, a real server process on loopback, the tiny model): a zip of
photos uploaded, a training started, its loss curve and log followed to success, its
trained_model.tar downloaded through the page's link, and its new version put in the Generate
form (nothing run until Run is pressed), the image checked against the API's own, pixel for
pixel; a long training cancelled and its checkpoint offered; an archive dropped on the page, a
destination that is not the caller's and a file that is no archive refused with the server's
reasons."""

from __future__ import annotations

import base64
import os

import pytest
from selenium.webdriver.common.by import By
from support.api_server import ENDED
from support.archives import photos, write_zip
from test_playground import QUICK, browser, decoded, fill, page, page_images, server, wait

pytestmark = pytest.mark.http

# The browser, the page with its key entered, and one server for this module: test_playground's
# fixtures, imported (named here so that linters see them used).
__all__ = ["browser", "page", "server"]

STEPS = 8
# What keeps a training of the tiny model to a fraction of a second a step on a CPU.
TRAIN_QUICK = {"resolution": "256", "train_batch_size": "2", "lora_rank": "4", "seed": "5"}
TRAINING_ENDED = (*ENDED, "refused")
# clientWidth, not innerWidth: that counts the vertical scrollbar, wide enough to hide a
# small overflow.
WIDER_THAN_SCREEN = (
    "const root = document.documentElement; return root.scrollWidth > root.clientWidth"
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_zip(tmp_path_factory.mktemp("train") / "photos.zip", photos(3))


@pytest.fixture(scope="module")
def tenant(server) -> str:
    """The key's account name, as the server names it (the key has no name: a digest)."""
    response = server.api("GET", "/v1/account")
    assert response.status_code == 200, response.text
    return response.json()["username"]


@pytest.fixture
def train_page(page, archive, tenant):
    """The Train page, the photos chosen, the destination filled in from the key's account;
    afterwards, no script error in the browser's console."""
    page.get_log("browser")  # read, so emptied
    fill(page, {**QUICK, "seed": "5"})  # the Generate page's inputs the new version runs with
    page.find_element(By.ID, "nav-train").click()
    wait(page, lambda d: d.find_element(By.ID, "train-page").is_displayed())
    assert not page.find_element(By.ID, "generate-page").is_displayed()
    page.find_element(By.ID, "train-images").send_keys(str(archive))
    wait(page, lambda d: "photos.zip" in d.find_element(By.ID, "train-file").text)
    destination = page.find_element(By.ID, "train-destination")
    wait(page, lambda d: destination.get_attribute("value") == f"{tenant}/my-sdxl")
    yield page
    errors = [e for e in page.get_log("browser") if e["source"] in ("javascript", "security")]
    assert not errors, errors


def fill_training(driver, values: dict[str, str]) -> None:
    advanced = driver.find_element(By.ID, "train-advanced")
    if advanced.get_attribute("open") is None:
        summary = advanced.find_element(By.TAG_NAME, "summary")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
        summary.click()
    for name, value in values.items():
        field = driver.find_element(By.ID, f"in-train-{name}")
        field.clear()
        field.send_keys(value)


def body_data(driver, name: str) -> str | None:
    return driver.find_element(By.TAG_NAME, "body").get_attribute(f"data-{name}")


def start_training(driver, steps: int, until=TRAINING_ENDED) -> None:
    fill_training(driver, {**TRAIN_QUICK, "max_train_steps": str(steps)})
    driver.find_element(By.ID, "train-start").click()
    if until:
        wait(driver, lambda d: body_data(d, "training-status") in until)


def code_shown(driver) -> str:
    return driver.find_element(By.ID, "code").get_attribute("textContent")


def chart_points(driver) -> int:
    return int(driver.find_element(By.ID, "loss-chart").get_attribute("data-points"))


# The bytes a URL gives in the page with the key the page holds (base64).
FETCHED = """
const [url, done] = arguments;
const key = sessionStorage.getItem("sdxl-playground-api-key");
fetch(url, {headers: {Authorization: `Bearer ${key}`}})
  .then((response) => response.ok ? response.blob() : Promise.reject(response.status))
  .then((blob) => new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",")[1]);
    reader.readAsDataURL(blob);
  }))
  .then(done, (error) => done(`failed: ${error}`));
"""


def fetched_in_page(driver, url: str) -> bytes:
    driver.set_script_timeout(60)
    answer = driver.execute_async_script(FETCHED, url)
    assert not answer.startswith("failed"), answer
    return base64.b64decode(answer)


def served(server, url: str) -> bytes:
    """What the API gives for one of its URLs, with the key."""
    answer = server.api("GET", url.removeprefix(server.base))
    assert answer.status_code == 200, answer.text
    return answer.content


def prediction_ids(server) -> list[str]:
    """Every prediction of the key's, over the API (all pages)."""
    ids, path = [], "/v1/predictions"
    while path:
        answer = server.api("GET", path)
        assert answer.status_code == 200, answer.text
        ids += [p["id"] for p in answer.json()["results"]]
        path = (answer.json()["next"] or "").removeprefix(server.base)
    return ids


def downloaded(driver, folder, name: str):
    """The link's file, once the browser has saved it in `folder`."""
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)}
    )
    driver.find_element(By.ID, "train-download").click()
    wait(driver, lambda d: (folder / name).is_file() and not list(folder.glob("*.crdownload")))
    return (folder / name).read_bytes()


def test_a_training_shows_its_loss_then_its_version_generates(train_page, server, tenant, tmp_path):
    page = train_page
    start_training(page, STEPS)
    status = page.find_element(By.ID, "train-status").text
    assert body_data(page, "training-status") == "succeeded", (
        status + page.find_element(By.ID, "train-error").text
    )
    # The loss curve: a point a step, in order, and the log's step lines under it.
    assert chart_points(page) == STEPS
    dots = page.find_elements(By.CSS_SELECTOR, "#loss-chart circle.point")
    assert [dot.get_attribute("data-step") for dot in dots] == [str(i) for i in range(1, STEPS + 1)]
    logs = page.find_element(By.ID, "train-logs").get_attribute("textContent")
    assert f"step {STEPS}/{STEPS} loss " in logs and "step 1/" in logs
    # What the page sent: the upload's URL and the inputs of the form.
    training_id = body_data(page, "training-id")
    training = server.api("GET", f"/v1/trainings/{training_id}").json()
    assert training["status"] == "succeeded" and training["destination"] == f"{tenant}/my-sdxl"
    assert training["input"]["input_images"].startswith(f"{server.base}/v1/files/")
    assert {k: training["input"][k] for k in ("max_train_steps", *TRAIN_QUICK)} == {
        "max_train_steps": STEPS,
        **{k: int(v) for k, v in TRAIN_QUICK.items()},
    }
    version = training["output"]["version"]
    assert version in status
    screenshot = os.environ.get("SDXL_PLAYGROUND_TRAIN_SCREENSHOT")
    if screenshot:  # how the Train page looks once a training is done
        page.execute_script("scrollTo(0, 0)")
        page.save_screenshot(screenshot)
    page.set_window_size(390, 844)
    wide = page.execute_script(WIDER_THAN_SCREEN)
    assert not wide, "the Train page scrolls sideways on a phone-sized screen"
    page.set_window_size(1280, 1400)

    # The trained tar: a link to its weights URL, which gives the API's bytes in the page, and
    # a click saves it as the server names it.
    link = page.find_element(By.ID, "train-download")
    assert link.is_displayed() and "trained_model.tar" in link.text
    assert link.get_attribute("href") == training["output"]["weights"]
    tar = served(server, training["output"]["weights"])
    assert fetched_in_page(page, link.get_attribute("href")) == tar
    assert downloaded(page, tmp_path, "trained_model.tar") == tar

    # "Generate with this version" fills the Generate form and runs nothing until Run.
    before = prediction_ids(server)
    page.find_element(By.ID, "train-generate").click()
    wait(page, lambda d: d.find_element(By.ID, "generate-page").is_displayed())
    assert page.find_element(By.ID, "in-prompt").get_attribute("value") == "a photo of TOK"
    assert f"{tenant}/my-sdxl" in page.find_element(By.ID, "form-status").text
    assert page.find_element(By.ID, "status").text.startswith("Check the inputs")
    assert page.find_element(By.ID, "run").is_enabled()  # a run would have disabled it
    assert page.find_element(By.ID, "in-width").get_attribute("value") == QUICK["width"]
    assert body_data(page, "prediction-status") is None
    assert prediction_ids(server) == before
    page.find_element(By.ID, "run").click()
    wait(page, lambda d: body_data(d, "prediction-status") in (*ENDED, "refused"))
    error = page.find_element(By.ID, "error").text
    assert body_data(page, "prediction-status") == "succeeded", error
    sent = server.prediction(body_data(page, "prediction-id"))
    assert prediction_ids(server) == [sent["id"], *before]
    assert (sent["model"], sent["version"]) == (f"{tenant}/my-sdxl", training_id)
    (shown,) = page_images(page)
    inputs = {"prompt": "a photo of TOK", "width": 256, "height": 256, "seed": 5}
    body = {"version": version, "input": {**inputs, "num_inference_steps": 3}}
    created = server.api("POST", "/v1/predictions", body)
    assert created.status_code == 201, created.text
    done = server.wait_prediction(created.json()["id"])
    assert done["status"] == "succeeded", done
    assert (decoded(shown) == decoded(done["output"][0])).all()
    # Back to the served model in one click; copy-as-code follows the version that runs.
    assert f"{tenant}/my-sdxl:{training_id}" in code_shown(page)
    page.find_element(By.ID, "use-base").click()
    assert "stability-ai/sdxl" in page.find_element(By.ID, "form-status").text
    assert f"{tenant}/my-sdxl" not in code_shown(page)


def test_a_long_training_cancels(train_page, server):
    page = train_page
    start_training(page, 2000, until=None)
    wait(page, lambda d: chart_points(d) >= 2)  # the curve grows while it runs
    status = page.find_element(By.ID, "train-status")
    wait(page, lambda d: status.text.startswith("Training: step "))
    assert "/2000, loss " in status.text
    logs = page.find_element(By.ID, "train-logs").get_attribute("textContent")
    assert "step 1/2000 loss " in logs
    page.find_element(By.ID, "train-cancel").click()
    wait(page, lambda d: body_data(d, "training-status") in TRAINING_ENDED)
    assert body_data(page, "training-status") == "canceled"
    assert status.text == "Canceled."
    assert not page.find_element(By.ID, "train-generate").is_displayed()
    assert not page.find_element(By.ID, "train-cancel").is_displayed()
    training = server.api("GET", f"/v1/trainings/{body_data(page, 'training-id')}").json()
    assert training["status"] == "canceled"
    # Stopped after a step: its checkpoint, to go on from, is offered.
    link = page.find_element(By.ID, "train-download")
    assert link.is_displayed() and "checkpoint" in link.text
    assert link.get_attribute("href") == training["output"]["checkpoint"]
    assert fetched_in_page(page, link.get_attribute("href")) == served(
        server, training["output"]["checkpoint"]
    )


DROP = """
const data = new DataTransfer();
data.items.add(new File([new Uint8Array(300)], "dropped.zip", {type: "application/zip"}));
const drop = new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true});
arguments[0].dispatchEvent(drop);
"""


def test_a_dropped_archive_and_the_servers_refusals(train_page, tenant):
    page = train_page
    page.execute_script(DROP, page.find_element(By.ID, "train-drop"))
    assert page.find_element(By.ID, "train-file").text == "dropped.zip, 1 kB"
    destination = page.find_element(By.ID, "train-destination")
    destination.clear()
    destination.send_keys("someone-else/my-sdxl")
    start_training(page, STEPS)
    assert body_data(page, "training-status") == "refused"
    error = page.find_element(By.ID, "train-error")
    assert error.is_displayed() and repr(tenant) in error.text, error.text
    assert page.find_element(By.ID, "train-status").text == "Not started."
    destination.clear()
    destination.send_keys(f"{tenant}/my-sdxl")
    page.find_element(By.ID, "train-start").click()  # the dropped zip is 300 zero bytes
    wait(page, lambda d: body_data(d, "training-status") in TRAINING_ENDED)
    assert body_data(page, "training-status") == "failed"
    assert "neither a zip nor a tar" in error.text, error.text
    assert page.find_element(By.ID, "train-status").text == "Failed."
