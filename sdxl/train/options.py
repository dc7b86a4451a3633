"""The trainer's inputs: the reference trainer's 22 (replicate/cog-sdxl's train.py) with the
same names, types and defaults, bounds added where a value cannot work, and one input of ours
(`resume_from_checkpoint`). `train.py` repeats them as literals for `cog build`;
tests/test_train_surface.py keeps the two equal.

Where the reference is silent or wrong, this trainer decides (docs/training.md): `seed=0` is a
seed, not a random one; `max_train_steps` is the number of steps run (at most
`num_train_epochs` passes over the images); `lr_warmup_steps` applies to both schedulers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from sdxl.config import MAX_SEED, SIZE_MULTIPLE, InputSpec
from sdxl.errors import InputError, field_error

LR_SCHEDULERS = ("constant", "linear")
FILETYPES = ("zip", "tar", "infer")
TOKEN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

TRAIN_INPUTS: dict[str, InputSpec] = {
    "input_images": InputSpec("file"),  # required: a .zip or .tar of images
    "seed": InputSpec("integer", None, 0, MAX_SEED),
    "resolution": InputSpec("integer", 768, 256, 2048),
    "train_batch_size": InputSpec("integer", 4, 1, 32),
    "num_train_epochs": InputSpec("integer", 4000, 1, 100_000),
    "max_train_steps": InputSpec("integer", 1000, 1, 100_000),
    "is_lora": InputSpec("boolean", True),
    "unet_learning_rate": InputSpec("number", 1e-6, 0, 1),
    "ti_lr": InputSpec("number", 3e-4, 0, 1),
    "lora_lr": InputSpec("number", 1e-4, 0, 1),
    "lora_rank": InputSpec("integer", 32, 1, 256),
    "lr_scheduler": InputSpec("string", "constant", choices=LR_SCHEDULERS),
    "lr_warmup_steps": InputSpec("integer", 100, 0, 100_000),
    "token_string": InputSpec("string", "TOK", max_length=32),
    "caption_prefix": InputSpec("string", "a photo of TOK, ", max_length=1000),
    "mask_target_prompts": InputSpec("string", None, max_length=1000),
    "crop_based_on_salience": InputSpec("boolean", True),
    "use_face_detection_instead": InputSpec("boolean", False),
    "clipseg_temperature": InputSpec("number", 1.0, 0.01, 100),
    "verbose": InputSpec("boolean", True),
    "checkpointing_steps": InputSpec("integer", 999999, 1, 1_000_000),
    "input_images_filetype": InputSpec("string", "infer", choices=FILETYPES),
    # Ours: a checkpoint of an earlier training with the same inputs, to go on from.
    "resume_from_checkpoint": InputSpec("file"),
}


def _default(name: str):
    return dataclasses.field(default=TRAIN_INPUTS[name].default)


@dataclass(frozen=True)
class TrainRequest:
    """One training's inputs, checked; `input_images` and `resume_from_checkpoint` are local
    paths by now (the Cog layer or the server brought them here)."""

    input_images: str
    seed: int | None = _default("seed")
    resolution: int = _default("resolution")
    train_batch_size: int = _default("train_batch_size")
    num_train_epochs: int = _default("num_train_epochs")
    max_train_steps: int = _default("max_train_steps")
    is_lora: bool = _default("is_lora")
    unet_learning_rate: float = _default("unet_learning_rate")
    ti_lr: float = _default("ti_lr")
    lora_lr: float = _default("lora_lr")
    lora_rank: int = _default("lora_rank")
    lr_scheduler: str = _default("lr_scheduler")
    lr_warmup_steps: int = _default("lr_warmup_steps")
    token_string: str = _default("token_string")
    caption_prefix: str = _default("caption_prefix")
    mask_target_prompts: str | None = _default("mask_target_prompts")
    crop_based_on_salience: bool = _default("crop_based_on_salience")
    use_face_detection_instead: bool = _default("use_face_detection_instead")
    clipseg_temperature: float = _default("clipseg_temperature")
    verbose: bool = _default("verbose")
    checkpointing_steps: int = _default("checkpointing_steps")
    input_images_filetype: str = _default("input_images_filetype")
    resume_from_checkpoint: str | None = None

    def describe(self) -> dict[str, Any]:
        """The inputs that decide the trained weights (what a checkpoint must match)."""
        skip = {"input_images", "resume_from_checkpoint", "verbose", "checkpointing_steps"}
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }


def check_train_request(req: TrainRequest) -> None:
    """The rules the schema cannot say; InputError names the input and the fix."""
    for name, spec in TRAIN_INPUTS.items():
        value = getattr(req, name)
        numeric = spec.kind in ("integer", "number") and value is not None
        if numeric and not spec.ge <= value <= spec.le:
            words = {"lo": f"{spec.ge:g}", "hi": f"{spec.le:g}"}
            raise field_error("{field} is out of range; use {lo}..{hi}", name, value, words=words)
        if spec.choices is not None and value not in spec.choices:
            words = {"choices": ", ".join(spec.choices)}
            template = "{field} is not supported; choose one of: {choices}"
            raise field_error(template, name, value, words=words)
    if req.resolution % SIZE_MULTIPLE:
        lower = req.resolution // SIZE_MULTIPLE * SIZE_MULTIPLE
        raise field_error(
            "{field} is not a multiple of 8; use {lower} or {upper}",
            "resolution",
            req.resolution,
            words={"lower": lower, "upper": lower + SIZE_MULTIPLE},
        )
    check_token(req.token_string, "token_string")
    if req.token_string not in req.caption_prefix:
        raise InputError(
            "{caption_prefix} does not contain {token_string}: automatic captions would not "
            "name what is trained; put the token in the prefix, as in 'a photo of TOK, '",
            "caption_prefix",
            req.caption_prefix,
            values={"caption_prefix": req.caption_prefix, "token_string": req.token_string},
        )


def check_token(token: str, field: str, where: str = "") -> None:
    """A token is one word (a letter, then letters, digits or _), so that it is replaced as a
    whole word in captions and prompts."""
    if not TOKEN_WORD.fullmatch(token):
        raise field_error(
            "{field} is not a token: use one word of letters, digits and _ that starts with a "
            "letter (at most 32), such as TOK" + where,
            field,
            token,
        )
