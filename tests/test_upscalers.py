"""sdxl.upscale.rrdbnet and sdxl.upscale.models: our RRDBNet against a forward written here from
ESRGAN's definition, strict loading, tiling, and the models `weights tiny` installs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.nn import functional as F

from sdxl.builders.tiny_upscalers import tiny_rrdbnet, to_old_arch
from sdxl.config import MODEL_UPSCALERS, UPSCALERS_DIR
from sdxl.errors import InputError
from sdxl.upscale.models import Upscalers, to_tensor, upscale_tiled
from sdxl.upscale.rrdbnet import UpscalerFileError, load_rrdbnet, rrdbnet_from_state_dict

pytestmark = pytest.mark.timeout(60)


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ESRGAN (Wang et al. 2018) over a Real-ESRGAN state dict, in plain functional calls."""

    def conv(name, t):
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(t):
        return F.leaky_relu(t, 0.2)

    def dense(prefix, t):
        feats = [t]
        for i in range(1, 5):
            feats.append(lrelu(conv(f"{prefix}.conv{i}", torch.cat(feats, 1))))
        return conv(f"{prefix}.conv5", torch.cat(feats, 1)) * 0.2 + t

    feat = conv("conv_first", x)
    body = feat
    for b in range(len({k.split(".")[1] for k in sd if k.startswith("body.")})):
        inner = body
        for r in (1, 2, 3):
            inner = dense(f"body.{b}.rdb{r}", inner)
        body = inner * 0.2 + body
    feat = feat + conv("conv_body", body)
    for up in ("conv_up1", "conv_up2"):
        feat = lrelu(conv(up, F.interpolate(feat, scale_factor=2, mode="nearest")))
    return conv("conv_last", lrelu(conv("conv_hr", feat)))


@pytest.fixture(scope="module")
def state():
    return {k: v.contiguous() for k, v in tiny_rrdbnet(7).state_dict().items()}


def test_the_network_equals_esrgans_definition(state):
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    model = rrdbnet_from_state_dict(state)
    assert model.scale == 4
    with torch.no_grad():
        ours = model(x)
    expected = reference_forward(state, x)
    assert ours.shape == (1, 3, 80, 112)
    assert expected.std() > 0.01  # not a flat image: the comparison means something
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_old_arch_keys_give_the_same_model(state):
    old = to_old_arch(state)
    assert "model.1.sub.0.RDB1.conv1.0.weight" in old and "model.10.bias" in old
    assert "model.1.sub.1.weight" in old  # conv_body after the one RRDB
    converted = rrdbnet_from_state_dict(old).state_dict()
    assert converted.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(converted[key], value), key


def test_pixel_unshuffle_variants_are_inferred(state):
    x2 = dict(state, **{"conv_first.weight": torch.randn(8, 12, 3, 3)})  # Real-ESRGAN x2plus
    assert rrdbnet_from_state_dict(x2).scale == 2
    x1 = dict(state, **{"conv_first.weight": torch.randn(8, 48, 3, 3)})
    model = rrdbnet_from_state_dict(x1)
    assert model.scale == 1 and model(torch.rand(1, 3, 8, 12)).shape == (1, 3, 8, 12)


def test_missing_extra_and_misshapen_keys_are_refused_by_name(state, tmp_path):
    cases = [
        ({k: v for k, v in state.items() if k != "body.0.rdb2.conv3.bias"}, "missing key body.0"),
        ({**state, "body.0.rdb1.extra.weight": torch.ones(1)}, "unexpected key body.0.rdb1.extra"),
        ({**state, "conv_hr.weight": torch.ones(8, 8, 1, 1)}, "conv_hr.weight has shape"),
        ({"something.weight": torch.ones(1)}, "no conv_first.weight"),
    ]
    for i, (bad, expected) in enumerate(cases):
        path = tmp_path / f"bad{i}.safetensors"
        save_file(bad, str(path))
        with pytest.raises(UpscalerFileError, match=expected) as err:
            load_rrdbnet(path)
        assert str(path) in str(err.value)


def test_pickles_are_refused(state, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(state, path)
    with pytest.raises(UpscalerFileError, match=r"model\.pth: .*\.safetensors only"):
        load_rrdbnet(path)
    fake = tmp_path / "renamed.safetensors"
    fake.write_bytes(path.read_bytes())
    with pytest.raises(UpscalerFileError, match="cannot read it as safetensors"):
        load_rrdbnet(fake)


def test_tiles_equal_one_pass_and_on_tile_can_stop(state):
    model = rrdbnet_from_state_dict(state)
    x = torch.rand(1, 3, 35, 29, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(x)
    seen = []
    tiled = upscale_tiled(model, x, tile=16, context=20, on_tile=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 6) for i in range(1, 7)]
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        upscale_tiled(model, x, tile=16, context=20, on_tile=stop_after_two)


def test_weights_tiny_installs_the_model_upscalers(tiny_weights):
    upscalers = Upscalers(tiny_weights, tile=24, context=20)
    assert upscalers.names() == sorted(MODEL_UPSCALERS)
    name = MODEL_UPSCALERS[0]  # saved with old-arch keys
    assert upscalers.path(name) == tiny_weights / UPSCALERS_DIR / f"{name}.safetensors"
    image = Image.new("RGB", (40, 30), (200, 40, 90))
    image.paste((10, 220, 30), (10, 5, 30, 20))
    out = upscalers.upscale(image, name)
    assert out.size == (160, 120) and out.mode == "RGB"
    model = load_rrdbnet(upscalers.path(name))
    assert model.scale == 4
    with torch.no_grad():
        expected = model(to_tensor(image)).clamp(0, 1).mul(255).round()
    got = torch.from_numpy(np.array(out)).permute(2, 0, 1).float()
    assert (got - expected[0]).abs().max() <= 1
    assert Upscalers(tiny_weights / "nowhere").names() == []


def test_an_unknown_name_names_the_input_and_the_choices(tiny_weights):
    with pytest.raises(InputError) as err:
        Upscalers(tiny_weights).upscale(Image.new("RGB", (8, 8)), "4x-Nope")
    assert err.value.field == "hires_upscaler"
    message = str(err.value)
    assert "hires_upscaler='4x-Nope'" in message
    assert all(name in message for name in MODEL_UPSCALERS)
