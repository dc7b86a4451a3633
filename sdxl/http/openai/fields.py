"""OpenAI's Images API in the engine's terms: its fields, and every predictor input as an extra
field under its own name (as Open WebUI's IMAGES_OPENAI_API_PARAMS and LocalAI's clients send
negative_prompt, seed, steps...). Validity is decided by `sdxl.inputs.rules`.

- `size`: "WxH" within the product's bounds; "auto" is 1024x1024 (an edit: the image's size).
- `quality`: a number of steps (QUALITY_STEPS); an explicit num_inference_steps wins.
- `n`: 1-10 images, run as jobs of at most 4 (the predictor's batch) with the seeds continuing.
- `output_compression`: 0-100, onto the encoder's quality 1-100 (100 is the least loss).
- `background`: SDXL's images are opaque; "transparent" is refused.
- `style`, `moderation`, `user`, `safety_identifier`, `input_fidelity`: accepted, not used.
- Prompts are read in the language SDXL_OPENAI_PROMPT_SYNTAX names (`plain`, the default, or
  `a1111`), a server setting: OpenAI's clients have no field for it.
"""

from __future__ import annotations

from sdxl.config import COG_INPUTS, MAX_SIDE, MIN_SIDE
from sdxl.errors import InputError
from sdxl.http.wire import Wire
from sdxl.inputs.control_units import FLAT_INPUTS
from sdxl.inputs.rules import check_range
from sdxl.inputs.surface import Field, Surface
from sdxl.settings.specs import read_one
from sdxl.settings.tree import HttpGroup

MAX_N = 10
JOB_IMAGES = 4  # the predictor's num_outputs bound: larger n runs as several jobs
# OpenAI's quality names -> denoising steps (the K_EULER default scheduler).
QUALITY_STEPS = {
    "low": 15,
    "medium": 25,
    "auto": 30,
    "standard": 30,
    "high": 40,
    "hd": 50,
    "xhigh": 50,
    "max": 60,
}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# Predictor inputs that OpenAI's own fields stand for: not accepted as extras.
OWN = ("prompt", "image", "mask", "num_outputs", "width", "height", "aspect_ratio")
OWN += ("output_format", "output_quality")
SERVER_SET = ("prompt_syntax",)  # the server's setting, not the request's
# Not offered on this API (docs/apis.md): the hires fix's second pass, ControlNet (its units,
# Canny's thresholds, the maps returned: OpenAI's answer has no place for maps) and IP-Adapter.
HIRES_INPUTS = ("hires_scale", "hires_upscaler", "hires_steps", "hires_strength")
CONTROL_INPUTS = (*(name for name in COG_INPUTS if name in FLAT_INPUTS), "return_control_maps")
# IP-Adapter: its reference image has no field among OpenAI's (docs/apis.md)
IP_ADAPTER_INPUTS = tuple(name for name in COG_INPUTS if name.startswith("ip_adapter_"))
NOT_OFFERED = HIRES_INPUTS + CONTROL_INPUTS + IP_ADAPTER_INPUTS
EXTRAS = tuple(
    Field(name, name) for name in COG_INPUTS if name not in (*OWN, *SERVER_SET, *NOT_OFFERED)
)
# How this API reads prompts: read once, at start (tests set the attribute).
PROMPT_SYNTAX = read_one(HttpGroup, "openai_prompt_syntax")  # SDXL_OPENAI_PROMPT_SYNTAX


def _fields(edit: bool) -> tuple[Field, ...]:
    text = {"kind": "string"}
    fields = [
        Field("prompt", "prompt", required=True),
        Field("model", None, **text),
        Field("n", None, kind="integer", default=1, ge=1, le=MAX_N),
        Field("size", None, **text, default="auto"),
        Field("quality", None, **text, default="auto", choices=dict.fromkeys(QUALITY_STEPS)),
        Field(
            "response_format",
            None,
            **text,
            default="b64_json",
            choices=dict.fromkeys(("b64_json", "url")),
        ),
        Field("output_format", "output_format", default="png", choices=OUTPUT_FORMATS),
        Field(
            "output_compression",
            "output_quality",
            kind="integer",
            default=100,
            ge=0,
            le=100,
            to_input=lambda compression: max(1, compression),
        ),
        Field(
            "background",
            None,
            **text,
            default="auto",
            choices=dict.fromkeys(("auto", "opaque", "transparent")),
        ),
        Field("user", None, **text),
        Field("safety_identifier", None, **text),
        Field("stream", None, kind="boolean", default=False),
        Field("partial_images", None, kind="integer", default=0, ge=0, le=3),
    ]
    if edit:  # the form's files: the image, and a mask whose transparent pixels repaint
        fields += [
            Field("image", "image", required=True),
            Field("mask", "mask", mask="transparent"),
            Field("input_fidelity", None, **text),
        ]
    else:
        fields += [Field("style", None, **text), Field("moderation", None, **text)]
    return (*fields, *EXTRAS)


def size_of(text: str, auto: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of `size`: "auto" is `auto`; else "WxH" within the product's bounds."""
    if text == "auto":
        return auto
    width, x, height = text.lower().partition("x")
    if not (x and width.isascii() and width.isdigit() and height.isascii() and height.isdigit()):
        raise InputError(
            "{field} is not a size; send WIDTHxHEIGHT (such as 1024x1024) or auto",
            "size",
            text,
            values={"size": text},
        )
    for name, value in (("width", int(width)), ("height", int(height))):
        try:
            check_range(name, value, MIN_SIDE, MAX_SIDE)
        except InputError as err:
            raise InputError(f"size={text!r}: {err}", "size", text) from None
    return int(width), int(height)


def _assemble(values: dict, given: set, auto: tuple[int, int]) -> dict:
    if values["background"] == "transparent":
        raise InputError(
            "background='transparent' cannot be made: SDXL's images are opaque; send opaque or "
            "auto",
            "background",
        )
    out: dict = {}
    out["width"], out["height"] = size_of(values["size"], auto)
    if "num_inference_steps" not in given:
        out["num_inference_steps"] = QUALITY_STEPS[values["quality"]]
    out["num_outputs"] = min(values["n"], JOB_IMAGES)
    out["prompt_syntax"] = PROMPT_SYNTAX
    return out


def surface(edit: bool, auto: tuple[int, int] = (1024, 1024)) -> Surface:
    """Generations (JSON) or edits (a multipart form, whose fields come as text)."""
    return Surface(
        fields=_fields(edit),
        null_is_unset=True,
        assemble=lambda values, given: _assemble(values, given, auto),
        part_of={"width": "size", "height": "size", "num_outputs": "n"},
    )


GENERATIONS = surface(edit=False)
WIRES = {False: Wire(), True: Wire(form_text=True)}  # by edit: an edit is a multipart form
