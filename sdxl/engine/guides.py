"""What steers a job besides its prompt, for the runner: ControlNet units (their control maps,
made when the job is prepared; their control models, resident) and an IP-Adapter (installed in
the job's UNet for the job only). `prepare` runs on a preparation thread; `applied` on the GPU
thread, under the engine's lock, and puts everything back when the job ends."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sdxl.control.ip_adapter import ResidentIpAdapters
from sdxl.control.ip_library import IpAdapterLibrary
from sdxl.control.library import ControlLibrary
from sdxl.control.maps import control_map
from sdxl.control.resident import ResidentControls
from sdxl.errors import InputError
from sdxl.generate.plan import Generation


@dataclass
class Applied:
    """The job's guides on the device: its control models and its installed IP-Adapter."""

    controlnets: list | None
    image_prompt: Any  # sdxl.control.ip_adapter.ImagePrompt, or None


class Guides:
    def __init__(self, models, settings, device_tasks=None):
        self.models = models
        self.device_tasks = device_tasks  # the depth model's forward runs there
        self.control_library = ControlLibrary(models.weights_dir)
        self.controls = ResidentControls(
            self.control_library,
            models.device,
            models.dtype,
            settings.max_resident_controlnets,
            channels_last=models.channels_last,
            fuse_qkv=bool(models.fused),
        )
        self.ip_library = IpAdapterLibrary(models.weights_dir)
        self.ip_adapters = ResidentIpAdapters(
            self.ip_library, models.device, models.dtype, settings.max_resident_ip_adapters
        )
        self._depth = None  # sdxl.control.depth.DepthEstimator, made on first use

    # ---- a preparation thread -----------------------------------------------------------
    def prepare(self, generation: Generation) -> Generation:
        """`generation` with its control maps; InputError when a model it needs is not on
        this server or its IP-Adapter's block scales do not fit the UNet."""
        request = generation.request
        if request.ip_adapter_images:
            self.ip_library.check(request.ip_adapter_model)
            check_block_scales(self.models.base.unet, request.ip_adapter_block_scales)
        if not request.controls:
            return generation
        units = tuple(self._resolved(unit) for unit in request.controls)
        width, height = generation.width, generation.height
        maps = tuple(self.control_map(unit, width, height) for unit in units)
        request = dataclasses.replace(request, controls=units)
        return dataclasses.replace(generation, request=request, control_maps=maps)

    def _resolved(self, unit):
        """`unit` naming the model folder it runs on (read from the weights folder here, on a
        preparation thread, so the GPU thread finds a resident model by name)."""
        model = self.control_library.resolve(unit)
        self.control_library.check_preprocessor(unit)
        return dataclasses.replace(unit, model=model.name)

    def control_map(self, unit, width: int, height: int):
        """`unit`'s control map at width x height (CPU work; a depth map runs the depth model
        on the device between two steps of the job there, `device_tasks`)."""
        return control_map(unit, unit.image, width, height, self._estimate_depth)

    def _estimate_depth(self, image):
        from sdxl.control.depth import DepthEstimator

        def estimate():
            if self._depth is None:
                folder = self.control_library.depth_folder
                self._depth = DepthEstimator(folder, self.models.device, self.models.dtype)
            return self._depth.estimate(image)

        return estimate() if self.device_tasks is None else self.device_tasks.call(estimate)

    # ---- the GPU thread -----------------------------------------------------------------
    @contextmanager
    def applied(self, request, unet) -> Iterator[Applied]:
        """The request's control models, and its IP-Adapter in `unet` (the job's UNet), for
        the block; the UNet as it was and the control models within their bound after it."""
        try:
            controlnets = self.controls.for_units(request.controls) or None
            with self.ip_adapters.installed(unet, request) as image_prompt:
                yield Applied(controlnets, image_prompt)
        finally:
            self.controls.trim()


def check_block_scales(unet, scales: dict | None) -> None:
    """IP-Adapter's per-block scales name blocks the UNet has (diffusers' own expansion, which
    reads only the UNet's layout)."""
    if scales is None:
        return
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

    try:
        _maybe_expand_lora_scales(unet, [scales], default_scale=0.0)
    except ValueError as err:
        raise InputError(
            f"ip_adapter_block_scales does not fit this UNet ({err}); name its blocks as "
            "diffusers does (down: block_1, block_2; up: block_0, block_1 in SDXL)",
            "ip_adapter_block_scales",
        ) from None
