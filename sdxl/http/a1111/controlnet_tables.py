"""The ControlNet extension's tables (Mikubill/sd-webui-controlnet): the preprocessors this
server runs under the extension's names and sliders, its resize and control modes, the union
model's control types, and which ControlNetUnit fields are honoured, harmless, or taken only
at their default (`sdxl.http.a1111.controlnet` reads units by them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdxl.config import IP_ADAPTER_MODELS


@dataclass(frozen=True)
class Module:
    """One of the extension's preprocessors this server runs (name, UI label, our maker)."""

    name: str
    label: str
    maker: str  # sdxl.config.CONTROL_PREPROCESSORS
    sliders: tuple[dict, ...]


RESOLUTION = {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}
CANNY_LOW = {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1}
CANNY_HIGH = {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1}
# scripts/preprocessor/model_free_preprocessors.py (none, canny) and legacy/preprocessor_compiled
# .py (depth: name "depth", label "depth_midas"; depth_anything, depth_anything_v2): the depth
# modules all run this server's depth model (annotators/depth/).
MODULES = (
    Module("none", "none", "none", (RESOLUTION,)),
    Module("canny", "canny", "canny", (RESOLUTION, CANNY_LOW, CANNY_HIGH)),
    Module("depth", "depth_midas", "depth", (RESOLUTION,)),
    Module("depth_anything", "depth_anything", "depth", (RESOLUTION,)),
    Module("depth_anything_v2", "depth_anything_v2", "depth", (RESOLUTION,)),
)
BY_NAME = {key: m for m in MODULES for key in (m.name, m.label)}
# The extension's IP-Adapter modules this server runs (its ViT-H encoder): the legacy
# preprocessors ip-adapter_clip_sd15 (label ip-adapter_clip_h) and ip-adapter_clip_sdxl_plus_vith
# (legacy/preprocessor_compiled.py; a Resolution slider, as the extension lists it), and
# ip-adapter-auto (preprocessor/ip_adapter_auto.py: the module of the model's preset).
IP_MODULES = (
    Module("ip-adapter-auto", "ip-adapter-auto", "ip_adapter", (RESOLUTION,)),
    Module("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip_adapter", (RESOLUTION,)),
    Module("ip-adapter_clip_sdxl_plus_vith", "ip-adapter_clip_sdxl_plus_vith", "ip_adapter",
           (RESOLUTION,)),
)  # fmt: skip
IP_BY_NAME = {key: m for m in IP_MODULES for key in (m.name, m.label)}
# The extension's other IP-Adapter modules, refused by name: the ViT-bigG encoder (its
# ip-adapter_clip_sdxl, label ip-adapter_clip_g) and the insightface / PuLID ones.
IP_REFUSED = {
    "ip-adapter_clip_sdxl": "the ViT-bigG image encoder is not on this server",
    "ip-adapter_clip_g": "the ViT-bigG image encoder is not on this server",
    "ip-adapter_face_id": "insightface is not on this server",
    "ip-adapter_face_id_plus": "insightface is not on this server",
    "ip-adapter_pulid": "PuLID is not on this server",
}
# Preprocessor.sorting_priority where it is not 0 (the module list's order).
PRIORITY = {"canny": 100, "depth": 100, "ip-adapter-auto": 1000, "ip-adapter_clip_sd15": 100}
# scripts/enums.py ResizeMode (and resize_mode_aliases, resize_mode_from_value: 3 is resize)
RESIZE_MODES = {
    "Just Resize": "resize",
    "Crop and Resize": "crop",
    "Resize and Fill": "fill",
    "Inner Fit (Scale to Fit)": "crop",
    "Outer Fit (Shrink to Fit)": "fill",
    "Scale to Fit (Inner Fit)": "crop",
    "Envelope (Outer Fit)": "fill",
    0: "resize",
    1: "crop",
    2: "fill",
    3: "resize",
}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
# scripts/enums.py ControlNetUnionControlType values -> the union model's types here
UNION_TYPES = {
    "OpenPose": "union_openpose",
    "Depth": "union_depth",
    "Soft Edge": "union_softedge",
    "Hard Edge": "union_canny",
    "Normal Map": "union_normal",
    "Segmentation": "union_segment",
    "Tile": "union_tile",
}
# Fields that never change this server's image, at any value: UI state, batch folders, the
# weights' placement (low_vram), a PuLID mode (no PuLID model here).
HARMLESS = (
    "is_ui", "input_mode", "output_dir", "loopback", "low_vram", "pulid_mode",
    "inpaint_crop_input_image", "batch_mask_dir", "animatediff_batch", "batch_modifiers",
    "batch_image_files", "batch_keyframe_idx", "batch_images",
)  # fmt: skip
# Fields honoured only at the extension's default (anything else is a 422).
AT_DEFAULT = {
    "advanced_weighting": None,
    "effective_region_mask": None,
    "ipadapter_input": None,
    "mask": None,
    "mask_image": None,
    # the units steer both passes of the hires fix (scripts/enums.py HiResFixOption.BOTH)
    "hr_option": "Both",
}
LEGACY = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image"}
HONOURED = (
    "enabled", "module", "model", "weight", "image", "resize_mode", "processor_res",
    "threshold_a", "threshold_b", "guidance_start", "guidance_end", "pixel_perfect",
    "control_mode", "union_control_type", "save_detected_map",
)  # fmt: skip
KNOWN = frozenset((*HONOURED, *HARMLESS, *AT_DEFAULT))


def offered_modules(has_depth: bool) -> list[Module]:
    return [m for m in MODULES if has_depth or m.maker != "depth"]


def ip_model_names() -> dict[str, str]:
    """The IP-Adapters as the extension names them (their file's stem) -> our short name."""
    return {file.removesuffix(".safetensors"): short for short, file in IP_ADAPTER_MODELS.items()}


def is_ip_unit(arg: Mapping) -> bool:
    """Whether a unit is an IP-Adapter unit: its module is one of the extension's IP-Adapter
    modules, or its model names an IP-Adapter (ours, or another of h94's)."""
    module, model = arg.get("module"), arg.get("model")
    if isinstance(module, str) and (module in IP_BY_NAME or module in IP_REFUSED):
        return True
    name = model.split("[")[0].strip().lower() if isinstance(model, str) else ""
    return name.startswith(("ip-adapter", "ip_adapter", "ipadapter"))
