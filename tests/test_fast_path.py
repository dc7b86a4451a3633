"""Each switch of the fast path (sdxl.model.fast), forced on the CPU where it can run, against
the plain modules: same images within a stated tolerance, weights held once, flags undone."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import load_tiny, start_engine
from safetensors import safe_open

from sdxl.engine import Engine
from sdxl.inputs.request import Request
from sdxl.model import fast
from sdxl.model.loading import load_models
from sdxl.settings import Runtime

SIZE = 256
TOLERANCE = 2  # of 255: float32 sums in another order (fused matmul, NHWC convolutions)


def run(engine, **kw) -> np.ndarray:
    args = dict(prompt="a photo of a cat", width=SIZE, height=SIZE, num_inference_steps=3)
    result = engine.run(Request(**{**args, "seed": 4, **kw}))
    return np.asarray(result.images[0], dtype=np.int16)


def start(tiny_weights, **switches):
    """An engine over its own models loaded with these fast-path switches."""
    from sdxl.engine import Engine, EngineSettings

    runtime = Runtime(weights_dir=tiny_weights, dtype="float32", **switches)
    engine = Engine(runtime, EngineSettings(), models=load_models(runtime))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def plain(tiny_weights):
    engine = start_engine(tiny_weights)
    yield engine
    engine.close()


def safetensors_bytes(folder) -> int:
    total = 0
    for path in folder.rglob("*.safetensors"):
        # LoRAs, the trainer's helpers, the upscalers, the control models and IP-Adapters
        # (loaded when a request names one)
        skipped = {"loras", "train", "upscalers", "controlnet", "annotators", "ip_adapter"}
        if skipped & set(path.parts):
            continue
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                sl = f.get_slice(key)
                total += int(np.prod(sl.get_shape())) * 4  # float32 on the CPU, as loaded
    return total


def test_channels_last_gives_the_same_images(tiny_weights, plain):
    engine = start(tiny_weights, channels_last="1")
    try:
        assert engine.models.base.unet.conv_in.weight.is_contiguous(
            memory_format=torch.channels_last
        )
        for refine in ("no_refiner", "expert_ensemble_refiner"):
            diff = np.abs(run(engine, refine=refine) - run(plain, refine=refine)).max()
            assert diff <= TOLERANCE, refine
    finally:
        engine.close()


def test_fused_qkv_holds_each_weight_once_and_gives_the_same_images(tiny_weights, plain):
    engine = start(tiny_weights, fuse_qkv="1")
    try:
        models = engine.models
        unet = models.base.unet
        attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
        assert type(attn.processor).__name__ == "FusedAttnProcessor2_0"
        assert attn.to_q.weight.untyped_storage().data_ptr() == (
            attn.to_qkv.weight.untyped_storage().data_ptr()
        )
        modules = (unet, models.refiner.unet, models.base.vae)
        modules += (models.base.text_encoder, models.base.text_encoder_2)
        fused_bytes = fast.parameter_bytes(*modules)
        plain_models = plain.models
        plain_modules = (plain_models.base.unet, plain_models.refiner.unet, plain_models.base.vae)
        plain_modules += (plain_models.base.text_encoder, plain_models.base.text_encoder_2)
        assert fused_bytes == fast.parameter_bytes(*plain_modules)
        before = run(engine)
        assert np.abs(before - run(plain)).max() <= TOLERANCE
        with_lora = run(engine, lora_name="offset", lora_scale=1.0)
        assert np.abs(with_lora - run(plain, lora_name="offset", lora_scale=1.0)).max() <= 2
        assert np.abs(with_lora - before).max() > TOLERANCE  # the LoRA did apply, unfused
        assert type(attn.processor).__name__ == "FusedAttnProcessor2_0"  # fused again after
        assert (run(engine) == before).all()
    finally:
        engine.close()


def test_control_models_take_the_fast_path_hold_their_bytes_once_and_leave_no_trace(
    tiny_weights, plain
):
    """A ControlNet loaded on the fast path: fused QKV, channels-last, the same images as the
    plain engine's; its resident bytes are its safetensors'; the plain request after it is as
    before it."""
    from PIL import Image, ImageDraw

    from sdxl.inputs.control_units import ControlUnit

    engine = start(tiny_weights, fuse_qkv="1", channels_last="1")
    try:
        image = Image.new("RGB", (SIZE, SIZE))
        ImageDraw.Draw(image).rectangle((40, 60, 200, 180), fill=(255, 255, 255))  # edges
        before = run(engine)
        units = (ControlUnit("canny", image), ControlUnit("depth", image))
        assert np.abs(run(engine, controls=units) - run(plain, controls=units)).max() <= TOLERANCE
        canny = engine.runner.guides.controls.for_units(units[:1])[0]
        attn = canny.down_blocks[1].attentions[0].transformer_blocks[0].attn1
        assert type(attn.processor).__name__ == "FusedAttnProcessor2_0"
        assert canny.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        folder = tiny_weights / "controlnet" / "canny"
        assert fast.parameter_bytes(canny) == safetensors_bytes_of(folder)
        assert (run(engine) == before).all()
    finally:
        engine.close()


def safetensors_bytes_of(folder) -> int:
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += int(np.prod(f.get_slice(key).get_shape())) * 4  # float32, as loaded
    return total


def test_resident_bytes_equal_the_safetensors_bytes(tiny_weights):
    models = load_tiny(tiny_weights)
    base = models.base
    modules = (base.unet, models.refiner.unet, base.vae, base.text_encoder, base.text_encoder_2)
    loaded = fast.parameter_bytes(*modules, models.safety_checker.model)
    assert loaded == safetensors_bytes(tiny_weights)


def test_the_vae_tiles_only_above_the_threshold_and_only_for_that_job(tiny_weights):
    engine = start(tiny_weights, vae_tile_above=SIZE * SIZE)
    seen = []
    vae = engine.models.base.vae
    hook = vae.decoder.register_forward_pre_hook(lambda *a: seen.append(vae.use_tiling))
    try:
        run(engine, width=256, height=264)  # above the threshold
        run(engine)  # 256 x 256: not above it
    finally:
        hook.remove()
        engine.close()
    assert seen == [True, False] and not vae.use_tiling


def test_a_vae_that_wants_float32_is_refused_in_float16(tiny_weights, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    config_path = weights / "base" / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "force_upcast": True}))
    with pytest.raises(ValueError, match="sdxl-vae-fp16-fix"):
        load_models(Runtime(weights_dir=weights, dtype="float16"))


def test_the_warm_up_runs_each_stage_on_the_thread_that_runs_the_jobs(tiny_weights):
    """CUDA graph trees keep per-thread state: the warm-up must run where the jobs run."""
    runtime = Runtime(weights_dir=tiny_weights, dtype="float32", warmup="1")
    models = load_models(runtime)
    assert models.warmup_shapes == ((1024, 1024),)  # what it asks for by default
    models.warmup_shapes = ((SIZE, SIZE),)  # the tiny model's size, for speed
    seen: list[tuple[str, str]] = []
    hooks = [
        module.register_forward_hook(
            lambda *a, stage=stage: seen.append((stage, threading.current_thread().name))
        )
        for stage, module in (("base", models.base.unet), ("refiner", models.refiner.unet))
    ]
    engine = Engine(runtime, models=models)
    try:
        engine.load()
        warmed = list(seen)
        assert engine.warmup_seconds is not None and engine.state == "ready"
        assert {stage for stage, _ in warmed} == {"base", "refiner"}  # each stage ran
        engine.run(Request(prompt="a cat", width=SIZE, height=SIZE, num_inference_steps=2))
        threads = {name for _, name in seen}
        assert threads == {"sdxl-gpu"}, threads  # the warm-up's and the job's: one thread
        assert len(seen) > len(warmed)
    finally:
        engine.close()
        for hook in hooks:
            hook.remove()


@pytest.mark.slow
def test_inductor_compiled_modules_equal_eager_and_never_recompile(tiny_weights, plain):
    """torch.compile with Inductor of the tiny UNets and VAE decoder on the CPU (over a
    minute): run with `python -m pytest -m slow`. tests/test_compile.py checks every kind of
    request with the eager backend."""
    engine = start(tiny_weights, compile=True, compile_shapes=((SIZE, SIZE),))
    try:
        counters = torch._dynamo.utils.counters["stats"]
        warmed = counters["unique_graphs"]
        for scheduler in ("K_EULER", "DDIM"):  # float32 and int64 timesteps
            for refine in ("no_refiner", "expert_ensemble_refiner"):
                diff = np.abs(
                    run(engine, refine=refine, scheduler=scheduler)
                    - run(plain, refine=refine, scheduler=scheduler)
                ).max()
                assert diff <= TOLERANCE, (scheduler, refine)
        run(engine, width=320)  # another size: eager
        assert counters["unique_graphs"] == warmed
        assert engine.models.compiled.eager_calls > 0
    finally:
        engine.close()
