"""AUTOMATIC1111's API on `python -m sdxl api`, called by `webuiapi` 0.9.17 (PyPI), the common
client of that API, with its own defaults: txt2img, img2img and inpainting, progress with a
preview, interrupt, the lists and options, HTTP Basic. A real server on loopback, the tiny
model; pixels are compared with the Replicate API's for the same effective inputs and seed."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image
from support.api_server import KEYS, serving
from support.helpers import (
    PIXEL_TOLERANCE,
    assert_same_image,
    generator,
    half_mask,
    pixels,
    reference_scheduler,
    smooth_image,
    wait_until,
    with_scheduler,
)

from sdxl.config import LATENT_UPSCALERS

pytestmark = pytest.mark.http

SMALL = {"width": 256, "height": 256, "steps": 3, "seed": 7, "cfg_scale": 7.0}


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    keys = {"SDXL_API_KEYS": ",".join(KEYS)}  # two callers, each with its own options
    with serving(tiny_weights, tmp_path_factory.mktemp("a1111"), keys) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server):
    """webuiapi as its users make it: host, port, and --api-auth credentials (any user name,
    an API key as the password)."""
    parts = urlsplit(server.base)
    return webuiapi.WebUIApi(
        host=parts.hostname, port=parts.port, username="anyone", password=KEYS[0]
    )


def replicate_image(server, inputs: dict) -> Image.Image:
    created = server.create_prediction(inputs)
    done = server.wait_prediction(created["id"])
    assert done["status"] == "succeeded", done
    with Image.open(io.BytesIO(base64.b64decode(done["output"][0].partition(",")[2]))) as img:
        img.load()
        return img


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(pixels(a), pixels(b))


def reference_inputs(scheduler: str, **extra) -> dict:
    """The Replicate API's inputs for SMALL: the same prompt, size, steps, seed and guidance."""
    return {"prompt": "a cat", "negative_prompt": "", "width": 256, "height": 256,
            "num_inference_steps": 3, "seed": 7, "guidance_scale": 7.0, "scheduler": scheduler,
            **extra}  # fmt: skip


LINSPACE = {"timestep_spacing": "linspace"}


@pytest.mark.parametrize(
    ("sampler", "scheduler", "engine"),
    [
        # A1111 1.10's automatic: uniform sigmas (diffusers' "linspace") for Euler and Euler a
        ("Euler a", "automatic", {"scheduler": "K_EULER_ANCESTRAL", **LINSPACE}),
        ("Euler", "automatic", {"scheduler": "K_EULER", **LINSPACE}),
        ("Euler", "simple", {"scheduler": "K_EULER", "timestep_spacing": "trailing"}),
        ("DPM++ 2M", "automatic", {"scheduler": "KarrasDPM"}),  # its options' karras
        ("DPM++ 2M", "karras", {"scheduler": "KarrasDPM"}),
        ("DPM++ 2M Karras", "automatic", {"scheduler": "KarrasDPM"}),  # a legacy name
        ("DPM++ 2M", "sgm_uniform", {"scheduler": "DPMSolverMultistep", **LINSPACE}),
        ("DDIM", "automatic", {"scheduler": "DDIM"}),
        ("DDIM", "karras", {"scheduler": "DDIM"}),  # timestep samplers ignore the schedule
        ("Heun", "automatic", {"scheduler": "HeunDiscrete", **LINSPACE}),
        ("PLMS", "automatic", {"scheduler": "PNDM"}),
    ],
)  # fmt: skip
def test_txt2img_equals_the_replicate_apis_pixels(api, server, sampler, scheduler, engine):
    result = api.txt2img(prompt="a cat", sampler_name=sampler, scheduler=scheduler, **SMALL)
    assert same(result.image, replicate_image(server, reference_inputs(**engine)))
    assert result.info["all_seeds"] == [7] and result.info["seed"] == 7


def test_every_listed_sampler_runs_under_its_name(api):
    """Each name GET /sdapi/v1/samplers lists makes an image; its infotext names it."""
    listed = requests.get(api.baseurl + "/samplers", auth=api.session.auth, timeout=10).json()
    names = [entry["name"] for entry in listed]
    assert "DPM++ SDE" in names and "DPM++ 2M SDE" in names and "LMS" in names
    assert "DPM adaptive" not in names and "DPM++ 3M SDE" not in names  # cannot run here
    options = {entry["name"]: entry["options"] for entry in listed}
    assert options["DPM++ SDE"] == {
        "scheduler": "karras",
        "second_order": True,
        "brownian_noise": True,
    }
    small = {**SMALL, "steps": 2}
    for name in names:
        result = api.txt2img(prompt="a cat", sampler_name=name, **small)
        assert len(result.images) == 1 and result.info["sampler_name"] == name, name


