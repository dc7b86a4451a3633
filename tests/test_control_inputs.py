"""The ControlNet inputs' rules at the boundary (no model): each bad unit is refused naming the
Replicate input at fault and the fix; the good ones become the engine's units."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from sdxl.control.library import ControlLibrary
from sdxl.errors import InputError
from sdxl.http.replicate.inputs import REPLICATE
from sdxl.inputs.control_units import ControlUnit
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps

pytestmark = pytest.mark.timeout(30)


def data_uri(size=(64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = data_uri()


def refused(**body) -> tuple[str, str]:
    """The first problem's field and message."""
    with pytest.raises(InvalidInputs) as caught:
        check_fields({"prompt": "x", **body}, REPLICATE, Caps())
    problem = caught.value.problems[0]
    return problem.field, problem.message


def test_units_are_read_in_order_with_aliases_and_defaults():
    body = {
        "prompt": "x",
        "controlnet_1": "edge_canny",
        "controlnet_1_image": IMAGE,
        "controlnet_3": "depth_midas",
        "controlnet_3_image": IMAGE,
        "controlnet_3_preprocessor": "none",
        "controlnet_3_conditioning_scale": 1.5,
        "controlnet_3_start": 0.25,
        "canny_low_threshold": 40,
        "return_control_maps": True,
    }
    request = check_fields(body, REPLICATE, Caps()).request()
    first, second = request.controls
    assert (first.type, first.map_maker, first.conditioning_scale) == ("canny", "canny", 0.75)
    assert (first.low_threshold, first.high_threshold, first.resize_mode) == (40, 200, "resize")
    assert (second.type, second.map_maker, second.conditioning_scale) == ("depth", "none", 1.5)
    assert (second.start, second.end) == (0.25, 1.0)
    assert request.return_control_maps
    assert second.field("start") == "controlnet_3_start"
    described = json.dumps(request.describe())
    assert "base64" not in described and '"type": "depth"' in described  # no image data


def test_no_control_is_no_unit():
    assert check_fields({"prompt": "x"}, REPLICATE, Caps()).request().controls == ()


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"controlnet_1": "canny"}, "controlnet_1_image", "needs a control image"),
        ({"controlnet_2_image": IMAGE}, "controlnet_2_image", "controlnet_2 is none"),
        (
            {"controlnet_1_preprocessor": "canny"},
            "controlnet_1_preprocessor",
            "choose a control type",
        ),
        (
            {
                "controlnet_1": "canny",
                "controlnet_1_image": IMAGE,
                "controlnet_1_start": 0.5,
                "controlnet_1_end": 0.5,
            },
            "controlnet_1_start",
            "start must be lower than end",
        ),
        (
            {"controlnet_1": "canny", "controlnet_1_image": IMAGE, "canny_low_threshold": 220},
            "canny_low_threshold",
            "low <= high",
        ),
        (
            {"controlnet_1": "union_openpose", "controlnet_1_image": IMAGE},
            "controlnet_1",
            "set controlnet_1_preprocessor to none",
        ),
        (
            {
                "controlnet_1": "canny",
                "controlnet_1_image": IMAGE,
                "controlnet_2": "union_depth",
                "controlnet_2_image": IMAGE,
            },
            "controlnet_1",
            "either dedicated ControlNets or the union model",
        ),
        (
            {
                "controlnet_1": "union_canny",
                "controlnet_1_image": IMAGE,
                "controlnet_2": "union_canny",
                "controlnet_2_image": IMAGE,
            },
            "controlnet_2",
            "each of its types once",
        ),
        (
            {
                "controlnet_1": "canny",
                "controlnet_1_image": IMAGE,
                "controlnet_1_conditioning_scale": 4.5,
            },
            "controlnet_1_conditioning_scale",
            "out of range",
        ),
        ({"controlnet_1": "scribble"}, "controlnet_1", "choose one of"),
        (
            {"controlnet_1": "canny", "controlnet_1_image": "not an image"},
            "controlnet_1_image",
            "controlnet_1_image",
        ),
    ],
)
def test_a_bad_unit_is_refused_naming_its_input(body, field, says):
    got_field, message = refused(**body)
    assert got_field == field, message
    assert says in message


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        (
            {"image": IMAGE, "refine": "expert_ensemble_refiner"},
            "refine",
            "no denoising_end",
        ),
        ({"cache_interval": 3}, "cache_interval", "set cache_interval to 1"),
    ],
)
def test_what_the_controlnet_pipelines_cannot_run_is_refused(extra, field, says):
    unit = {"controlnet_1": "canny", "controlnet_1_image": IMAGE}
    got_field, message = refused(**unit, **extra)
    assert got_field == field, message
    assert says in message and "controlnet_1" in message


def test_the_ensemble_refiner_runs_with_control_on_text_to_image_and_inpainting():
    unit = {"prompt": "x", "controlnet_1": "canny", "controlnet_1_image": IMAGE}
    ensemble = {**unit, "refine": "expert_ensemble_refiner"}
    check_fields(ensemble, REPLICATE, Caps())
    check_fields({**ensemble, "image": IMAGE, "mask": IMAGE}, REPLICATE, Caps())


def test_a_model_the_server_lacks_is_named_with_those_it_has(tmp_path):
    (tmp_path / "controlnet" / "depth").mkdir(parents=True)
    (tmp_path / "controlnet" / "depth" / "config.json").write_text('{"_class_name": "x"}')
    library = ControlLibrary(tmp_path)
    with pytest.raises(InputError) as caught:
        library.check((ControlUnit("canny", None, names=(("type", "controlnet_2"),)),))
    message = str(caught.value)
    assert caught.value.field == "controlnet_2"
    assert "it has: depth" in message and "python -m sdxl weights download" in message
    assert "/" + tmp_path.name not in message  # no server path
    library.check((ControlUnit("depth", None, preprocessor="none"),))
    with pytest.raises(InputError, match="no depth model"):
        library.check((ControlUnit("depth", None),))  # its preprocessor's model is missing


def test_a_small_variant_serves_its_type(tmp_path):
    (tmp_path / "controlnet" / "canny-small").mkdir(parents=True)
    (tmp_path / "controlnet" / "canny-small" / "config.json").write_text("{}")
    assert ControlLibrary(tmp_path).resolve(ControlUnit("canny", None)).name == "canny-small"


def test_a_stored_input_is_read_into_the_same_units():
    """A prediction claimed from the store (another replica, a restart) runs the units its API
    checked; a unit's image that is this server's upload is read from the store."""
    from sdxl.runtime.stored_inputs import stored_request, with_own_files

    origins = ("https://sdxl.example",)
    files = {"abc123": b"stored bytes"}
    given = {
        "prompt": "x",
        "controlnet_1": "canny",
        "controlnet_1_image": IMAGE,
        "controlnet_1_start": 0.1,
        "controlnet_2": "depth",
        "controlnet_2_image": "https://sdxl.example/v1/files/abc123",
    }
    first, second = stored_request(given, origins, files.get).controls
    assert (first.type, first.start, first.image.data[:4]) == ("canny", 0.1, b"\x89PNG")
    assert second.image.read() == b"stored bytes" and second.image.url is None
    checked = check_fields(given, REPLICATE, Caps()).request()
    assert checked.controls[1].image.url is not None  # as the API checked it
    (_, own) = with_own_files(checked, origins, files.get).controls
    assert own.image.read() == b"stored bytes" and own.image.url is None
