"""The DataCrunch endpoint's ControlNet and IP-Adapter fields: the Replicate inputs under their
own names (`controlnet_1`..`controlnet_3` and their image, preprocessor, scale, start and end;
Canny's thresholds; `return_control_maps`; `ip_adapter_image`, `ip_adapter_model`,
`ip_adapter_scale`, `ip_adapter_block_scales`), extensions of this API. Images as `seed_image`
takes them: base64, raw or as a data URI. The units' rules are the engine's
(`sdxl.inputs.control_units`)."""

from __future__ import annotations

from sdxl.inputs.control_units import UNIT_COUNT
from sdxl.inputs.surface import Field

EXTENSION = "An extension of this API."
IMAGE_FORMS = ("data", "base64")  # as seed_image


def _unit_fields(number: int) -> tuple[Field, ...]:
    stem = f"controlnet_{number}"
    return (
        Field(
            stem,
            stem,
            description=f"ControlNet {number}: the control type (none: off; canny, depth, or "
            "the union model's union_<type>). " + EXTENSION,
        ),
        Field(
            f"{stem}_image",
            f"{stem}_image",
            nullable=True,
            image_forms=IMAGE_FORMS,
            description=f"ControlNet {number}'s control image, base64-encoded PNG, JPEG or "
            "WebP, raw or as a data URI; made into a control map by the preprocessor. " + EXTENSION,
        ),
        Field(
            f"{stem}_preprocessor",
            f"{stem}_preprocessor",
            nullable=True,
            description=f"What makes ControlNet {number}'s map of its image (canny, depth; "
            "none: the image is a map already; null: the type's own). " + EXTENSION,
        ),
        Field(
            f"{stem}_conditioning_scale",
            f"{stem}_conditioning_scale",
            description=f"How strongly ControlNet {number} steers (0-4). " + EXTENSION,
        ),
        Field(
            f"{stem}_start",
            f"{stem}_start",
            description=f"The fraction of the steps where ControlNet {number} starts. " + EXTENSION,
        ),
        Field(
            f"{stem}_end",
            f"{stem}_end",
            description=f"The fraction of the steps where ControlNet {number} ends (above "
            "start). " + EXTENSION,
        ),
    )


CONTROL_FIELDS = (
    *(field for number in range(1, UNIT_COUNT + 1) for field in _unit_fields(number)),
    Field(
        "canny_low_threshold",
        "canny_low_threshold",
        description="Canny's low hysteresis threshold, for every canny unit. " + EXTENSION,
    ),
    Field(
        "canny_high_threshold",
        "canny_high_threshold",
        description="Canny's high hysteresis threshold, for every canny unit. " + EXTENSION,
    ),
    Field(
        "return_control_maps",
        "return_control_maps",
        description="Return the control maps too, in `control_maps` (one per unit, in order). "
        + EXTENSION,
    ),
)
IP_ADAPTER_FIELDS = (
    Field(
        "ip_adapter_image",
        "ip_adapter_image",
        nullable=True,
        image_forms=IMAGE_FORMS,
        description="IP-Adapter's reference image, base64-encoded PNG, JPEG or WebP, raw or as "
        "a data URI: the output follows its style, subject or face. " + EXTENSION,
    ),
    Field(
        "ip_adapter_model",
        "ip_adapter_model",
        description="The IP-Adapter (vit-h, plus, plus-face; h94's SDXL ViT-H adapters). "
        + EXTENSION,
    ),
    Field(
        "ip_adapter_scale",
        "ip_adapter_scale",
        description="How strongly the reference image steers (0-1). " + EXTENSION,
    ),
    Field(
        "ip_adapter_block_scales",
        "ip_adapter_block_scales",
        nullable=True,
        description="Per-block scales as JSON, as diffusers' set_ip_adapter_scale takes them "
        '({"up": {"block_0": [0.0, 1.0, 0.0]}}); over ip_adapter_scale. ' + EXTENSION,
    ),
)
