"""Tiny random versions of the trainer's helper models (DIR/train/blip, clipseg, swin2sr), in the
layout `weights download` writes, so that every preprocessing path runs offline in the tests:
BLIP's captions are random words, CLIPSeg's masks random, Swin2SR's upscales random, and each
loads, runs and frees exactly as the real ones do."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdxl.builders.tokenizer import tiny_merges, write_tokenizer
from sdxl.config import TRAIN_DIR
from sdxl.weights.download import MANIFEST

WORDS = "a photo of the cat dog man woman with on in at red blue green sitting standing table"


def build_tiny_helpers(root: Path) -> Path:
    folder = Path(root) / TRAIN_DIR
    torch.manual_seed(11)
    _blip(folder / "blip")
    _clipseg(folder / "clipseg")
    _swin2sr(folder / "swin2sr")
    return folder


def _blip(folder: Path) -> None:
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS.split()]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), bos_token="[DEC]")
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            pad_token_id=0,
            bos_token_id=vocab.index("[DEC]"),
            sep_token_id=vocab.index("[SEP]"),
            eos_token_id=vocab.index("[SEP]"),
            max_position_embeddings=64,
            encoder_hidden_size=32,
            **small,
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).eval().save_pretrained(folder, safe_serialization=True)
    images = BlipImageProcessor(size={"height": 32, "width": 32})
    _hub_layout(folder, BlipProcessor(image_processor=images, tokenizer=tokenizer))


def _clipseg(folder: Path) -> None:
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    size = write_tokenizer(folder, "!", tiny_merges())
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    config = CLIPSegConfig(
        text_config=dict(
            vocab_size=size,
            max_position_embeddings=77,
            bos_token_id=size - 2,
            eos_token_id=size - 1,
            pad_token_id=1,
            **small,
        ),
        vision_config=dict(image_size=64, patch_size=16, **small),
        projection_dim=32,
        extract_layers=[1],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        conditional_layer=0,
    )
    CLIPSegForImageSegmentation(config).eval().save_pretrained(folder, safe_serialization=True)
    images = ViTImageProcessor(size={"height": 64, "width": 64})
    _hub_layout(folder, CLIPSegProcessor(image_processor=images, tokenizer=tokenizer))


def _hub_layout(folder: Path, processor) -> None:
    """The processor's files as the hub repositories hold them (`weights download`'s
    manifest): the image processor's preprocessor_config.json, the tokenizer's own files and a
    special_tokens_map.json, but no processor_config.json or generation_config.json, which
    this transformers writes and the pinned snapshots lack."""
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    special = json.dumps(processor.tokenizer.special_tokens_map, indent=2)
    (folder / "special_tokens_map.json").write_text(special + "\n")
    hub = {entry.local for entry in MANIFEST}
    for path in folder.iterdir():
        if f"{TRAIN_DIR}/{folder.name}/{path.name}" not in hub:
            path.unlink()


def _swin2sr(folder: Path) -> None:
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution, Swin2SRImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    config = Swin2SRConfig(
        image_size=16,
        embed_dim=12,
        depths=[1],
        num_heads=[2],
        window_size=4,
        upscale=4,
        upsampler="pixelshuffle",
    )
    Swin2SRForImageSuperResolution(config).eval().save_pretrained(folder, safe_serialization=True)
    Swin2SRImageProcessor(pad_size=8).save_pretrained(folder)
