"""`python -m sdxl weights random-full`: SDXL 1.0's real shapes, written without a float32 model.

The full build (12 GB, a minute) is not part of the suite: here the configurations are checked
against SDXL's published parameter counts on the meta device, and the builder itself runs with
small stand-in configurations and a small BPE file, then loads through the product's loader.
"""

from __future__ import annotations

import gzip

import torch

from sdxl.builders import random_full
from sdxl.builders import sdxl_configs as configs


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_configurations_have_sdxl_1_0s_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        assert count(UNet2DConditionModel.from_config(configs.BASE_UNET)) == 2_567_463_684
        assert count(UNet2DConditionModel.from_config(configs.REFINER_UNET)) == 2_259_526_660
        assert count(CLIPTextModel(CLIPTextConfig(**configs.TEXT_ENCODER))) == 123_060_480
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs.TEXT_ENCODER_2))
        assert count(text_2) == 694_659_840
        assert count(AutoencoderKL.from_config(configs.VAE)) == 83_653_863
        checker = CLIPConfig(vision_config=configs.SAFETY_VISION, projection_dim=768)
        assert count(StableDiffusionSafetyChecker(checker)) == 303_981_588


def test_the_ip_adapters_have_h94s_sizes():
    """The ViT-H encoder's 632.08M parameters (h94's card; its float32 file is 2,528,373,448
    bytes), the adapters' fp16 tensors a header short of h94's files as public download
    manifests record them (ip-adapter_sdxl_vit-h 698,391,064 bytes, -plus 847,517,512), the
    face adapter the plus one's shapes."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sdxl.builders.tiny_ip_adapter import ip_adapter_state

    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs.IMAGE_ENCODER))
        unet = UNet2DConditionModel.from_config(configs.BASE_UNET)
    assert count(encoder) == 632_076_800
    assert 0 < 2_528_373_448 - 4 * count(encoder) < 160 * len(encoder.state_dict())
    states = {
        name: ip_adapter_state(name, unet, configs.IMAGE_ENCODER, 1, torch.float16, meta=True)
        for name in ("vit-h", "plus", "plus-face")
    }
    for name, file_bytes in (("vit-h", 698_391_064), ("plus", 847_517_512)):
        tensor_bytes = sum(t.nbytes for t in states[name].values())
        assert 0 < file_bytes - tensor_bytes < 160 * len(states[name]), name  # the header
    shapes = {name: {k: t.shape for k, t in state.items()} for name, state in states.items()}
    assert shapes["plus-face"] == shapes["plus"]


def test_random_state_is_float16_finite_and_never_a_float32_model():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(configs.VAE)
    state = random_full.random_state(vae, seed=1)
    assert set(state) == set(vae.state_dict())
    assert {t.dtype for t in state.values()} == {torch.float16}
    assert all(torch.isfinite(t).all() for t in state.values())
    assert (state["decoder.conv_norm_out.weight"] == 1).all()
    assert (state["decoder.conv_norm_out.bias"] == 0).all()
    assert all(p.is_meta for p in vae.parameters())  # the module itself was never filled


SMALL = {  # stand-ins with SDXL's structure and small dimensions
    "BASE_UNET": {
        **configs.BASE_UNET,
        "block_out_channels": [32, 64, 64],
        "attention_head_dim": [2, 4, 4],
        "transformer_layers_per_block": [1, 1, 1],
        "cross_attention_dim": 96,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 64,
        "norm_num_groups": 16,
    },
    "REFINER_UNET": {
        **configs.REFINER_UNET,
        "block_out_channels": [32, 64, 64, 64],
        "attention_head_dim": [2, 4, 4, 4],
        "transformer_layers_per_block": 1,
        "cross_attention_dim": 64,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 5 * 8 + 64,
        "norm_num_groups": 16,
    },
    "TEXT_ENCODER": {
        **configs.TEXT_ENCODER,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 32,
    },
    "TEXT_ENCODER_2": {
        **configs.TEXT_ENCODER_2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 64,
    },
    "VAE": {**configs.VAE, "block_out_channels": [16, 16, 32, 32], "norm_num_groups": 16},
    "SAFETY_VISION": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
    "SAFETY_PROJECTION_DIM": 16,
    "IMAGE_ENCODER": {
        **configs.IMAGE_ENCODER,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 32,
        "projection_dim": 24,
    },
    "RRDBNET": dict(num_feat=8, num_block=1, num_grow_ch=4, num_up=2),
}


def test_the_builder_writes_the_download_layout_that_the_product_loads(tmp_path, monkeypatch):
    from sdxl.model.loading import load_models
    from sdxl.settings import Runtime
    from sdxl.weights.download import MANIFEST, USER_SUPPLIED

    for name, value in SMALL.items():
        monkeypatch.setattr(configs, name, value)
    preprocessor = {**configs.SAFETY_PREPROCESSOR, "crop_size": 32, "size": 32}
    monkeypatch.setattr(configs, "SAFETY_PREPROCESSOR", preprocessor)
    bpe = tmp_path / "bpe.txt.gz"
    merges = ["#version", "t h", "th e</w>", "c a", "ca t</w>", "p h", "ph o", "pho t", "o f</w>"]
    with gzip.open(bpe, "wt") as f:
        f.write("\n".join(merges) + "\n")
    monkeypatch.setattr(random_full, "clip_bpe_file", lambda: bpe)
    monkeypatch.setattr(random_full, "CLIP_MERGES", len(merges) - 1)
    monkeypatch.setattr(random_full, "_offset_lora", lambda folder: _small_lora(folder))
    root = random_full.build_random_full(tmp_path / "weights", log=lambda line: None)
    written = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert written == {entry.local for entry in MANIFEST} | set(USER_SUPPLIED)
    models = load_models(Runtime(weights_dir=root, dtype="float32"))
    assert models.base.tokenizer("the cat").input_ids[1:-1] == [
        models.base.tokenizer.convert_tokens_to_ids(t) for t in ("the</w>", "cat</w>")
    ]
    assert str(models.base.unet.dtype) == "torch.float32"
    _each_ip_adapter_fits_the_encoder(root)


def _each_ip_adapter_fits_the_encoder(root) -> None:
    """diffusers loads the three adapters at once over the built encoder and UNet, and runs
    them (each image projection takes the encoder's output, each to_k_ip the projection's)."""
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    from sdxl.config import IP_ADAPTER_MODELS

    pipe = StableDiffusionXLPipeline.from_pretrained(
        root / "base", torch_dtype=torch.float32, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(
        str(root / "ip_adapter"),
        subfolder="sdxl_models",
        weight_name=list(IP_ADAPTER_MODELS.values()),
        image_encoder_folder="models/image_encoder",
    )
    assert len(pipe.unet.encoder_hid_proj.image_projection_layers) == len(IP_ADAPTER_MODELS)
    latents = pipe(
        "a cat",
        ip_adapter_image=[Image.new("RGB", (64, 64), "red")] * len(IP_ADAPTER_MODELS),
        height=64,
        width=64,
        num_inference_steps=1,
        output_type="latent",
    ).images
    assert torch.isfinite(latents).all()


def _small_lora(folder) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"lora_unet_x.alpha": torch.ones(())}, str(folder / "offset.safetensors"))


def test_the_real_clip_vocabulary_tokenizes_as_sdxls_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    assert random_full.clip_bpe_file() is not None, (
        "open_clip_torch carries CLIP's vocabulary: `pip install --no-deps -r "
        "requirements-nodeps.txt` (the README's test command does)"
    )
    random_full.write_clip_tokenizer(tmp_path, "<|endoftext|>", random_full.clip_bpe_file())
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_the_command_line_can_leave_the_ip_adapters_out():
    from sdxl.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["weights", "random-full", "d"]).no_ip_adapter is False
    args = parser.parse_args(["weights", "random-full", "d", "--no-ip-adapter"])
    assert (args.no_ip_adapter, args.no_control) == (True, False)
