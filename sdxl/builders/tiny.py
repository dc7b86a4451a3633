"""Build a tiny random-weight SDXL, offline, in the exact layout of the real weights.

The tiny model is what the tests and the quickstart run: the same loading code, the same
file names and the same SDXL conditioning (text_time embeddings, the refiner's aesthetic
score, two CLIP text encoders, the 8x VAE), with a few thousand parameters per module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sdxl.builders.random_lora import random_kohya_lora
from sdxl.builders.tiny_control import build_tiny_control
from sdxl.builders.tiny_ip_adapter import build_tiny_ip_adapter
from sdxl.builders.tiny_safety import build_tiny_safety_checker
from sdxl.builders.tiny_train import build_tiny_helpers
from sdxl.builders.tiny_upscalers import build_tiny_upscalers
from sdxl.builders.tokenizer import tiny_merges, write_tokenizer
from sdxl.config import (
    ANNOTATORS_DIR,
    BASE_DIR,
    CONTROLNET_DIR,
    IP_ADAPTER_DIR,
    LORAS_DIR,
    REFINER_DIR,
    SAFETY_DIR,
    TRAIN_DIR,
    UPSCALERS_DIR,
)

# SDXL 1.0's scheduler_config.json, verbatim (base and refiner ship the same one).
SDXL_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

_TIME_EMBED_DIM = 8  # addition_time_embed_dim (256 in the real UNets)
_TE1_DIM, _TE2_DIM = 32, 64  # hidden sizes of the two text encoders (768 and 1280 in SDXL)


def _text_encoders(vocab_size: int, eos_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=4,
            num_hidden_layers=3,
            max_position_embeddings=77,
            projection_dim=hidden,
            hidden_act="gelu",
            bos_token_id=eos_id - 1,
            eos_token_id=eos_id,
            pad_token_id=1,
        )

    torch.manual_seed(1)
    te1 = CLIPTextModel(config(_TE1_DIM))
    torch.manual_seed(2)
    te2 = CLIPTextModelWithProjection(config(_TE2_DIM))
    return te1, te2


def _unet(cross_attention_dim: int, n_time_ids: int, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=n_time_ids * _TIME_EMBED_DIM + _TE2_DIM,
        norm_num_groups=16,
    )


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=False,
    )


def build_tiny_weights(root: Path, flag_everything: bool = False) -> Path:
    """Write base/, refiner/, loras/, safety_checker/, train/ (the trainer's helpers),
    upscalers/ (tiny ESRGANs), controlnet/ and annotators/ (sdxl.builders.tiny_control) and
    ip_adapter/ (sdxl.builders.tiny_ip_adapter) under `root`, replacing them.

    `flag_everything` writes a safety checker that flags every image (through its
    thresholds), to test the flagged path end to end. Returns `root`.
    """
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    root = Path(root)
    staging = root / ".tiny-staging"
    shutil.rmtree(staging, ignore_errors=True)
    merges = tiny_merges()
    vocab_size = write_tokenizer(staging / "tok", "<|endoftext|>", merges)
    write_tokenizer(staging / "tok2", "!", merges)
    tokenizer = CLIPTokenizer.from_pretrained(staging / "tok")
    tokenizer_2 = CLIPTokenizer.from_pretrained(staging / "tok2")
    te1, te2 = _text_encoders(vocab_size, eos_id=tokenizer.eos_token_id)
    vae = _vae()
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)

    # The refiner shares the VAE, the second text encoder and its tokenizer, as SDXL's do.
    shared = dict(
        vae=vae,
        text_encoder_2=te2,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
        add_watermarker=False,
    )
    base = StableDiffusionXLPipeline(
        **shared,
        text_encoder=te1,
        tokenizer=tokenizer,
        unet=_unet(_TE1_DIM + _TE2_DIM, n_time_ids=6, seed=4),
        force_zeros_for_empty_prompt=True,
    )
    refiner = StableDiffusionXLImg2ImgPipeline(
        **shared,
        text_encoder=None,
        tokenizer=None,
        unet=_unet(_TE2_DIM, n_time_ids=5, seed=5),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    base.save_pretrained(staging / BASE_DIR, safe_serialization=True)
    refiner.save_pretrained(staging / REFINER_DIR, safe_serialization=True)
    _use_original_tokenizer_files(staging)
    build_tiny_safety_checker(staging / SAFETY_DIR, flag_everything=flag_everything)
    (staging / LORAS_DIR).mkdir()
    save_file(random_kohya_lora(base.unet), str(staging / LORAS_DIR / "offset.safetensors"))
    # The refiner of the real layout has no text_encoder_2/vae/tokenizer_2 of its own.
    for shared in ("text_encoder_2", "vae", "tokenizer_2"):
        shutil.rmtree(staging / REFINER_DIR / shared)
    shutil.rmtree(staging / "tok")
    shutil.rmtree(staging / "tok2")
    build_tiny_helpers(staging)
    build_tiny_upscalers(staging)
    build_tiny_control(staging, base.unet.config)
    build_tiny_ip_adapter(staging, base.unet)
    return move_layout(staging, root)


_REQUIRED_FOLDERS = (BASE_DIR, REFINER_DIR, LORAS_DIR, SAFETY_DIR, TRAIN_DIR, UPSCALERS_DIR)


def move_layout(staging: Path, root: Path) -> Path:
    """Move the weights folders built in `staging` into `root`, replacing any there (a folder
    not built, such as controlnet/ of a random-full build without control, is removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in (*_REQUIRED_FOLDERS, CONTROLNET_DIR, ANNOTATORS_DIR, IP_ADAPTER_DIR):
        shutil.rmtree(root / name, ignore_errors=True)
        if name in _REQUIRED_FOLDERS or (staging / name).exists():
            (staging / name).rename(root / name)
    staging.rmdir()
    return root


def _use_original_tokenizer_files(staging: Path) -> None:
    """Keep exactly the tokenizer files SDXL's repositories ship (no tokenizer.json)."""
    for src, dst in (("tok", "tokenizer"), ("tok2", "tokenizer_2")):
        folder = staging / BASE_DIR / dst
        shutil.rmtree(folder)
        shutil.copytree(staging / src, folder)