def test_a_sampler_it_cannot_run_is_a_422_listing_those_it_can(api):
    for body, field in (
        ({"sampler_name": "DPM adaptive"}, "sampler_name"),
        ({"sampler_name": "Euler a", "scheduler": "karras"}, "scheduler"),
        ({"sampler_name": "Euler", "scheduler": "kl_optimal"}, "scheduler"),
    ):
        response = requests.post(
            api.baseurl + "/txt2img",
            json={"prompt": "a cat", **SMALL, **body},
            auth=api.session.auth,
            timeout=60,
        )
        assert response.status_code == 422, body
        assert field in response.text and "choose one of" in response.text, response.text


def test_info_is_a1111s_with_an_infotext_per_image(api):
    result = api.txt2img(prompt="a cat", negative_prompt="dog", batch_size=2, **SMALL)
    info = result.info
    assert len(result.images) == 2 and info["all_seeds"] == [7, 8]
    assert info["sampler_name"] == "Euler a" and info["sd_model_name"] == "sdxl"
    assert info["infotexts"][1] == (
        "a cat\nNegative prompt: dog\nSteps: 3, Sampler: Euler a, Schedule type: Automatic, "
        "CFG scale: 7.0, Seed: 8, Size: 256x256, Model: sdxl, Version: sdxl-cog"
    )
    assert result.parameters["eta"] == 1.0  # webuiapi's default, accepted and not used


def test_n_iter_runs_batches_with_the_seeds_continuing(api):
    result = api.txt2img(prompt="a cat", batch_size=2, n_iter=2, **SMALL)
    assert result.info["all_seeds"] == [7, 8, 9, 10] and len(result.images) == 4


def test_img2img_equals_the_replicate_apis_pixels(api, server):
    source = smooth_image(320, 256)
    result = api.img2img(images=[source], prompt="a cat", denoising_strength=0.6, **SMALL)
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    expected = replicate_image(
        server,
        reference_inputs("K_EULER_ANCESTRAL", image=uri, prompt_strength=0.6, **LINSPACE),
    )
    assert same(result.image, expected)  # the init image's size: width and height unused


def test_inpainting_repaints_white_and_keeps_black_exactly(api):
    source = smooth_image(256, 256)
    result = api.img2img(
        images=[source], mask_image=half_mask(256, 256), prompt="a cat",
        denoising_strength=0.9, **SMALL,
    )  # fmt: skip
    got = pixels(result.image)
    assert np.array_equal(got[:, :128], pixels(source)[:, :128])  # black: kept
    assert np.abs(got[:, 140:] - pixels(source)[:, 140:]).mean() > 5  # white: repainted
    inverted = api.img2img(
        images=[source], mask_image=half_mask(256, 256), inpainting_mask_invert=1,
        prompt="a cat", denoising_strength=0.9, **SMALL,
    )  # fmt: skip
    assert np.array_equal(pixels(inverted.image)[:, 128:], pixels(source)[:, 128:])


def test_progress_shows_a_preview_and_interrupt_answers_with_what_there_is(api, server):
    answers = []
    long = {**SMALL, "steps": 400}
    thread = threading.Thread(target=lambda: answers.append(api.txt2img(prompt="a cat", **long)))
    thread.start()
    progress = wait_until(
        lambda: (p := api.get_progress()).get("current_image") and p, "a preview in /progress"
    )
    assert 0 < progress["progress"] < 1 and progress["state"]["job_count"] == 1
    assert progress["state"]["sampling_steps"] == 400
    with Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))) as preview:
        assert preview.size == (32, 32)  # the latents' size: an eighth of the image's
    api.interrupt()
    thread.join(120)
    (answer,) = answers
    assert len(answer.images) == 1 and answer.info["all_seeds"] == [7]  # the partial image
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


