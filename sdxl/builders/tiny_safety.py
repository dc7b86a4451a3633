"""A tiny random-weight safety checker in the real checker's file layout, for tests.

Its verdicts come from its thresholds alone, whatever the image: a concept is flagged when
cosine similarity minus threshold is above 0, and cosine similarity lies in [-1, 1], so a
threshold of 2 never flags and one of -2 flags every image.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# CLIP's image preprocessing, as in the real preprocessor_config.json (224 px there).
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_TINY_SIDE = 32


def build_tiny_safety_checker(folder: Path, flag_everything: bool = False) -> Path:
    """Write the tiny checker into `folder`; `flag_everything` flags every image."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    torch.manual_seed(6)
    model = StableDiffusionSafetyChecker(_tiny_config())
    with torch.no_grad():
        model.concept_embeds_weights.fill_(-2.0 if flag_everything else 2.0)
        model.special_care_embeds_weights.fill_(2.0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    preprocessor = {
        "crop_size": _TINY_SIDE,
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "resample": 3,
        "size": _TINY_SIDE,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder


def _tiny_config():
    from transformers import CLIPConfig

    text = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=62,
        eos_token_id=63,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=_TINY_SIDE,
        patch_size=8,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
