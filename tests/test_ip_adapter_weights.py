"""The IP-Adapters `weights tiny` writes, in h94/IP-Adapter's layout and original key format.

diffusers' own `load_ip_adapter` must load each file as the real ones load (the hub layout,
`subfolder="sdxl_models"`, the ViT-H encoder's folder), convert it into exactly the modules
the builder made, and the adapter must change the image (a zero adapter would let every
image-prompted-equals-diffusers test pass whatever the adapter did).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl.builders.tiny_ip_adapter import (
    ADAPTER_SEEDS,
    PLUS_TOKENS,
    TINY_ENCODER,
    cross_attention_layers,
    image_projection,
    seeded_state,
)
from sdxl.config import IP_ADAPTER_DIR, IP_ADAPTER_ENCODER, IP_ADAPTER_MODELS, IP_ADAPTER_SUBFOLDER

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def weights(tiny_weights):
    return tiny_weights


def _pipeline(weights):
    """diffusers' own SDXL pipeline over the tiny base, its own (loading an adapter changes
    the UNet, so never the session's shared `reference`)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        weights / "base", torch_dtype=torch.float32, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load(pipe, weights, name: str) -> None:
    pipe.load_ip_adapter(
        str(weights / IP_ADAPTER_DIR),
        subfolder=IP_ADAPTER_SUBFOLDER,
        weight_name=IP_ADAPTER_MODELS[name],
        image_encoder_folder=IP_ADAPTER_ENCODER,
    )


def test_the_layout_is_h94s(weights):
    folder = weights / IP_ADAPTER_DIR
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert files == {
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
        *(f"sdxl_models/{name}" for name in IP_ADAPTER_MODELS.values()),
    }


def test_the_files_use_h94s_original_keys(weights):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_pretrained(weights / "base" / "unet")
    layers = cross_attention_layers(unet)
    assert [n for n, _, _ in layers] == list(range(1, 2 * len(layers), 2))
    expected_attn = {
        f"ip_adapter.{n}.{w}.weight" for n, _, _ in layers for w in ("to_k_ip", "to_v_ip")
    }
    folder = weights / IP_ADAPTER_DIR / IP_ADAPTER_SUBFOLDER
    for name, file in IP_ADAPTER_MODELS.items():
        state = load_file(folder / file)
        attn = {k for k in state if k.startswith("ip_adapter.")}
        assert attn == expected_attn, name
        proj = {k.removeprefix("image_proj.") for k in state if k not in attn}
        if name == "vit-h":
            assert proj == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
            continue
        assert state["image_proj.latents"].shape[1] == PLUS_TOKENS
        assert {"latents", "proj_in.weight", "proj_out.weight", "norm_out.weight"} <= proj
        assert {"layers.3.0.to_kv.weight", "layers.3.0.norm2.bias", "layers.3.1.3.weight"} <= proj
        assert all(t.abs().min() > 0 for t in state.values()), name


@pytest.mark.parametrize("name", list(IP_ADAPTER_MODELS))
def test_diffusers_loads_each_adapter_into_the_modules_built(weights, name):
    from safetensors.torch import load_file

    pipe = _pipeline(weights)
    layers = cross_attention_layers(pipe.unet)  # numbered before (the Resampler has attentions)
    _load(pipe, weights, name)
    unet = pipe.unet
    assert unet.config.encoder_hid_dim_type == "ip_image_proj"
    assert pipe.image_encoder.config.image_size == TINY_ENCODER["image_size"]
    (loaded,) = unet.encoder_hid_proj.image_projection_layers
    cross = unet.config.cross_attention_dim
    built = seeded_state(image_projection(name, TINY_ENCODER, cross), ADAPTER_SEEDS[name])
    assert type(loaded) is type(image_projection(name, TINY_ENCODER, cross))
    assert loaded.state_dict().keys() == built.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, built[key]), key
    file = load_file(weights / IP_ADAPTER_DIR / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_MODELS[name])
    processors = unet.attn_processors
    assert {p for p, proc in processors.items() if hasattr(proc, "to_k_ip")} == {
        p for _, p, _ in layers
    }
    for key_id, processor, _ in layers:
        for which in ("to_k_ip", "to_v_ip"):
            weight = getattr(processors[processor], which)[0].weight
            assert torch.equal(weight, file[f"ip_adapter.{key_id}.{which}.weight"])


def _picture(seed: int) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_an_adapter_visibly_changes_the_image(weights):
    pipe = _pipeline(weights)

    def run(**image_prompt) -> np.ndarray:
        image = pipe(
            "a cat",
            height=64,
            width=64,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **image_prompt,
        ).images[0]
        return (image * 255).round().astype(np.int16)

    plain = run()
    _load(pipe, weights, "plus")
    pipe.set_ip_adapter_scale(0.6)
    prompted = run(ip_adapter_image=_picture(0))
    assert np.abs(prompted - plain).mean() > 2  # grey levels: the adapter shows
