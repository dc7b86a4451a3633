"""AUTOMATIC1111's txt2img and img2img bodies in the engine's terms, with A1111's own defaults
(512x512, 50 steps, CFG 7, seed -1 random, sampler "Euler"), since its callers rely on them.

Every field A1111's API has is honoured, accepted and ignored (where ignoring changes nothing a
caller relies on), or refused with the reason (IGNORED and REFUSED below; the README has the
table). Fields A1111 does not know are ignored, as A1111 ignores them. Validity is decided by
`sdxl.inputs.rules`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sdxl.config import INPUTS, MAX_SEED, MAX_SIDE, STYLES
from sdxl.errors import InputError, Naming
from sdxl.http.a1111.controlnet import Models, read_units
from sdxl.http.a1111.ip_units import read_ip_units
from sdxl.http.wire import Wire
from sdxl.images.inputs import source_from_text
from sdxl.inputs.a1111_samplers import resolve
from sdxl.inputs.rules import check_choice
from sdxl.inputs.surface import Field, Surface

MAX_N_ITER = 100  # batches of one request (SDXL_MAX_OUTPUTS bounds batch_size x n_iter)

# Fields read and not used: what they change, SDXL through this engine does not have, or does
# the same way whatever they say (each is in the README's table with its reason).
IGNORED = (
    "subseed",
    "seed_resize_from_h",
    "seed_resize_from_w",
    "eta",
    "s_min_uncond",
    "s_churn",
    "s_tmax",
    "s_tmin",
    "s_noise",
    "do_not_save_samples",
    "do_not_save_grid",
    "save_images",
    "disable_extra_networks",
    "comments",
    "firstpass_image",
    "force_task_id",
    "infotext",
    "script_args",
    "firstphase_width",
    "firstphase_height",
    "resize_mode",
    "mask_blur",
    "mask_blur_x",
    "mask_blur_y",
    "mask_round",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "image_cfg_scale",
    "initial_noise_multiplier",
    "latent_mask",
    "include_init_images",
)
# img2img has no hires fix in A1111: its hires fields are read and not used there.
HIRES_FIELDS = (
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
)
SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = (
    "Use same checkpoint",
    "Use same sampler",
    "Use same scheduler",
)
# The engine's hires inputs and their values without a second pass (enable_hr false).
HIRES_OFF = {
    name: None if name in ("hires_scale", "hires_width", "hires_height") else INPUTS[name].default
    for name in INPUTS
    if name.startswith("hires_")
}


def _refused(field: str, value, why: str) -> InputError:
    return InputError(f"{field}={value!r} is not available here: {why}", field, value)


def _seed(seed: int) -> int | None:
    return None if seed == -1 else seed


def _size(side: int) -> int | None:
    return side or None  # hr_resize_x / hr_resize_y 0: from hr_scale (or the other side)


def _text(text: str) -> str | None:
    return text or None  # hr_prompt "": the first pass's prompt


def _hires_fields() -> list[Field]:
    """txt2img's hires fix, A1111's fields and defaults; used only with enable_hr (`_hires`)."""
    return [
        Field("hr_scale", "hires_scale", default=2.0),
        Field("hr_resize_x", "hires_width", default=0, ge=0, le=MAX_SIDE, to_input=_size),
        Field("hr_resize_y", "hires_height", default=0, ge=0, le=MAX_SIDE, to_input=_size),
        # Any name: the installed upscalers are the engine's (checked by the route)
        Field("hr_upscaler", None, kind="string", default="Latent"),
        Field("hr_second_pass_steps", "hires_steps", default=0),
        Field("denoising_strength", "hires_strength", default=0.75),
        Field("hr_sampler_name", None, kind="string"),
        Field("hr_scheduler", None, kind="string"),
        Field("hr_prompt", "hires_prompt", default="", to_input=_text),
        Field("hr_negative_prompt", "hires_negative_prompt", default="", to_input=_text),
        Field("hr_checkpoint_name", None, kind="string"),
    ]


def _fields(img2img: bool) -> tuple[Field, ...]:
    fields = [
        Field("prompt", "prompt", default=""),
        Field("negative_prompt", "negative_prompt", default=""),
        Field("styles", None, kind="strings", default=[]),
        Field("seed", "seed", default=-1, ge=-1, le=MAX_SEED, to_input=_seed),
        Field("subseed_strength", None, kind="number", default=0.0, ge=0, le=1),
        Field("sampler_name", None, kind="string"),
        Field("sampler_index", None, kind="string", default="Euler"),
        Field("scheduler", None, kind="string", default="automatic"),
        Field("batch_size", "num_outputs", default=1),
        Field("n_iter", None, kind="integer", default=1, ge=1, le=MAX_N_ITER),
        Field("steps", "num_inference_steps", default=50),
        Field("cfg_scale", "guidance_scale", default=7.0),
        Field("width", "width", default=512),
        Field("height", "height", default=512),
        Field("restore_faces", None, kind="boolean"),
        Field("tiling", None, kind="boolean"),
        Field("enable_hr", None, kind="boolean", default=False),
        Field("refiner_checkpoint", None, kind="string"),
        Field("refiner_switch_at", None, kind="number", default=0.8, ge=0, le=1),
        Field("script_name", None, kind="string"),
        Field("alwayson_scripts", None, kind="object", default={}),
        Field("send_images", None, kind="boolean", default=True),
        # Read by options.py (sdxl.http.a1111.settings: each key honoured or refused)
        Field("override_settings", None, kind="object", default={}),
        Field("override_settings_restore_afterwards", None, kind="boolean", default=True),
        # Extensions of this server: the predictor's inputs that A1111 has no field for.
        Field("disable_safety_checker", "disable_safety_checker"),
        Field("apply_watermark", "apply_watermark"),
        Field("cache_interval", "cache_interval"),
    ]
    ignored = IGNORED
    if img2img:
        fields += [
            Field("denoising_strength", "prompt_strength", default=0.75),
            Field("init_images", None, kind="strings", required=True),
            Field("mask", "mask", image_forms=("data", "base64"), mask="opaque"),
            Field("inpainting_mask_invert", None, kind="integer", default=0, ge=0, le=1),
        ]
        ignored += HIRES_FIELDS
    else:
        fields += _hires_fields()
    fields += [Field(name, None, kind="any") for name in ignored]  # read, not used
    return tuple(fields)


def sampler_of(name: str, schedule: str) -> tuple[str, str, str]:
    """(the engine's scheduler, A1111's sampler name, its schedule label) for A1111's names. A
    legacy name may carry its schedule ("DPM++ 2M Karras"). A sampler or schedule this server
    cannot run is a 422 listing what it can (`sdxl.inputs.a1111_samplers`)."""
    found = resolve(name, schedule)
    return found.scheduler, found.sampler, found.schedule


HIRES_NAMES = Naming({"sampler_name": "hr_sampler_name", "scheduler": "hr_scheduler"})


def chosen(name: str | None, same: str) -> str | None:
    return None if not name or name == same else name


def _hires(values: dict) -> dict:
    """The second pass's engine inputs: A1111's hires fields with enable_hr (its sampler and
    schedule resolved as the first pass's are); none without, as A1111 ignores them then."""
    if not values["enable_hr"]:
        return dict(HIRES_OFF)
    checkpoint = values.get("hr_checkpoint_name")
    if chosen(checkpoint, SAME_CHECKPOINT):
        why = f"the second pass runs the first pass's model; leave it empty or {SAME_CHECKPOINT!r}"
        raise _refused("hr_checkpoint_name", checkpoint, why)
    out = {"hires_upscaler": values["hr_upscaler"]}
    sampler = chosen(values.get("hr_sampler_name"), SAME_SAMPLER)
    schedule = chosen(values.get("hr_scheduler"), SAME_SCHEDULER)
    if sampler or schedule:
        first = values.get("sampler_name") or values["sampler_index"]
        try:
            found = resolve(sampler or first, schedule or values["scheduler"])
        except InputError as err:  # in the hires fields' names
            named = HIRES_NAMES.name(err.field)
            raise InputError(err.render(HIRES_NAMES), named, err.value) from None
        out["hires_scheduler"] = found.scheduler
        out["hires_timestep_spacing"] = found.timestep_spacing
    return out


def _assemble(values: dict, given: set, models: Callable[[], Models]) -> dict:
    img2img = "init_images" in values
    for field, why in (
        ("restore_faces", "there is no face restoration model"),
        ("tiling", "SDXL's UNet does not tile"),
    ):
        if values.get(field):
            raise _refused(field, True, why)
    if img2img and values.get("enable_hr"):
        why = "img2img has no hires fix (txt2img has); ask for the size you want"
        raise _refused("enable_hr", True, why)
    if values.get("script_name"):
        raise _refused("script_name", values["script_name"], "this server has no scripts")
    if values["subseed_strength"]:
        raise _refused("subseed_strength", values["subseed_strength"], "no variation seeds")
    out: dict = {} if img2img else _hires(values)
    styles = values["styles"]
    if len(styles) > 1:
        raise _refused("styles", styles, "one style at a time")
    if styles:
        check_choice("styles", styles[0], STYLES)
        out["style_selected"] = styles[0]
    found = resolve(values.get("sampler_name") or values["sampler_index"], values["scheduler"])
    out["scheduler"] = found.scheduler
    if found.timestep_spacing is not None:  # where A1111's sigmas need another than the model's
        out["timestep_spacing"] = found.timestep_spacing
    if values.get("refiner_checkpoint"):
        out["refine"] = "expert_ensemble_refiner"
        out["high_noise_frac"] = values["refiner_switch_at"]
    if "init_images" in values:
        images = values["init_images"]
        if len(images) != 1:
            raise _refused("init_images", f"{len(images)} images", "send one init image")
        out["image"] = source_from_text(images[0], "image", ("data", "base64"))
    if values.get("inpainting_mask_invert") and values.get("mask") is not None:
        out["mask"] = dataclasses.replace(values["mask"], invert=True)
    return {**out, **_controls(values, models)}


def _controls(values: dict, models: Callable[[], Models]) -> dict:
    """The ControlNet extension's units (sdxl.http.a1111.controlnet), their maps returned
    after the images as the extension appends them (unless no unit saves its map), and its
    IP-Adapter units (sdxl.http.a1111.ip_units)."""
    scripts = values["alwayson_scripts"]
    if not scripts:
        return {}
    init = values["init_images"][0] if "init_images" in values else None
    found = models()
    units, keep = read_units(scripts, found, init)
    ip = read_ip_units(scripts, found, init)
    return {"controls": tuple(units), "return_control_maps": any(keep), **ip}


def no_models() -> Models:
    """A surface read without a server: no control models (every unit's model is a 422)."""
    return Models({}, has_depth=False)


def surface(img2img: bool, models: Callable[[], Models] = no_models) -> Surface:
    """A1111's txt2img or img2img body; `models` says which control models the server has."""
    return Surface(
        fields=_fields(img2img),
        null_is_unset=True,
        ignore_unknown=True,
        fixed={"output_format": "png", "prompt_syntax": "a1111"},  # A1111's prompt language
        assemble=lambda values, given: _assemble(values, given, models),
    )


WIRE = Wire(numbers_from_strings=True)  # A1111's pydantic models read "20" as 20
TXT2IMG = surface(img2img=False)
IMG2IMG = surface(img2img=True)
