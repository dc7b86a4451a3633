"""ControlNet on the DataCrunch endpoint: the Replicate inputs under their own names, over real
HTTP on `python -m sdxl api` (the tiny model, a tiny canny ControlNet), compared with the
Replicate API's answer on the same server, decoded pixels; a bad unit is a 422 naming its
field; OpenAI's Images API does not take them."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from support.helpers import pixels, smooth_image

from sdxl.http.datacrunch.fields import DATACRUNCH
from sdxl.http.openai.fields import GENERATIONS, NOT_OFFERED
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps

pytestmark = pytest.mark.timeout(120)

SIZE = 256
QUICK = {"prompt": "a house", "width": SIZE, "height": SIZE, "num_inference_steps": 2, "seed": 3}


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def shapes() -> Image.Image:
    """A square and a disc on grey: edges for Canny to find."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    canvas = np.full((SIZE, SIZE), 90, np.uint8)
    canvas[40:120, 40:120] = 230
    canvas[(x - 180) ** 2 + (y - 170) ** 2 < 50**2] = 10
    return Image.fromarray(np.stack([canvas] * 3, -1))


def decoded(text: str) -> np.ndarray:
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    return pixels(Image.open(io.BytesIO(base64.b64decode(payload))))


@pytest.fixture(scope="module")
def api(plain_api):
    return plain_api


def test_datacrunch_reads_the_units_and_openai_does_not_offer_them():
    image = png_base64(smooth_image(64, 64))
    body = {"prompt": "a cat", "controlnet_2": "edge_canny", "controlnet_2_image": image}
    body |= {"controlnet_2_start": 0.2, "canny_low_threshold": 50, "return_control_maps": True}
    request = check_fields(body, DATACRUNCH, Caps()).request()
    (unit,) = request.controls
    assert (unit.type, unit.start, unit.end, unit.low_threshold) == ("canny", 0.2, 1.0, 50)
    assert Image.open(io.BytesIO(unit.image.data)).size == (64, 64) and request.return_control_maps
    assert not check_fields({"prompt": "a cat"}, DATACRUNCH, Caps()).request().controls
    for name in ("controlnet_1", "controlnet_3_image", "canny_high_threshold"):
        assert name in NOT_OFFERED and name not in GENERATIONS.by_name
    for name in ("return_control_maps", "controlnet_1"):
        with pytest.raises(InvalidInputs) as caught:
            check_fields({"prompt": "a cat", name: "canny"}, GENERATIONS, Caps())
        assert "not an input of this API" in caught.value.problems[0].message


def test_a_canny_unit_equals_the_replicate_apis_result(api):
    image = png_base64(shapes())
    control = {"controlnet_1": "canny", "controlnet_1_image": image, "return_control_maps": True}
    control |= {"controlnet_1_conditioning_scale": 1.5, "controlnet_1_end": 0.8}
    response = api.post({**QUICK, **control})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seeds"] == [3] and len(body["images"]) == 1
    (edges,) = body["control_maps"]
    # DataCrunch's defaults, spelled out for the Replicate API; data URI images there
    aligned = {"scheduler": "DDIM", "guidance_scale": 4.0, "timestep_spacing": "linspace"}
    inputs = {**QUICK, **control, **aligned, "output_format": "png"}
    inputs["controlnet_1_image"] = "data:image/png;base64," + image
    done = api.wait_prediction(api.create_prediction(inputs)["id"])
    assert done["status"] == "succeeded", done
    expected_map, expected_image = done["output"]
    assert (decoded(body["images"][0]) == decoded(expected_image)).all()
    assert (decoded(edges) == decoded(expected_map)).all()
    values = decoded(edges)
    assert set(np.unique(values)) <= {0, 255} and 0.002 < (values == 255).mean() < 0.3
    plain = api.post(QUICK).json()
    assert plain["control_maps"] == []
    assert not (decoded(plain["images"][0]) == decoded(body["images"][0])).all()


@pytest.mark.parametrize(
    ("unit", "field"),
    [
        ({"controlnet_1_image": "IMAGE"}, "controlnet_1_image"),
        ({"controlnet_2": "canny"}, "controlnet_2_image"),
        (
            {
                "controlnet_1": "canny",
                "controlnet_1_image": "IMAGE",
                "controlnet_1_start": 0.6,
                "controlnet_1_end": 0.6,
            },
            "controlnet_1_start",
        ),
        ({"controlnet_1": "sketch", "controlnet_1_image": "IMAGE"}, "controlnet_1"),
        ({"controlnet_3": "canny", "controlnet_3_image": "not an image"}, "controlnet_3_image"),
    ],
)
def test_a_bad_unit_is_a_422_naming_its_field(api, unit, field):
    image = png_base64(smooth_image(64, 64))
    body = {**QUICK, **{k: image if v == "IMAGE" else v for k, v in unit.items()}}
    response = api.post(body)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["field"] == field, problem
    assert field in problem["msg"], problem
