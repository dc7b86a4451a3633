"""The ControlNet extension's API (Mikubill/sd-webui-controlnet) on `python -m sdxl api`: units
in `alwayson_scripts.controlnet.args` over txt2img equal the Replicate API's controlnet_N units
(decoded pixels), the detected map appended after the images, the extension's routes in its
shapes, /controlnet/detect equal to OpenCV's Canny, and the units' errors naming their field.
A real server on loopback over a copy of the tiny weights with tiny ControlNets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from support.api_server import KEYS
from support.helpers import assert_same_image, pixels, smooth_image
from support.helpers import from_base64 as decoded
from support.helpers import png_base64 as b64

pytestmark = [pytest.mark.http, pytest.mark.timeout(240)]

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
SMALL = {"prompt": "a cat", "width": 256, "height": 256, "steps": 3, "seed": 7, "cfg_scale": 7.0}


@pytest.fixture(scope="module")
def server(plain_api):
    return plain_api


def post(server, path: str, body: dict) -> requests.Response:
    return requests.post(server.base + path, json=body, headers=AUTH, timeout=180)


def canny_unit(image: Image.Image, **extra) -> dict:
    return {"enabled": True, "module": "canny", "model": "canny", "weight": 0.8,
            "image": b64(image), "resize_mode": "Just Resize", "pixel_perfect": True,
            "threshold_a": 50, "threshold_b": 150, **extra}  # fmt: skip


def controlnet(*units) -> dict:
    return {"alwayson_scripts": {"controlnet": {"args": list(units)}}}


def test_a_canny_unit_equals_the_replicate_apis_controlnet_and_appends_its_map(server):
    source = smooth_image(256, 256, seed=3)
    answer = post(server, "/sdapi/v1/txt2img", {**SMALL, **controlnet(canny_unit(source))})
    assert answer.status_code == 200, answer.text
    images = answer.json()["images"]
    assert len(images) == 2  # the image, then the detected map (the extension's default)
    replicate = server.create_prediction({
        "prompt": "a cat", "negative_prompt": "", "width": 256, "height": 256,
        "num_inference_steps": 3, "seed": 7, "guidance_scale": 7.0,
        "scheduler": "K_EULER", "timestep_spacing": "linspace",  # A1111: Euler
        "controlnet_1": "canny", "controlnet_1_image": "data:image/png;base64," + b64(source),
        "controlnet_1_conditioning_scale": 0.8, "canny_low_threshold": 50,
        "canny_high_threshold": 150,
    })  # fmt: skip
    done = server.wait_prediction(replicate["id"])
    assert done["status"] == "succeeded", done
    assert_same_image(decoded(images[0]), decoded(done["output"][0]))
    edges = cv2.Canny(np.asarray(source.convert("RGB")), 50, 150)
    assert np.array_equal(pixels(decoded(images[1]))[..., 0], edges)
    plain = post(server, "/sdapi/v1/txt2img", SMALL).json()["images"]
    assert not np.array_equal(pixels(decoded(plain[0])), pixels(decoded(images[0])))
    unsaved = canny_unit(source, save_detected_map=False)
    kept = post(server, "/sdapi/v1/txt2img", {**SMALL, **controlnet(unsaved)}).json()["images"]
    assert len(kept) == 1 and kept[0] == images[0]


def test_the_extensions_routes_answer_in_its_shapes(server):
    def get(path):
        answer = requests.get(server.base + path, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert get("/controlnet/version") == {"version": 3}
    models = get("/controlnet/model_list")["model_list"]
    assert any(name.startswith("canny [") and name.endswith("]") for name in models), models
    modules = get("/controlnet/module_list")
    assert modules["module_list"][0] == "none" and "canny" in modules["module_list"]
    canny = modules["module_detail"]["canny"]
    assert canny["model_free"] is False
    assert [s["name"] for s in canny["sliders"]] == [
        "Resolution",
        "Low Threshold",
        "High Threshold",
    ]
    assert canny["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 1, "max": 255,
                                   "step": 1}  # fmt: skip
    types = get("/controlnet/control_types")["control_types"]
    assert types["All"]["default_option"] == "none" and types["All"]["model_list"][0] == "None"
    assert types["Canny"]["module_list"] == ["none", "canny"]
    assert types["Canny"]["default_option"] == "canny"
    assert types["Canny"]["default_model"].startswith("canny [")
    assert get("/controlnet/settings") == {"control_net_unit_count": 3}
    denied = requests.get(server.base + "/controlnet/version", timeout=10)
    assert denied.status_code == 401 and denied.json()["error"] == "HTTPException"


def test_detect_equals_opencvs_canny(server):
    source = smooth_image(512, 384, seed=5)
    body = {"controlnet_module": "canny", "controlnet_input_images": [b64(source)],
            "controlnet_processor_res": 384, "controlnet_threshold_a": 40,
            "controlnet_threshold_b": 120}  # fmt: skip
    answer = post(server, "/controlnet/detect", body)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["info"] == "Success" and len(found["images"]) == 1
    edges = cv2.Canny(np.asarray(source.convert("RGB")), 40, 120)  # 384 is its short side
    assert np.array_equal(pixels(decoded(found["images"][0]))[..., 0], edges)
    unknown = post(server, "/controlnet/detect", {**body, "controlnet_module": "openpose"})
    assert unknown.status_code == 422 and "canny" in unknown.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"control_mode": 1}, "control_mode", "not implemented"),
        ({"control_mode": "My prompt is more important"}, "control_mode", "Balanced"),
        ({"module": "openpose_full"}, "module", "canny"),
        ({"model": "control_v11p_sd15_canny [d14c016b]"}, "model", "it has: canny"),
        ({"a_field_of_my_own": 1}, "a_field_of_my_own", "not a field"),
        ({"image": "not base64 at all"}, "image", "image"),
        ({"image": {"image": "x", "mask": "y"}}, "image.mask", "mask"),
        ({"resize_mode": "Stretch"}, "resize_mode", "Just Resize"),
        ({"weight": 3}, "weight", "0..2"),
        ({"threshold_a": 300}, "threshold_a", "1..255"),
        ({"hr_option": "Low res only"}, "hr_option", "'Both'"),
    ],
)
def test_a_unit_the_server_cannot_honour_is_a_422_naming_its_field(server, change, field, words):
    unit = {**canny_unit(smooth_image(64, 64)), **change}
    answer = post(server, "/sdapi/v1/txt2img", {**SMALL, **controlnet(unit)})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"][0]
    assert detail["field"] == f"alwayson_scripts.controlnet.args[0].{field}", detail
    assert words in answer.text, answer.text


def test_other_scripts_four_units_and_the_next_request(server):
    other = post(server, "/sdapi/v1/txt2img", {**SMALL, "alwayson_scripts": {"ADetailer": {}}})
    assert other.status_code == 422 and "ADetailer" in other.text
    unit = canny_unit(smooth_image(64, 64))
    four = post(server, "/sdapi/v1/txt2img", {**SMALL, **controlnet(*[unit] * 4)})
    assert four.status_code == 422 and "at most 3" in four.text, four.text
    off = post(server, "/sdapi/v1/txt2img", {**SMALL, **controlnet({**unit, "enabled": False})})
    assert off.status_code == 200 and len(off.json()["images"]) == 1  # disabled: skipped


def test_the_hires_fix_runs_with_a_unit_and_returns_its_map(server):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
             "hr_second_pass_steps": 2, "denoising_strength": 0.5}  # fmt: skip
    unit = canny_unit(smooth_image(256, 256), hr_option="Both")
    answer = post(server, "/sdapi/v1/txt2img", {**SMALL, **hires, **controlnet(unit)})
    assert answer.status_code == 200, answer.text
    image, control = (decoded(text) for text in answer.json()["images"])
    assert image.size == (384, 384) and control.size == (256, 256)


def test_img2img_and_inpainting_take_units_with_the_init_image_as_their_default(server):
    source = smooth_image(256, 256, seed=9)
    source.paste((255, 255, 255), (64, 64, 192, 192))  # edges for Canny
    unit = {"enabled": True, "module": "canny", "model": "canny"}  # no image: the init image
    body = {**SMALL, "init_images": [b64(source)], "denoising_strength": 0.6, **controlnet(unit)}
    plain = post(server, "/sdapi/v1/img2img", {**body, "alwayson_scripts": {}})
    controlled = post(server, "/sdapi/v1/img2img", body)
    assert controlled.status_code == 200, controlled.text
    images = controlled.json()["images"]
    assert len(images) == 2 and images[0] != plain.json()["images"][0]
    # processor_res -1: the extension's 512; Crop and Resize, its default; then the output size
    lanczos = Image.Resampling.LANCZOS
    edges = cv2.Canny(np.asarray(source.resize((512, 512), lanczos)), 100, 200)
    expected = Image.fromarray(np.stack([edges] * 3, axis=-1)).resize((256, 256), lanczos)
    assert edges.any() and np.array_equal(pixels(decoded(images[1])), pixels(expected))
    mask = Image.new("L", (256, 256))
    mask.paste(255, (0, 0, 128, 256))
    inpainted = post(server, "/sdapi/v1/img2img", {**body, "mask": b64(mask)})
    assert inpainted.status_code == 200 and len(inpainted.json()["images"]) == 2, inpainted.text


@pytest.mark.parametrize(
    ("unit", "kind"),
    [
        ({"model": "union", "module": "canny"}, "union_canny"),
        ({"model": "union [0123abcd]", "module": "depth_anything_v2"}, "union_depth"),
        ({"model": "union", "module": "none", "union_control_type": "Hard Edge"}, "union_canny"),
        ({"model": "union", "module": "none", "union_control_type": "OpenPose"}, "union_openpose"),
        ({"model": "canny [0123abcd]", "module": "none"}, "canny"),
        ({"model": "depth-small", "module": "depth"}, "depth"),
    ],
)
def test_the_model_decides_the_units_type(unit, kind):
    from sdxl.http.a1111.controlnet import Models, read_units

    models = Models({"canny": False, "depth-small": False, "union": True})
    body = {"controlnet": {"args": [{"enabled": True, "image": b64(smooth_image(8, 8)), **unit}]}}
    (found,), keep = read_units(body, models, None)
    assert found.type == kind and keep == [True]
    assert found.field("conditioning_scale") == "alwayson_scripts.controlnet.args[0].weight"


def test_the_union_model_without_a_type_is_a_422_saying_how_to_give_one():
    from sdxl.errors import InputError
    from sdxl.http.a1111.controlnet import Models, read_units

    body = {"controlnet": {"args": [{"enabled": True, "model": "union", "module": "none"}]}}
    with pytest.raises(InputError) as caught:
        read_units(body, Models({"union": True}), None)
    assert caught.value.field == "alwayson_scripts.controlnet.args[0].union_control_type"
    assert "Hard Edge" in str(caught.value)
