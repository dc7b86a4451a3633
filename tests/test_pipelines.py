"""setup() loads each module once; every pipeline shares them; errors when weights are missing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from sdxl.generate.schedulers import make_scheduler
from sdxl.model.loading import load_models
from sdxl.model.pipelines import WeightsMissingError, pick_dtype
from sdxl.settings import Runtime
from sdxl.settings.tree import RuntimeGroup

SHARED_WITH_BASE = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")


def _safetensors_bytes(path: Path) -> int:
    """Bytes of tensor data a safetensors file holds, read from its header alone."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return sum(end - start for start, end in (t["data_offsets"] for t in header.values()))


def _resident_bytes(modules) -> int:
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


@pytest.mark.parametrize("stage", ["txt2img", "img2img", "inpaint"])
def test_mode_pipelines_share_every_base_module(models, stage):
    scheduler = make_scheduler("K_EULER", models.scheduler_config("base"))
    pipe = models.pipeline(stage, scheduler)
    for name in SHARED_WITH_BASE:
        assert getattr(pipe, name) is getattr(models.base, name), name
    assert pipe.scheduler is scheduler and pipe.scheduler is not models.base.scheduler


def test_refiner_shares_text_encoder_2_and_vae(models):
    refiner = models.pipeline("refiner", make_scheduler("DDIM", models.scheduler_config("refiner")))
    assert refiner.text_encoder_2 is models.base.text_encoder_2
    assert refiner.vae is models.base.vae
    assert refiner.unet is models.refiner.unet and refiner.unet is not models.base.unet
    assert refiner.text_encoder is None
    assert refiner.config.requires_aesthetics_score is True


def test_resident_bytes_equal_the_safetensors_loaded(models, tiny_weights):
    files = sorted((tiny_weights / "base").glob("*/*.safetensors"))
    files += sorted((tiny_weights / "refiner").glob("*/*.safetensors"))
    assert len(files) == 5  # unet, vae, two text encoders; refiner unet
    modules = [
        models.base.unet,
        models.base.vae,
        models.base.text_encoder,
        models.base.text_encoder_2,
        models.refiner.unet,
        models.refiner.vae,
        models.refiner.text_encoder_2,
    ]
    on_disk = sum(_safetensors_bytes(f) for f in files)
    params = _resident_bytes(modules)
    # Non-persistent buffers (CLIP's position ids) are not in the files: count them apart.
    extra = sum(
        b.numel() * b.element_size()
        for m in modules[2:4]
        for name, b in m.named_buffers()
        if name.endswith("position_ids")
    )
    assert params - extra == on_disk


def test_setup_without_weights_names_the_command(tmp_path):
    with pytest.raises(WeightsMissingError) as err:
        load_models(Runtime(weights_dir=tmp_path / "nowhere", dtype="auto"))
    message = str(err.value)
    assert "python -m sdxl weights download" in message
    assert "python -m sdxl weights tiny" in message
    assert "nowhere" in message


def test_dtype_setting(monkeypatch):
    from sdxl.model import fast

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype("auto", cuda) is torch.float16
    assert pick_dtype("bfloat16", cpu) is torch.bfloat16
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    assert pick_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)  # emulated: slow
    assert pick_dtype("auto", cpu) is torch.float32


def test_native_bf16_agrees_with_torchs_own_cpu_probe():
    """The product reads /proc/cpuinfo; torch asks the CPU itself (cpuinfo, CPUID)."""
    from sdxl.model.fast import cpu_has_native_bf16

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_native_bf16() == native


def test_bad_dtype_env():
    with pytest.raises(ValueError, match="SDXL_DTYPE='fp8'.*float16"):
        RuntimeGroup.read({"SDXL_DTYPE": "fp8"})


def test_bfloat16_load(tiny_weights):
    models = load_models(Runtime(weights_dir=tiny_weights, dtype="bfloat16"))
    assert models.base.unet.dtype == torch.bfloat16
    assert models.refiner.unet.dtype == torch.bfloat16
    assert models.refiner.vae is models.base.vae


def test_tiny_layout_is_the_download_layout(tiny_weights):
    """The tiny builder writes exactly the files `weights download` puts in place."""
    from sdxl.weights.download import MANIFEST, USER_SUPPLIED

    written = {str(p.relative_to(tiny_weights)) for p in tiny_weights.rglob("*") if p.is_file()}
    assert written == {entry.local for entry in MANIFEST} | set(USER_SUPPLIED)
