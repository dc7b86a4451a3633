"""The control models `weights tiny` writes, and the depth preprocessor over its depth model.

The ControlNets must match the tiny UNet and must change what it makes (a zero ControlNet would
let every controlled-equals-diffusers test pass whatever the control did); the depth map must
equal transformers' own depth-estimation pipeline's, pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl.config import ANNOTATORS_DIR, CONTROLNET_DIR, UNION_MODEL
from sdxl.control.depth import DepthEstimator

pytestmark = pytest.mark.timeout(120)


def _photo(width: int = 96, height: int = 72) -> Image.Image:
    """A smooth gradient with a bright square: something with structure to see depth in."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    pixels[20:50, 30:60] = 240
    return Image.fromarray(pixels.astype("uint8"))


@pytest.mark.parametrize("name", ["canny", "depth", UNION_MODEL])
def test_the_controlnets_match_the_tiny_unet_and_are_not_zero(tiny_weights, name):
    from diffusers import ControlNetModel, ControlNetUnionModel, UNet2DConditionModel

    cls = ControlNetUnionModel if name == UNION_MODEL else ControlNetModel
    net = cls.from_pretrained(tiny_weights / CONTROLNET_DIR / name, use_safetensors=True)
    unet = UNet2DConditionModel.from_pretrained(tiny_weights / "base" / "unet")
    shared = ("block_out_channels", "down_block_types", "transformer_layers_per_block")
    shared += ("cross_attention_dim", "projection_class_embeddings_input_dim", "norm_num_groups")
    for key in shared:
        assert net.config[key] == unet.config[key], key
    zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block]
    assert all(conv.weight.abs().min() > 0 for conv in zero_convs)
    if name == UNION_MODEL:
        width = unet.config.block_out_channels[0]
        assert (net.config.num_control_type, net.config.num_trans_channel) == (8, width)
        assert net.config.num_proj_channel == width


def test_the_two_controlnets_differ(tiny_weights):
    from safetensors.torch import load_file

    canny, depth = (
        load_file(tiny_weights / CONTROLNET_DIR / name / "diffusion_pytorch_model.safetensors")
        for name in ("canny", "depth")
    )
    key = "controlnet_mid_block.weight"
    assert not torch.equal(canny[key], depth[key])


def test_a_tiny_controlnet_visibly_changes_the_image(tiny_weights, reference):
    """diffusers' own ControlNet pipeline over the session's tiny base: scale 1 against 0."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    controlnet = ControlNetModel.from_pretrained(tiny_weights / CONTROLNET_DIR / "canny")
    base = reference[0]
    pipe = StableDiffusionXLControlNetPipeline(
        **{
            k: v
            for k, v in base.components.items()
            if k not in ("image_encoder", "feature_extractor")
        },
        controlnet=controlnet.to(base.device),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    def run(scale: float) -> np.ndarray:
        image = pipe(
            "a cat",
            image=_photo(64, 64),
            height=64,
            width=64,
            num_inference_steps=2,
            controlnet_conditioning_scale=scale,
            generator=torch.Generator(base.device).manual_seed(0),
            output_type="np",
        ).images[0]
        return (image * 255).round().astype(np.int16)

    changed = np.abs(run(1.0) - run(0.0))
    assert changed.mean() > 2, changed.mean()  # grey levels: a control that shows


@pytest.fixture(scope="module")
def depth_folder(tiny_weights):
    return tiny_weights / ANNOTATORS_DIR / "depth"


def test_the_depth_map_equals_transformers_pipeline(depth_folder):
    from transformers import pipeline

    image = _photo()
    estimator = DepthEstimator(depth_folder, torch.device("cpu"), torch.float32)
    ours = estimator.estimate(image)
    theirs = pipeline("depth-estimation", model=str(depth_folder), device="cpu")(image)["depth"]
    assert ours.mode == "RGB" and ours.size == image.size
    assert np.array_equal(np.asarray(ours), np.asarray(theirs.convert("RGB")))
    gray = np.asarray(ours)[..., 0]
    assert gray.min() == 0 and gray.max() == 255 and len(np.unique(gray)) > 16  # not constant
    model = estimator._load()[1]
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_the_depth_model_loads_on_first_use_and_a_missing_one_is_named(tmp_path):
    missing = tmp_path / ANNOTATORS_DIR / "depth"
    estimator = DepthEstimator(missing, torch.device("cpu"), torch.float32)  # nothing read yet
    with pytest.raises(FileNotFoundError) as err:
        estimator.estimate(_photo())
    assert str(missing) in str(err.value)
    assert "python -m sdxl weights download" in str(err.value)
