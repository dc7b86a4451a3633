"""The trainer's inputs: the reference trainer's 22 (replicate/cog-sdxl's train.py) with the
same names, types and defaults, bounds added where a value cannot work, and two inputs of ours
(`resume_from_checkpoint`, `name`). `train.py` repeats them as literals for `cog build`;
tests/test_train_surface.py keeps the two equal.

Where the reference is silent or wrong, this trainer decides (docs/training.md): `seed=0` is a
seed, not a random one; `max_train_steps` is the number of steps run (at most
`num_train_epochs` passes over the images); `lr_warmup_steps` applies to both schedulers;
`caption_prefix` left at its default follows `token_string` ("a photo of ZWX, " for ZWX).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from sdxl.config import MAX_SEED, SIZE_MULTIPLE, InputSpec
from sdxl.errors import InputError, field_error
from sdxl.inputs.rules import check_choice, check_range

LR_SCHEDULERS = ("constant", "linear")
FILETYPES = ("zip", "tar", "infer")
FILE_INPUTS = ("input_images", "resume_from_checkpoint")  # the inputs that are files
TOKEN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
DEFAULT_TOKEN, DEFAULT_PREFIX = "TOK", "a photo of TOK, "
# The tar's web UI files' name: a file name on every system (no separator, no leading dot, no
# trailing dot, none of Windows' reserved device names), at most 100 characters; not
# "embeddings", which webui/embeddings.safetensors has.
NAME_WORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9_-])?")
RESERVED_NAMES = re.compile(
    r"(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\..*)?|embeddings", re.IGNORECASE
)

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
    "token_string": InputSpec("string", DEFAULT_TOKEN, max_length=32),
    "caption_prefix": InputSpec("string", DEFAULT_PREFIX, max_length=1000),
    "mask_target_prompts": InputSpec("string", None, max_length=1000),
    "crop_based_on_salience": InputSpec("boolean", True),
    "use_face_detection_instead": InputSpec("boolean", False),
    "clipseg_temperature": InputSpec("number", 1.0, 0.01, 100),
    "verbose": InputSpec("boolean", True),
    "checkpointing_steps": InputSpec("integer", 999999, 1, 1_000_000),
    "input_images_filetype": InputSpec("string", "infer", choices=FILETYPES),
    # Ours: a checkpoint of an earlier training with the same inputs, to go on from.
    "resume_from_checkpoint": InputSpec("file"),
    # Ours: what the tar's web UI files are named after (None: a hash of the trained weights).
    "name": InputSpec("string", None, max_length=100),
}


_TYPES = {"integer": int, "number": float, "boolean": bool, "string": str, "file": str}
_REQUIRED = ("input_images",)


def _table_fields(cls):
    """`cls` with one field per input of TRAIN_INPUTS, in its order, typed by its kind (a file
    is a local path), with its default: the inputs are declared once, in the table."""
    annotations = {}
    for name, spec in TRAIN_INPUTS.items():
        kind = _TYPES[spec.kind]
        if name in _REQUIRED:
            annotations[name] = kind
            continue
        annotations[name] = kind if spec.default is not None else kind | None
        setattr(cls, name, spec.default)
    cls.__annotations__ = annotations
    return cls


@dataclass(frozen=True)
@_table_fields
class TrainRequest:
    """One training's inputs, checked: a field for each input of TRAIN_INPUTS (`input_images`
    is required, every other has the table's default). `input_images` and
    `resume_from_checkpoint` are local paths by now (the Cog layer or the server brought them
    here). `caption_prefix` at its default follows `token_string`."""

    def __post_init__(self):
        if self.caption_prefix == DEFAULT_PREFIX and self.token_string != DEFAULT_TOKEN:
            prefix = DEFAULT_PREFIX.replace(DEFAULT_TOKEN, self.token_string)
            object.__setattr__(self, "caption_prefix", prefix)

    def describe(self) -> dict[str, Any]:
        """The inputs that decide the trained weights (what a checkpoint must match)."""
        skip = {"input_images", "resume_from_checkpoint", "verbose", "checkpointing_steps", "name"}
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }


def check_train_request(req: TrainRequest) -> None:
    """The rules the schema cannot say; InputError names the input and the fix."""
    for name, spec in TRAIN_INPUTS.items():
        _check_value(name, spec, getattr(req, name))
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
    if req.name is not None:
        check_name(req.name)


def _check_value(name: str, spec: InputSpec, value: Any) -> None:
    """The table's rule for one input: its bounds, choices and length."""
    if spec.choices is not None:
        check_choice(name, value, spec.choices)
    if value is None:
        return
    if spec.kind in ("integer", "number"):
        check_range(name, value, spec.ge, spec.le)
    if spec.max_length is not None and len(value) > spec.max_length:
        words = {"limit": spec.max_length, "count": len(value)}
        template = "{field} has {count} characters; the limit is {limit}"
        raise field_error(template, name, value, words=words)


def check_name(name: str) -> None:
    """`name` names files in the web UIs' folders: one plain file name on every system."""
    if not NAME_WORD.fullmatch(name) or RESERVED_NAMES.fullmatch(name):
        raise field_error(
            "{field} is not a file name the web UIs can share: use letters, digits, '-', '_' "
            "and '.' (at most 100, starting with a letter or digit, not ending with '.'; not "
            "a device name such as CON, nor embeddings), such as my-dog-v1",
            "name",
            name,
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
