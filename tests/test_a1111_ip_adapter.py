"""IP-Adapter on the APIs other than Replicate's: the ControlNet extension's IP-Adapter units
(Mikubill/sd-webui-controlnet) read into the request's ip_adapter_* values, their 422s naming
the unit's field, the extension's routes listing the adapters; DataCrunch's documented
extensions; OpenAI refusing the fields. Over real HTTP (`plain_api`, the tiny weights with
their tiny IP-Adapters) an A1111 unit equals the Replicate API's request, decoded pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image
from support.api_server import KEYS
from support.helpers import assert_same_image, pixels, smooth_image
from support.helpers import from_base64 as decoded
from support.helpers import png_base64 as b64

from sdxl.errors import InputError
from sdxl.http.a1111.controlnet import Models, read_units
from sdxl.http.a1111.ip_units import detected_maps, read_ip_units
from sdxl.http.datacrunch.fields import DATACRUNCH
from sdxl.http.openai.fields import GENERATIONS, NOT_OFFERED
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps

pytestmark = pytest.mark.timeout(240)

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
SMALL = {"prompt": "a cat", "width": 256, "height": 256, "steps": 3, "seed": 7, "cfg_scale": 7.0}
MODELS = Models({"canny": False}, ip_adapters=("vit-h", "plus", "plus-face"))
ARGS = "alwayson_scripts.controlnet.args"


def ip_unit(image: Image.Image | None = None, **extra) -> dict:
    unit = {"enabled": True, "module": "ip-adapter_clip_h",
            "model": "ip-adapter-plus_sdxl_vit-h [0123abcd]", "weight": 0.7}  # fmt: skip
    return {**unit, "image": b64(image or smooth_image(32, 32)), **extra}


def scripts(*units) -> dict:
    return {"controlnet": {"args": list(units)}}


def test_ip_units_become_the_adapters_images_model_and_scale():
    first, second = smooth_image(32, 32, seed=1), smooth_image(48, 32, seed=2)
    units = scripts(ip_unit(first), {"enabled": False, "module": "canny"}, ip_unit(second))
    assert read_units(units, MODELS, None) == ([], [])  # IP units are not ControlNet units
    found = read_ip_units(units, MODELS, None)
    assert found["ip_adapter_model"] == "plus" and found["ip_adapter_scale"] == 0.7
    sizes = [Image.open(io.BytesIO(s.data)).size for s in found["ip_adapter_images"]]
    assert sizes == [(32, 32), (48, 32)]
    auto = ip_unit(first, module="ip-adapter-auto", model="ip-adapter_sdxl_vit-h")
    listed = {**auto, "image": [{"image": b64(first)}, {"image": b64(second)}]}
    assert read_ip_units(scripts(listed), MODELS, None)["ip_adapter_model"] == "vit-h"
    assert len(read_ip_units(scripts(listed), MODELS, None)["ip_adapter_images"]) == 2
    init = read_ip_units(scripts({**auto, "image": None}), MODELS, b64(second))
    assert Image.open(io.BytesIO(init["ip_adapter_images"][0].data)).size == (48, 32)
    assert read_ip_units(scripts({"enabled": True, "module": "canny"}), MODELS, None) == {}


def test_the_extension_shows_an_ip_units_reference_images_among_its_maps():
    image = smooth_image(40, 24, seed=4)
    canny = {"enabled": True, "module": "canny", "model": "canny"}
    units = scripts(ip_unit(image), canny, ip_unit(image, save_detected_map=False))
    maps = detected_maps(units, ["<canny map>"], None)
    assert maps[1] == "<canny map>" and len(maps) == 2
    assert np.array_equal(pixels(maps[0]), pixels(image.convert("RGB")))


@pytest.mark.parametrize(
    ("units", "field", "words"),
    [
        ([ip_unit(weight=1.5)], "[0].weight", "0..1"),
        ([ip_unit(guidance_start=0.2)], "[0].guidance_start", "every step"),
        ([ip_unit(guidance_end=0.5)], "[0].guidance_end", "every step"),
        ([ip_unit(control_mode="ControlNet is more important")], "[0].control_mode", "Balanced"),
        ([ip_unit(module="ip-adapter_clip_g")], "[0].module", "ViT-bigG"),
        ([ip_unit(module="ip-adapter_face_id_plus")], "[0].module", "insightface"),
        ([ip_unit(module="canny")], "[0].module", "ip-adapter-auto"),
        ([ip_unit(model="ip-adapter_sdxl [7d943a46]")], "[0].model", "ip-adapter_sdxl_vit-h"),
        ([{**ip_unit(), "image": None}], "[0].image", "reference image"),
        ([{**ip_unit(), "image": {"image": "x", "mask": "y"}}], "[0].image.mask", "mask"),
        ([ip_unit(advanced_weighting=[1.0] * 11)], "[0].advanced_weighting", "leave it out"),
        ([ip_unit(), ip_unit(model="ip-adapter_sdxl_vit-h")], "[1].model", "one IP-Adapter"),
        ([ip_unit(), ip_unit(weight=0.5)], "[1].weight", "one weight"),
        ([ip_unit()] * 4, "[3].enabled", "at most 3"),
    ],
)
def test_what_an_ip_unit_cannot_honour_is_an_error_naming_its_field(units, field, words):
    with pytest.raises(InputError) as caught:
        read_units(scripts(*units), MODELS, None)
        read_ip_units(scripts(*units), MODELS, None)
    assert caught.value.field == ARGS + field, caught.value
    assert words in str(caught.value), str(caught.value)


def test_a_server_without_the_adapter_lists_those_it_has():
    with pytest.raises(InputError) as caught:
        read_ip_units(scripts(ip_unit()), Models({}, ip_adapters=("vit-h",)), None)
    assert "it has: ip-adapter_sdxl_vit-h" in str(caught.value)


def test_datacrunch_reads_the_fields_and_openai_does_not_offer_them():
    image = b64(smooth_image(32, 32))
    body = {"prompt": "a cat", "ip_adapter_image": image, "ip_adapter_model": "plus-face"}
    body |= {"ip_adapter_scale": 0.4, "ip_adapter_block_scales": '{"mid": 0.5}'}
    request = check_fields(body, DATACRUNCH, Caps()).request()
    assert (request.ip_adapter_model, request.ip_adapter_scale) == ("plus-face", 0.4)
    assert request.ip_adapter_block_scales == {"mid": 0.5}
    assert Image.open(io.BytesIO(request.ip_adapter_images[0].data)).size == (32, 32)
    with pytest.raises(InvalidInputs) as bad:
        check_fields({**body, "ip_adapter_scale": 2}, DATACRUNCH, Caps())
    assert bad.value.problems[0].field == "ip_adapter_scale"
    for name in ("ip_adapter_image", "ip_adapter_model", "ip_adapter_scale"):
        assert name in NOT_OFFERED and name not in GENERATIONS.by_name
        with pytest.raises(InvalidInputs) as caught:
            check_fields({"prompt": "a cat", name: image}, GENERATIONS, Caps())
        assert "not an input of this API" in caught.value.problems[0].message


# ---- over real HTTP, the tiny IP-Adapters (weights tiny) ---------------------------------
@pytest.fixture(scope="module")
def server(tiny_weights, request):
    if not (tiny_weights / "ip_adapter" / "models" / "image_encoder").is_dir():
        pytest.skip("the tiny weights have no IP-Adapter (weights tiny builds them)")
    return request.getfixturevalue("plain_api")


def post(server, path: str, body: dict) -> requests.Response:
    return requests.post(server.base + path, json=body, headers=AUTH, timeout=180)


def replicate(server, reference: Image.Image, **extra) -> Image.Image:
    done = server.wait_prediction(server.create_prediction({
        "prompt": "a cat", "negative_prompt": "", "width": 256, "height": 256,
        "num_inference_steps": 3, "seed": 7, "guidance_scale": 7.0,
        "scheduler": "K_EULER", "timestep_spacing": "linspace",  # A1111: Euler
        "ip_adapter_image": "data:image/png;base64," + b64(reference), **extra,
    })["id"])  # fmt: skip
    assert done["status"] == "succeeded", done
    return decoded(done["output"][0])


@pytest.mark.http
def test_an_ip_unit_equals_the_replicate_apis_ip_adapter_image(server):
    reference = smooth_image(96, 96, seed=11)
    body = {**SMALL, "alwayson_scripts": scripts(ip_unit(reference))}
    answer = post(server, "/sdapi/v1/txt2img", body)
    assert answer.status_code == 200, answer.text
    image, shown = answer.json()["images"]  # the image, then the unit's reference image
    expected = replicate(server, reference, ip_adapter_model="plus", ip_adapter_scale=0.7)
    assert_same_image(decoded(image), expected)
    assert np.array_equal(pixels(decoded(shown)), pixels(reference.convert("RGB")))
    plain = post(server, "/sdapi/v1/txt2img", SMALL).json()["images"][0]
    assert not np.array_equal(pixels(decoded(plain)), pixels(decoded(image)))


@pytest.mark.http
def test_two_units_of_one_adapter_are_its_two_reference_images(server):
    first, second = smooth_image(64, 64, seed=12), smooth_image(64, 64, seed=13)
    units = [ip_unit(first, save_detected_map=False), ip_unit(second, save_detected_map=False)]
    answer = post(server, "/sdapi/v1/txt2img", {**SMALL, "alwayson_scripts": scripts(*units)})
    assert answer.status_code == 200, answer.text
    (image,) = answer.json()["images"]
    one = post(server, "/sdapi/v1/txt2img", {**SMALL, "alwayson_scripts": scripts(units[0])})
    assert not np.array_equal(pixels(decoded(one.json()["images"][0])), pixels(decoded(image)))
    # the engine with both images: the same two images as one unit's list
    listed = {**units[0], "image": [{"image": b64(first)}, {"image": b64(second)}]}
    both = post(server, "/sdapi/v1/txt2img", {**SMALL, "alwayson_scripts": scripts(listed)})
    assert both.json()["images"][0] == image


@pytest.mark.http
def test_datacrunch_ip_adapter_image_equals_the_replicate_apis(server):
    reference = smooth_image(80, 80, seed=14)
    quick = {"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 3, "seed": 7}
    body = {**quick, "ip_adapter_image": b64(reference), "ip_adapter_model": "vit-h"}
    answer = server.post({**body, "ip_adapter_scale": 0.5})
    assert answer.status_code == 200, answer.text
    expected = replicate(server, reference, ip_adapter_model="vit-h", ip_adapter_scale=0.5,
                         scheduler="DDIM", guidance_scale=4.0)  # DataCrunch's defaults  # fmt: skip
    assert_same_image(decoded(answer.json()["images"][0]), expected)


@pytest.mark.http
def test_the_extensions_routes_list_the_adapters_and_their_modules(server):
    def get(path):
        answer = requests.get(server.base + path, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    models = get("/controlnet/model_list")["model_list"]
    assert any(m.startswith("ip-adapter-plus_sdxl_vit-h [") for m in models), models
    modules = get("/controlnet/module_list")["module_list"]
    assert modules[:3] == ["none", "ip-adapter-auto", "ip-adapter_clip_sd15"], modules
    aliases = get("/controlnet/module_list?alias_names=true")["module_list"]
    assert "ip-adapter_clip_h" in aliases and "ip-adapter_clip_sdxl_plus_vith" in aliases
    kind = get("/controlnet/control_types")["control_types"]["IP-Adapter"]
    assert kind["module_list"][:3] == ["none", "ip-adapter-auto", "ip-adapter_clip_h"]
    assert kind["default_option"] == "ip-adapter-auto" and kind["model_list"][0] == "None"
    assert all("ip-adapter" in m for m in kind["model_list"][1:]) and len(kind["model_list"]) == 4
    body = {
        "controlnet_module": "ip-adapter-auto",
        "controlnet_input_images": [b64(smooth_image(8, 8))],
    }
    detect = post(server, "/controlnet/detect", body)
    assert detect.status_code == 422 and detect.json()["detail"][0]["field"] == "controlnet_module"
