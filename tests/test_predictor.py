"""The Cog Predictor called in-process: files, metadata, formats, no state carried over."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from support.helpers import cog_upload, half_mask, pixels, smooth_image

from sdxl.config import COG_INPUTS


@pytest.fixture(scope="module")
def predictor(tiny_weights):
    import os

    from predict import Predictor

    os.environ["SDXL_WEIGHTS_DIR"] = str(tiny_weights)
    p = Predictor()
    p.setup()
    yield p
    p.outputs.clear()


def call(predictor, **overrides):
    """run() with every input given, as the server gives them (defaults from the table)."""
    args = {name: spec.default for name, spec in COG_INPUTS.items()}
    args.update(width=256, height=256, num_inference_steps=3, seed=11)
    args.update(overrides)
    return predictor.run(**args)


def test_outputs_are_real_files_with_parameters(predictor):
    paths = call(predictor, num_outputs=2, prompt="a photo of a cat")
    assert [p.suffix for p in paths] == [".png", ".png"]
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            assert img.size == (256, 256)
            params = json.loads(img.text["parameters"])
        assert params["seed"] == 11 + i
        assert params["prompt"] == "a photo of a cat"
        assert params["scheduler"] == "K_EULER" and params["mode"] == "txt2img"


@pytest.mark.parametrize(("fmt", "pil"), [("webp", "WEBP"), ("jpg", "JPEG")])
def test_lossy_formats_carry_metadata(predictor, fmt, pil):
    (path,) = call(predictor, output_format=fmt, output_quality=90)
    assert path.suffix == "." + fmt
    with Image.open(path) as img:
        assert img.format == pil
        params = json.loads(img.getexif()[0x010E])
    assert params["seed"] == 11 and params["output_quality"] == 90


def test_previous_outputs_are_removed(predictor):
    first = call(predictor)
    second = call(predictor)
    assert not first[0].exists() and not first[0].parent.exists()
    assert second[0].exists()
    assert [p.name for p in predictor.outputs.root.iterdir()] == [second[0].parent.name]


def test_random_seed_is_recorded_and_reproduces(predictor):
    (path,) = call(predictor, seed=None)
    with Image.open(path) as img:
        seed = json.loads(img.text["parameters"])["seed"]
        first = pixels(img)
    assert 0 <= seed < 2**32
    (again,) = call(predictor, seed=seed)
    with Image.open(again) as img:
        assert (pixels(img) == first).all()


def test_nothing_carries_over_between_predictions(predictor, tmp_path):
    a = {"scheduler": "K_EULER", "seed": 5}
    b = {
        "scheduler": "KarrasDPM",
        "timestep_spacing": "trailing",
        "refine": "expert_ensemble_refiner",
        "num_outputs": 2,
        "guidance_scale": 2.0,
        "image": cog_upload(smooth_image(256, 256), "in.png"),
        "mask": cog_upload(half_mask(256, 256), "mask.png"),
        "negative_prompt": "blurry",
    }
    first = call(predictor, **a)[0].read_bytes()
    call(predictor, **b)
    call(predictor, scheduler="DPMSolverMultistep", refine="base_image_refiner", seed=9)
    assert call(predictor, **a)[0].read_bytes() == first


def test_img2img_output_takes_image_size(predictor, tmp_path):
    image = cog_upload(smooth_image(333, 517), "odd.png")
    (path,) = call(predictor, image=image, width=1024, height=1024, prompt_strength=0.7)
    with Image.open(path) as img:
        assert img.size == (328, 512)  # floored to multiples of 8; width/height ignored


@pytest.mark.parametrize("refine", ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"])
def test_inpaint_keeps_black_pixels(predictor, tmp_path, refine):
    source = smooth_image(256, 256, seed=3)
    mask = half_mask(256, 256)
    paths = call(
        predictor,
        image=cog_upload(source, "in.png"),
        mask=cog_upload(mask, "mask.png"),
        prompt_strength=0.95,
        num_inference_steps=6,
        refine=refine,
        refine_steps=2,
    )
    with Image.open(paths[0]) as img:
        out = pixels(img)
    keep = np.asarray(mask) < 128
    assert (out[keep] == pixels(source)[keep]).all()
    assert np.abs(out[~keep] - pixels(source)[~keep]).mean() > 5, "nothing was repainted"


def test_mask_with_same_aspect_is_resized(predictor, tmp_path):
    source = smooth_image(512, 256)
    mask = half_mask(256, 128)
    (path,) = call(
        predictor,
        image=cog_upload(source, "in.png"),
        mask=cog_upload(mask, "mask.png"),
        prompt_strength=0.9,
    )
    with Image.open(path) as img:
        assert img.size == (512, 256)
        out = pixels(img)
    assert (out[:, :250] == pixels(source)[:, :250]).all()


def test_transparent_image_is_flattened_onto_white(predictor, tmp_path):
    rgba = Image.new("RGBA", (256, 256), (0, 0, 0, 0))  # black, but fully transparent
    white = Image.new("RGB", (256, 256), (255, 255, 255))
    (clear,) = call(predictor, image=cog_upload(rgba, "clear.png"), prompt_strength=0.5)
    with Image.open(clear) as img:  # read now: the next prediction removes this one's files
        assert img.size == (256, 256)
        from_clear = pixels(img)
    (plain,) = call(predictor, image=cog_upload(white, "white.png"), prompt_strength=0.5)
    with Image.open(plain) as img:
        assert np.array_equal(from_clear, pixels(img))


def test_all_flagged_fails_and_disable_lets_them_through(tmp_path_factory):
    import os

    from predict import Predictor
    from sdxl.builders.tiny import build_tiny_weights

    root = build_tiny_weights(tmp_path_factory.mktemp("flagging"), flag_everything=True)
    previous = os.environ.get("SDXL_WEIGHTS_DIR")
    os.environ["SDXL_WEIGHTS_DIR"] = str(root)
    try:
        p = Predictor()
        p.setup()
    finally:
        os.environ["SDXL_WEIGHTS_DIR"] = previous
    with pytest.raises(ValueError, match="all 2 images were flagged by the safety checker"):
        call(p, num_outputs=2)
    assert len(call(p, num_outputs=2, disable_safety_checker=True)) == 2


def test_a_server_path_given_as_text_is_refused(predictor):
    """Without Cog's server in front, a string reaches run() as it was sent: never read it."""
    from cog import Path as CogPath

    with pytest.raises(ValueError, match="image must be a file upload"):
        call(predictor, image="/etc/hostname")
    with pytest.raises(ValueError, match="image must be a file upload"):
        call(predictor, image=CogPath("/etc/hostname"))  # a Path, but not one Cog wrote


def test_once_the_models_cannot_be_trusted_every_call_fails(tiny_weights, monkeypatch):
    from predict import Predictor
    from sdxl.engine import EngineBroken

    monkeypatch.setenv("SDXL_WEIGHTS_DIR", str(tiny_weights))
    p = Predictor()
    p.setup()
    unet = p.engine.models.base.unet
    real = unet.forward

    def poisoned(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(unet, "forward", poisoned)
    with pytest.raises(EngineBroken, match="device-side assert"):
        call(p)
    monkeypatch.setattr(unet, "forward", real)
    for _ in range(2):
        with pytest.raises(EngineBroken, match="must be restarted"):
            call(p)
    p.engine.close()