def test_a_callers_second_request_never_hides_the_progress_of_its_first(api, server):
    """Two requests of one caller at once: /progress shows the running one until it ends, then
    the next; skip stops the running batch only."""
    answers: dict[str, object] = {}
    first = threading.Thread(
        target=lambda: answers.update(first=api.txt2img(prompt="a cat", **{**SMALL, "steps": 400}))
    )
    first.start()
    wait_until(lambda: api.get_progress()["state"]["sampling_step"] > 0, "the first one running")
    second = threading.Thread(
        target=lambda: answers.update(second=api.txt2img(prompt="a dog", **SMALL, n_iter=2))
    )
    second.start()
    wait_until(lambda: server.health()["queued"] >= 1, "the second one queued")
    progress = api.get_progress()
    assert progress["state"]["sampling_steps"] == 400 and progress["state"]["job_count"] == 1
    api.skip()  # the first one's only batch: it answers with nothing made
    first.join(120)
    second.join(120)
    assert answers["first"].images == []
    assert len(answers["second"].images) == 2  # the second request ran whole after it


def test_the_lists_and_options_clients_read(api, server):
    assert api.util_get_model_names() == ["sdxl"]
    assert api.util_get_current_model() == "sdxl"
    assert "Euler a" in api.util_get_sampler_names()
    assert api.util_get_scheduler_names() == sorted(  # webuiapi sorts them
        ["automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform",
         "simple", "normal", "ddim", "beta"]
    )  # fmt: skip
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    options = api.get_options()
    api.set_options(options)  # what Open WebUI posts back: accepted
    api.util_set_model("sdxl")
    styles = {style["name"] for style in api.get_prompt_styles()}
    assert "cinematic" in styles


def test_errors_in_a1111s_shape(server):
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    cases = [
        ({"steps": 0}, "steps"),
        ({"width": 260}, "width"),  # a rule of the model: answered after preparation
        ({"enable_hr": True, "hr_scale": 5}, "hr_scale"),
        ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),  # not installed
        ({"enable_hr": True, "hr_sampler_name": "DPM adaptive"}, "hr_sampler_name"),
        ({"styles": ["one", "two"]}, "styles"),
        ({"batch_size": 4, "n_iter": 3}, "batch_size x n_iter"),
    ]
    for body, field in cases:
        answer = requests.post(
            server.base + "/sdapi/v1/txt2img", json={**SMALL, **body}, headers=auth, timeout=60
        )
        assert answer.status_code == 422, answer.text
        found = answer.json()
        assert set(found) == {"error", "detail", "body", "errors"}
        assert found["detail"][0]["field"] == field, found
    unknown = requests.post(
        server.base + "/sdapi/v1/txt2img",
        json={**SMALL, "prompt": "a cat", "a_field_of_some_extension": 1},
        headers=auth,
        timeout=60,
    )
    assert unknown.status_code == 200  # ignored, as A1111 ignores fields it does not know
    wrong_model = requests.post(
        server.base + "/sdapi/v1/options",
        json={"sd_model_checkpoint": "sd_xl_turbo"},
        headers=auth,
        timeout=10,
    )
    assert wrong_model.status_code == 422 and "sd_xl_turbo" in json.dumps(wrong_model.json())
    for headers in ({}, {"Authorization": "Basic "}, {"Authorization": "Bearer wrong"}):
        denied = requests.get(server.base + "/sdapi/v1/options", headers=headers, timeout=10)
        assert denied.status_code == 401 and denied.json()["error"] == "HTTPException"
    missing = requests.get(server.base + "/sdapi/v1/nothing", headers=auth, timeout=10)
    assert missing.status_code == 404 and missing.json()["detail"] == "Not Found"


# ---- the PNGs' infotext, interrupt's partial image ------------------------------------------


def read_infotext(text: str) -> dict:
    """A tool's reading of A1111's infotext: the prompt's lines, then the negative prompt's
    (from a line that starts with "Negative prompt: "), then a last line of `key: value` pairs
    joined by ", ", each value as it is or a JSON string where it holds ',', ':' or a newline."""
    *lines, last = text.split("\n")
    assert PAIR.fullmatch(last), last
    params = {}
    for key, value in PAIR_ITEM.findall(last):
        params[key] = json.loads(value) if value.startswith('"') else value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt: "):
            in_negative, line = True, line.removeprefix("Negative prompt: ")
        (negative if in_negative else prompt).append(line)
    return {"prompt": "\n".join(prompt), "negative": "\n".join(negative), **params}


