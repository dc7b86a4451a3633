"""All three phases at once, in the calling thread, for a request without trained weights whose
images are decoded or given as bytes: the tests' and benchmarks' way in. The engine
(`sdxl.engine`) runs the same phases apart, adding trained weights, image downloads,
cancellation and deadlines."""

from __future__ import annotations

import dataclasses

from sdxl.generate.denoise import StepCallback, denoise
from sdxl.generate.finish import finish
from sdxl.generate.plan import plan_generation
from sdxl.images.inputs import ImageSource, load
from sdxl.images.result import Result
from sdxl.inputs.model_rules import check_request
from sdxl.inputs.request import Request


def generate(models, req: Request, on_step: StepCallback | None = None) -> Result:
    if not req.adapters.empty:
        raise ValueError("requests with trained weights run through sdxl.engine.Engine")
    check_request(req)
    decoded = {
        name: load(source)
        for name in ("image", "mask")
        if isinstance(source := getattr(req, name), ImageSource)
    }
    generation = plan_generation(models, dataclasses.replace(req, **decoded))
    return finish(models, generation, denoise(models, generation, on_step=on_step))
