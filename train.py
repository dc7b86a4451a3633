"""Cog surface of the SDXL trainer (cog.yaml `train: "train.py:train"`): input declarations,
one call into `sdxl`, the output.

The inputs are Replicate's SDXL trainer's (replicate/cog-sdxl), in its order, with its names,
types and defaults; bounds where a value cannot work; two inputs of ours, last
(`resume_from_checkpoint`, `name`). `cog build` reads this file statically, so every choice,
bound and default is a literal; they equal `sdxl/train/options.py` (tests/test_train_surface.py).
"""

from typing import Optional

from cog import BaseModel, Input, Path

from sdxl.cog.trainer import train as run_training


class TrainingOutput(BaseModel):
    weights: Path


def train(
    input_images: Path = Input(
        description="A .zip or .tar file containing the image files that will be used for "
        "fine-tuning (png, jpg, jpeg, webp; a name.txt caption beside an image, or a CSV "
        "whose name contains 'caption'; one top-level folder per concept, named by its token)",
    ),
    seed: Optional[int] = Input(
        description="Random seed for reproducible training. Leave empty to use a random seed",
        default=None,
        ge=0,
        le=4294967295,
    ),
    resolution: int = Input(
        description="Square pixel resolution which your images will be resized to for training",
        default=768,
        ge=256,
        le=2048,
    ),
    train_batch_size: int = Input(
        description="Batch size (per device) for training", default=4, ge=1, le=32
    ),
    num_train_epochs: int = Input(
        description="Number of epochs to loop through your training dataset",
        default=4000,
        ge=1,
        le=100000,
    ),
    max_train_steps: int = Input(
        description="Number of individual training steps. Takes precedence over num_train_epochs",
        default=1000,
        ge=1,
        le=100000,
    ),
    is_lora: bool = Input(
        description="Whether to use LoRA training. If set to False, will use Full fine tuning",
        default=True,
    ),
    unet_learning_rate: float = Input(
        description="Learning rate for the U-Net. We recommend this value to be somewhere "
        "between `1e-6` to `1e-5`.",
        default=1e-6,
        ge=0,
        le=1,
    ),
    ti_lr: float = Input(
        description="Scaling of learning rate for training textual inversion embeddings. Don't "
        "alter unless you know what you're doing.",
        default=3e-4,
        ge=0,
        le=1,
    ),
    lora_lr: float = Input(
        description="Scaling of learning rate for training LoRA embeddings. Don't alter unless "
        "you know what you're doing.",
        default=1e-4,
        ge=0,
        le=1,
    ),
    lora_rank: int = Input(
        description="Rank of LoRA embeddings. Don't alter unless you know what you're doing.",
        default=32,
        ge=1,
        le=256,
    ),
    lr_scheduler: str = Input(
        description="Learning rate scheduler to use for training",
        default="constant",
        choices=["constant", "linear"],
    ),
    lr_warmup_steps: int = Input(
        description="Number of warmup steps for lr schedulers with warmups.",
        default=100,
        ge=0,
        le=100000,
    ),
    token_string: str = Input(
        description="A unique string that will be trained to refer to the concept in the input "
        "images. Can be anything, but TOK works well",
        default="TOK",
        max_length=32,
    ),
    caption_prefix: str = Input(
        description="Text which will be used as prefix during automatic captioning. Must "
        "contain the `token_string`; left at its default, it follows `token_string` ('a photo "
        "of ZWX, ' for ZWX). For example, if caption text is 'a photo of TOK', automatic "
        "captioning will expand to 'a photo of TOK under a bridge', 'a photo of TOK holding a "
        "cup', etc.",
        default="a photo of TOK, ",
        max_length=1000,
    ),
    mask_target_prompts: Optional[str] = Input(
        description="Prompt that describes part of the image that you will find important. "
        "For example, if you are fine-tuning your pet, `photo of a dog` will be a good "
        "prompt. Prompt-based masking is used to focus the fine-tuning process on the "
        "important/salient parts of the image",
        default=None,
        max_length=1000,
    ),
    crop_based_on_salience: bool = Input(
        description="If you want to crop the image to `target_size` based on the important "
        "parts of the image, set this to True. If you want to crop the image based on face "
        "detection, set this to False",
        default=True,
    ),
    use_face_detection_instead: bool = Input(
        description="If you want to use face detection instead of CLIPSeg for masking. For "
        "face applications, we recommend using this option.",
        default=False,
    ),
    clipseg_temperature: float = Input(
        description="How blurry you want the CLIPSeg mask to be. We recommend this value be "
        "something between `0.5` to `1.0`. If you want to have more sharp mask (but thus more "
        "errorful), you can decrease this value.",
        default=1.0,
        ge=0.01,
        le=100,
    ),
    verbose: bool = Input(
        description="verbose output: a log line per training step (step, loss, learning rate, "
        "speed, ETA) besides the images, captions and seed",
        default=True,
    ),
    checkpointing_steps: int = Input(
        description="Number of steps between saving checkpoints. Set to very very high number "
        "to disable checkpointing, because you don't need one.",
        default=999999,
        ge=1,
        le=1000000,
    ),
    input_images_filetype: str = Input(
        description="Filetype of the input images. Can be either `zip` or `tar`. By default "
        "its `infer`, and it will be inferred from the ext of input file.",
        default="infer",
        choices=["zip", "tar", "infer"],
    ),
    resume_from_checkpoint: Optional[Path] = Input(
        description="A checkpoint of an earlier training with the same inputs (checkpoints/"
        "step-N.tar) to go on from; its seed is used when none is given",
        default=None,
    ),
    name: Optional[str] = Input(
        description="What the tar's web UI files are named after: webui/<name>.safetensors "
        "(the LoRA) and webui/embeddings/<name>_<token>.safetensors (the embedding: write "
        "<name>_<token> in an AUTOMATIC1111 or ComfyUI prompt). Letters, digits, '-', '_', "
        "'.'. Leave empty for the first 8 hex digits of the trained weights' sha256 (on the "
        "trainings API: <owner>-<model>-<the version's first 8 characters>)",
        default=None,
        max_length=100,
    ),
) -> TrainingOutput:
    inputs = dict(locals())
    return TrainingOutput(weights=Path(run_training(inputs)))
