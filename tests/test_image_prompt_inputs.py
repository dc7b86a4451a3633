"""IP-Adapter's inputs at the boundary (no model): the Replicate inputs read into the engine's
values, each bad value refused naming the input and the fix; an adapter the server lacks named
with those it has."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from sdxl.control.ip_library import IpAdapterLibrary
from sdxl.errors import InputError
from sdxl.http.replicate.inputs import REPLICATE
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps

pytestmark = pytest.mark.timeout(30)


def data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = data_uri()
STYLE = {"up": {"block_0": [0.0, 1.0, 0.0]}}


def test_the_image_its_model_and_scales_are_read():
    body = {"prompt": "x", "ip_adapter_image": IMAGE, "ip_adapter_model": "plus-face"}
    body |= {"ip_adapter_scale": 0.4, "ip_adapter_block_scales": json.dumps(STYLE)}
    request = check_fields(body, REPLICATE, Caps()).request()
    (image,) = request.ip_adapter_images
    assert image.data[:4] == b"\x89PNG" and request.ip_adapter_model == "plus-face"
    assert request.image_prompt_scale == STYLE  # the block scales win over the scale
    assert request.describe()["ip_adapter_images"] == 1  # no image data in logs
    plain = check_fields({"prompt": "x", "ip_adapter_image": IMAGE}, REPLICATE, Caps()).request()
    assert (plain.ip_adapter_model, plain.image_prompt_scale) == ("plus", 0.6)
    assert check_fields({"prompt": "x"}, REPLICATE, Caps()).request().ip_adapter_images == ()


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ({"ip_adapter_scale": 1.5}, "ip_adapter_scale", "out of range"),
        ({"ip_adapter_model": "sd15"}, "ip_adapter_model", "choose one of"),
        ({"ip_adapter_image": "not an image"}, "ip_adapter_image", "ip_adapter_image"),
        ({"ip_adapter_block_scales": "{up"}, "ip_adapter_block_scales", "not valid JSON"),
        ({"ip_adapter_block_scales": "[1]"}, "ip_adapter_block_scales", "JSON object"),
        (
            {"ip_adapter_block_scales": '{"side": {"block_0": 1}}'},
            "ip_adapter_block_scales",
            "use down, mid or up",
        ),
        (
            {"ip_adapter_block_scales": '{"up": {"block_0": [0, 2]}}'},
            "ip_adapter_block_scales",
            "from 0 to 1",
        ),
        (
            {"ip_adapter_block_scales": '{"up": {"first": 1}}'},
            "ip_adapter_block_scales",
            "block_0, block_1",
        ),
        ({"cache_interval": 3}, "cache_interval", "set cache_interval to 1"),
    ],
)
def test_a_bad_value_is_refused_naming_its_input(extra, field, says):
    with pytest.raises(InvalidInputs) as caught:
        check_fields({"prompt": "x", "ip_adapter_image": IMAGE, **extra}, REPLICATE, Caps())
    problem = caught.value.problems[0]
    assert problem.field == field, problem.message
    assert says in problem.message


def test_an_adapter_the_server_lacks_is_named_with_those_it_has(tmp_path):
    library = IpAdapterLibrary(tmp_path)
    with pytest.raises(InputError, match="it has: none"):
        library.check("plus")
    folder = tmp_path / "ip_adapter" / "sdxl_models"
    folder.mkdir(parents=True)
    (folder / "ip-adapter_sdxl_vit-h.safetensors").write_bytes(b"")
    with pytest.raises(InputError) as caught:
        library.check("plus")
    assert "it has: vit-h" in str(caught.value) and "weights download" in str(caught.value)
    with pytest.raises(InputError, match="no IP-Adapter image encoder"):
        library.check("vit-h")