PAIR_ITEM = re.compile(r'\s*([\w ()-]+): ("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
PAIR = re.compile(r'(?:\s*[\w ()-]+: (?:"(?:\\.|[^\\"])*"|[^,]*)(?:,|$))+')


def png_parameters(encoded: str) -> str:
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as img:
        assert img.format == "PNG"
        return img.text["parameters"]


def test_pngs_carry_a1111s_infotext_in_parameters(server):
    body = {**SMALL, "prompt": "a cat, sitting: calmly", "negative_prompt": "dog",
            "sampler_name": "DPM++ 2M", "scheduler": "karras", "batch_size": 2}  # fmt: skip
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    answer = requests.post(server.base + "/sdapi/v1/txt2img", json=body, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    info = json.loads(found["info"])  # the JSON string the API answers: as it was
    assert info["all_seeds"] == [7, 8] and info["sampler_name"] == "DPM++ 2M"
    for index, encoded in enumerate(found["images"]):
        text = png_parameters(encoded)
        assert text == info["infotexts"][index]
        assert text.split("\n") == [
            "a cat, sitting: calmly",
            "Negative prompt: dog",
            "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, "
            f"Seed: {7 + index}, Size: 256x256, Model: sdxl, Version: sdxl-cog",
        ]
        read = read_infotext(text)
        assert (read["prompt"], read["negative"]) == (body["prompt"], "dog")
        assert int(read["Steps"]) == 3 and float(read["CFG scale"]) == 7.0
        assert int(read["Seed"]) == 7 + index and read["Size"] == "256x256"
        assert (read["Sampler"], read["Schedule type"]) == ("DPM++ 2M", "Karras")
    plain = requests.post(
        server.base + "/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat"}, headers=auth,
        timeout=120,
    )  # fmt: skip
    text = png_parameters(plain.json()["images"][0])
    assert not any(line.startswith("Negative prompt:") for line in text.split("\n"))
    assert read_infotext(text)["prompt"] == "a cat" and read_infotext(text)["Seed"] == "7"


def test_interrupt_answers_the_image_of_the_latents_it_had(api, server):
    """Interrupt after a counted step of the only batch: 200 with one image, decoded by the VAE
    from the latents it had (not blank, not the preview's projection); the next request is as
    an idle server's."""
    before = api.txt2img(prompt="a cat", **SMALL).image
    answers = []
    long = {**SMALL, "steps": 400}
    thread = threading.Thread(target=lambda: answers.append(api.txt2img(prompt="a cat", **long)))
    thread.start()
    wait_until(lambda: api.get_progress()["state"]["sampling_step"] >= 2, "two steps run")
    api.interrupt()
    thread.join(120)
    (answer,) = answers
    assert len(answer.images) == 1 and answer.info["all_seeds"] == [7]
    image = answer.image
    assert image.size == (256, 256) and pixels(image).std() > 1  # not blank
    line = r"stopped early: interrupted \(POST /sdapi/v1/interrupt\) after base step (\d+)/400"
    step = int(re.findall(line, server.log())[-1])  # this request's: the last one
    assert 2 <= step < 400
    assert same(api.txt2img(prompt="a cat", **SMALL).image, before)


# ---- the settings callers send: override_settings, POST /options --------------------------


def post(server, path: str, body: dict, key: str = KEYS[0]) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return requests.post(server.base + path, json=body, headers=headers, timeout=120)


def txt2img(server, key: str = KEYS[0], **extra) -> Image.Image:
    """SMALL's image without the watermark (as diffusers makes it), `extra` sent with it."""
    body = {**SMALL, "prompt": "a cat", "sampler_name": "Euler", "apply_watermark": False}
    answer = post(server, "/sdapi/v1/txt2img", {**body, **extra}, key)
    assert answer.status_code == 200, answer.text
    (image,) = answer.json()["images"]
    return Image.open(io.BytesIO(base64.b64decode(image)))


def clip_layers(layers: int, **extra) -> dict:
    return {"override_settings": {"CLIP_stop_at_last_layers": layers, **extra}}


def test_clip_stop_at_last_layers_is_diffusers_clip_skip(server, reference):
    """1 is SDXL's usual layer (today's pixels, exactly); 2 is diffusers' clip_skip=1. The
    server is another process, whose pixels differ from this process's diffusers by up to
    1/255 for the usual image too: 2 is held to that difference (the engine's equality at
    tolerance 0 is test_matches_diffusers' test_clip_skip_equals_diffusers_clip_skip)."""
    usual = txt2img(server)
    assert same(txt2img(server, **clip_layers(1, sd_vae="Automatic")), usual)
    skipped = txt2img(server, **clip_layers(2))
    assert not same(skipped, usual)
    base, _ = reference  # A1111's Euler, automatic: diffusers' Euler with uniform sigmas
    pipe = with_scheduler(base, reference_scheduler(base, "K_EULER", timestep_spacing="linspace"))
    args = {"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 3,
            "guidance_scale": 7.0}  # fmt: skip
    plain = pipe(**args, generator=generator(7)).images[0]
    expected = pipe(**args, generator=generator(7), clip_skip=1).images[0]
    between_processes = np.abs(pixels(usual) - pixels(plain)).max()
    assert between_processes <= 1
    assert_same_image(skipped, expected, tolerance=max(between_processes, PIXEL_TOLERANCE))
    assert np.abs(pixels(skipped) - pixels(plain)).max() > 10 * max(between_processes, 1)


def test_settings_a_request_cannot_have_are_422s_naming_them(server):
    vaes = requests.get(
        server.base + "/sdapi/v1/sd-vae", headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=10
    ).json()
    assert vaes == [
        {"model_name": "sdxl.vae.safetensors", "filename": "models/VAE/sdxl.vae.safetensors"}
    ]
    for override, field, words in [
        ({"sd_hypernetwork": "x"}, "sd_hypernetwork", ["CLIP_stop_at_last_layers", "sd_vae"]),
        ({"sd_vae": "other.safetensors"}, "sd_vae", ["Automatic", "None", "sdxl.vae.safetensors"]),
        ({"CLIP_stop_at_last_layers": 13}, "CLIP_stop_at_last_layers", ["from 1 to 12"]),
        ({"samples_format": "jpg"}, "samples_format", ["cannot be changed"]),
    ]:
        answer = post(server, "/sdapi/v1/txt2img", {**SMALL, "override_settings": override})
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"][0]
        assert detail["field"] == f"override_settings.{field}", detail
        assert all(word in detail["msg"] for word in words), detail
    for value in ("sdxl.vae.safetensors", "None"):
        assert post(server, "/sdapi/v1/options", {"sd_vae": value}).status_code == 200
    unknown = post(server, "/sdapi/v1/options", {"sd_hypernetwork": "x"})
    assert unknown.status_code == 422 and "sd_hypernetwork" in unknown.text


def test_options_set_the_clip_layers_of_that_callers_later_requests(server):
    def options(key):
        answer = requests.get(server.base + "/sdapi/v1/options",
                              headers={"Authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip
        return answer.json()

    usual, skipped = txt2img(server), txt2img(server, **clip_layers(2))
    assert post(server, "/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2}, KEYS[1]).ok
    try:
        assert options(KEYS[1])["CLIP_stop_at_last_layers"] == 2
        assert options(KEYS[0])["CLIP_stop_at_last_layers"] == 1
        assert same(txt2img(server, KEYS[1]), skipped)
        assert same(txt2img(server, KEYS[0]), usual)  # the other caller's are its own
        assert same(txt2img(server, KEYS[1], **clip_layers(1)), usual)  # for that request
        assert options(KEYS[1])["CLIP_stop_at_last_layers"] == 2
        # A1111 keeps a request's settings when told not to restore them
        kept = {**clip_layers(2), "override_settings_restore_afterwards": False}
        assert same(txt2img(server, KEYS[0], **kept), skipped)
        assert options(KEYS[0])["CLIP_stop_at_last_layers"] == 2
    finally:
        for key in KEYS:
            post(server, "/sdapi/v1/options", {"CLIP_stop_at_last_layers": 1}, key)
    assert same(txt2img(server, KEYS[1]), usual)


def sillytavern_body(**changes) -> dict:
    """SillyTavern's txt2img body as its server sends it (its proxy forwards its own url and
    auth keys too), with its defaults DDIM and `normal`; sd_vae only when a listed VAE is
    chosen."""
    body = {
        "url": "http://127.0.0.1:7860", "auth": f"anyone:{KEYS[0]}",
        "prompt": "(masterpiece:1.2), a cat", "negative_prompt": "lowres, blurry",
        "sampler_name": "DDIM", "scheduler": "normal", "steps": 3, "cfg_scale": 7,
        "width": 256, "height": 256, "restore_faces": False, "enable_hr": False,
        "hr_upscaler": "Latent", "hr_scale": 2, "hr_additional_modules": [],
        "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 5,
        "override_settings": {
            "CLIP_stop_at_last_layers": 2, "sd_vae": "sdxl.vae.safetensors",
            "forge_additional_modules": ["sdxl.vae.safetensors"],
        },
        "override_settings_restore_afterwards": True, "clip_skip": 2,
        "save_images": True, "send_images": True, "do_not_save_grid": False,
        "do_not_save_samples": False,
    }  # fmt: skip
    return {**body, **changes}


def test_sillytaverns_request_is_answered(server):
    body = sillytavern_body()
    answer = post(server, "/sdapi/v1/txt2img", body)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert len(found["images"]) == 1
    info = json.loads(found["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]


# ---- the hires fix and the upscalers ---------------------------------------------------------


def get(server, path: str):
    answer = requests.get(server.base + path, headers={"Authorization": f"Bearer {KEYS[0]}"},
                          timeout=30)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_upscaler_lists_clients_read(server, tiny_weights):
    """/upscalers: None, Lanczos, Nearest and each ESRGAN model in the weights' upscalers/
    (A1111's shape, a virtual path); /latent-upscale-modes: the Latent ones."""
    models = sorted(path.stem for path in (tiny_weights / "upscalers").glob("*.safetensors"))
    rows = get(server, "/sdapi/v1/upscalers")
    assert [row["name"] for row in rows] == ["None", "Lanczos", "Nearest", *models]
    for row in rows:
        assert set(row) == {"name", "model_name", "model_path", "model_url", "scale"}, row
        assert row["model_path"] is None or row["model_path"].startswith("models/ESRGAN/"), row
    assert get(server, "/sdapi/v1/latent-upscale-modes") == [
        {"name": name} for name in LATENT_UPSCALERS
    ]


def sillytavern_hires_body() -> dict:
    """SillyTavern's txt2img body with its hires fix on."""
    return sillytavern_body(
        prompt="a cat", enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, clip_skip=1,
        override_settings={"CLIP_stop_at_last_layers": 1},
    )  # fmt: skip


def test_sillytaverns_hires_request_answers_the_upscaled_image(server):
    answer = post(server, "/sdapi/v1/txt2img", sillytavern_hires_body())
    assert answer.status_code == 200, answer.text
    found = answer.json()
    (encoded,) = found["images"]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        assert image.size == (384, 384)  # 256 x 1.5
        assert pixels(image).std() > 1
    info = json.loads(found["info"])
    read = read_infotext(info["infotexts"][0])
    assert read["Size"] == "256x256"  # the first pass's, as A1111 writes it
    assert (read["Hires upscale"], read["Hires steps"], read["Hires upscaler"]) == (
        "1.5",
        "2",
        "Latent",
    )
    assert read["Denoising strength"] == "0.7" and read["Sampler"] == "DDIM"
    assert png_parameters(encoded) == info["infotexts"][0]


def extras_body(source: Image.Image, **fields) -> dict:
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    return {"image": base64.b64encode(buffer.getvalue()).decode(), **fields}


def extras_image(answer: requests.Response) -> Image.Image:
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"html_info", "image"}
    with Image.open(io.BytesIO(base64.b64decode(answer.json()["image"]))) as image:
        image.load()
        return image


def test_extra_single_image_refuses_what_it_does_not_have(server):
    source = smooth_image(64, 48)
    kept = post(server, "/sdapi/v1/extra-single-image", extras_body(source, upscaling_resize=4))
    assert same(extras_image(kept), source)  # upscaler_1 None: A1111's Extras leaves it
    for fields, field in (
        ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
        ({"upscaler_1": "Lanczos", "gfpgan_visibility": 1}, "gfpgan_visibility"),
        ({"upscaler_1": "Lanczos", "upscaling_resize": 2, "image": "%%%"}, "image"),
        (
            {"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 4096},
            "upscaling_resize_w",
        ),
    ):
        answer = post(server, "/sdapi/v1/extra-single-image", extras_body(source, **fields))
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["field"] == field, answer.json()


def test_extra_single_image_upscales_on_the_engine(server):
    source = smooth_image(128, 96)
    body = extras_body(source, upscaler_1="Lanczos", upscaling_resize=1.5)
    answer = post(server, "/sdapi/v1/extra-single-image", body)
    assert same(extras_image(answer), source.resize((192, 144), Image.Resampling.LANCZOS))
    assert answer.json()["html_info"] == (
        "<p>Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos</p>"
    )
    models = [row["name"] for row in get(server, "/sdapi/v1/upscalers")[3:]]
    for name in models:  # the tiny ESRGAN models `weights tiny` builds
        body = extras_body(source, upscaler_1=name, resize_mode=1, upscaling_resize_w=256,
                           upscaling_resize_h=256)  # fmt: skip
        image = extras_image(post(server, "/sdapi/v1/extra-single-image", body))
        assert image.size == (256, 256) and pixels(image).std() > 1, name
