"""The images of OpenAI's answers: the jobs of `n` images, their encoding (flagged ones left
out), the answer's fields, and how they are sent (`response_format`: OpenAI's default is `url`
for its DALL·E models, `b64_json` for the others)."""

from __future__ import annotations

import time

from sdxl.http.errors import ApiError
from sdxl.http.openai.fields import JOB_IMAGES
from sdxl.images.outputs import AllFlagged, OutputImage, encode_outputs
from sdxl.inputs.request import in_batches
from sdxl.inputs.surface import Checked

REPORTED_QUALITY = {"auto": "medium", "standard": "medium", "hd": "high"}
# Model names OpenAI answers with `url` when no response_format is sent (LibreChat's DALL·E 3
# tool sends none and downloads data[0].url); every other name gets b64_json.
URL_BY_DEFAULT = ("dall-e-2", "dall-e-3")


class ModerationBlocked(ApiError):
    """Every image was flagged by the safety checker (OpenAI's moderation refusal)."""

    status = 400
    retry = False
    code = "moderation_blocked"


def job_requests(found: Checked) -> list:
    """The jobs of `n` images: at most JOB_IMAGES each, the seeds continuing."""
    n = found.given.get("n", 1)
    sizes = [min(JOB_IMAGES, n - start) for start in range(0, n, JOB_IMAGES)]
    return in_batches(found.request(), sizes)


def response_format(found: Checked) -> str:
    """`b64_json` or `url`: the one sent, else OpenAI's default for the model named."""
    sent = found.given.get("response_format")
    if sent is not None:
        return sent
    return "url" if found.given.get("model") in URL_BY_DEFAULT else "b64_json"


def preview_every(found: Checked) -> int:
    partial = found.given.get("partial_images", 0)
    steps = found.request().num_inference_steps
    return max(1, steps // (partial + 1)) if partial else 0


def encoded(results, found: Checked) -> list[OutputImage]:
    fmt, quality = found.output("output_format"), found.output("output_quality")
    outputs: list[OutputImage] = []
    for result in results:
        try:
            outputs += encode_outputs(result, fmt, quality, flagged="drop")
        except AllFlagged:
            continue
    if not outputs:
        raise ModerationBlocked(
            "every image was flagged by the safety checker; try another prompt or seed, or "
            "set disable_safety_checker"
        )
    return outputs


def response_body(found: Checked, data: list[dict], size: tuple[int, int]) -> dict:
    quality = found.given.get("quality", "auto")
    return {
        "created": int(time.time()),
        "data": data,
        "size": f"{size[0]}x{size[1]}",
        "quality": REPORTED_QUALITY.get(quality, quality),
        "output_format": found.given.get("output_format", "png"),
        "background": "opaque",
    }
