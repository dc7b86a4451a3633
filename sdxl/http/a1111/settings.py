"""AUTOMATIC1111's settings a caller may change, for one request (`override_settings`) or for
its later requests (`POST /sdapi/v1/options`, kept per caller by `options.OptionsApi`). Every
key is honoured, accepted because its value is the one this server has, or refused with a 422
that names it; none is ignored:

- `sd_model_checkpoint`: the served model or one of the caller's trained ones (options.py);
- `CLIP_stop_at_last_layers` n (1..12, A1111's slider): the text encoders' hidden states n - 1
  layers before SDXL's usual penultimate layer (diffusers' `clip_skip` = n - 1; 1 is SDXL's
  usual encoding, unchanged). A1111 itself applies this setting to SDXL only with its
  `sdxl_clip_l_skip` option (and then to the CLIP-L encoder alone); here it applies to both
  text encoders, as diffusers' clip_skip does, for the prompt and the negative prompt;
- `sd_vae`: `Automatic` or `None` (the model's own VAE), or a name `GET /sdapi/v1/sd-vae`
  lists. The server has one VAE, the model's, listed under A1111's name for a VAE shipped
  beside a checkpoint (`<model>.vae.safetensors`), so every choice decodes with it;
- `forge_additional_modules` (SD Forge's list of module files, which SillyTavern sends with
  its VAE choice): each a name `sd_vae` accepts, so it changes nothing here either;
- the other options `GET /sdapi/v1/options` answers: accepted with the value it answers, a
  422 with another (they cannot change here).
"""

from __future__ import annotations

from collections.abc import Mapping

from sdxl.http.errors import InvalidRequest
from sdxl.inputs.surface import Problem

CHECKPOINT = "sd_model_checkpoint"
CLIP_LAYERS = "CLIP_stop_at_last_layers"
VAE = "sd_vae"
MODULES = "forge_additional_modules"
HONOURED = (CHECKPOINT, CLIP_LAYERS, VAE)
CHECKED = (*HONOURED, MODULES)  # keys accepted whatever the options say
CLIP_LAYERS_RANGE = (1, 12)  # A1111's slider
MODEL_VAE = ("Automatic", "None")  # A1111's names for the checkpoint's own VAE


def vae_names(model_name: str) -> list[str]:
    """The VAEs `sd_vae` may name besides Automatic/None: the model's own, as A1111 names a
    VAE file beside a checkpoint."""
    return [f"{model_name}.vae.safetensors"]


def vae_listing(model_name: str) -> list[dict]:
    """A1111's `GET /sdapi/v1/sd-vae`: each VAE's name and a virtual path (no server path)."""
    return [
        {"model_name": name, "filename": f"models/VAE/{name}"} for name in vae_names(model_name)
    ]


def settings_problems(
    wanted: Mapping, fixed: Mapping, model_name: str, where: str
) -> list[Problem]:
    """What is wrong with `wanted` (override_settings, or a POST /options body), the checkpoint
    left to options.py. `fixed`: the options that cannot change, with their values."""
    problems = []
    for key, value in wanted.items():
        if key == CHECKPOINT or value is None:  # null: not set (JSON's undefined)
            continue
        if key == CLIP_LAYERS:
            problems += _clip_layers_problems(value, where)
        elif key == VAE:
            problems += _vae_problems(value, model_name, where)
        elif key == MODULES:
            for item in value if isinstance(value, list) else [value]:
                problems += _vae_problems(item, model_name, where, key)
        elif key in fixed:
            if value != fixed[key]:
                message = f"{key}={value!r} cannot be changed on this server (it is {fixed[key]!r})"
                problems.append(Problem(f"{where}{key}", message))
        else:
            accepted = ", ".join([*CHECKED, *(k for k in fixed if k not in CHECKED)])
            message = f"{key} is not a setting this server has; the settings are: {accepted}"
            problems.append(Problem(f"{where}{key}", message))
    return problems


def whole_layers(value) -> int | None:
    """A CLIP_stop_at_last_layers value as a whole number (2 or 2.0), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if float(value).is_integer() else None


def _clip_layers_problems(value, where: str) -> list[Problem]:
    low, high = CLIP_LAYERS_RANGE
    layers = whole_layers(value)
    if layers is not None and low <= layers <= high:
        return []
    message = (
        f"{CLIP_LAYERS}={value!r} is not valid; use a whole number from {low} to {high} "
        f"({low}: SDXL's usual text encoding)"
    )
    return [Problem(f"{where}{CLIP_LAYERS}", message)]


def _vae_problems(value, model_name: str, where: str, key: str = VAE) -> list[Problem]:
    choices = [*MODEL_VAE, *vae_names(model_name)]
    if value in choices:
        return []
    message = f"{key}: {str(value)[:100]!r} is not a VAE this server has; choose one of: " + (
        ", ".join(choices)
    )
    return [Problem(f"{where}{key}", message)]


def override_settings(body: Mapping) -> dict:
    """The request's `override_settings` (an object; null or absent: none)."""
    found = body.get("override_settings")
    if found is None:
        return {}
    if not isinstance(found, dict):
        message = f"override_settings must be an object of settings, not {type(found).__name__}"
        raise InvalidRequest([Problem("override_settings", message)])
    return {key: value for key, value in found.items() if value is not None}


def clip_skip(settings: Mapping) -> int | None:
    """The engine's clip_skip for checked settings (None: SDXL's usual encoding)."""
    layers = whole_layers(settings.get(CLIP_LAYERS, 1))
    return None if layers == 1 else layers - 1
