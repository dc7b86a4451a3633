"""torch.compile for a fixed set of shapes (SDXL_COMPILE=1), and the warm-up in setup.

The UNets and the VAE decoder are compiled once, as fixed shapes (`dynamic=False`): the sizes
in SDXL_COMPILE_SHAPES, one image, classifier-free guidance on, and all three are warmed in
setup. A job of any other shape, or with trained weights (a LoRA changes the modules' graph),
runs the eager modules instead, so no request ever waits for a recompile. The compiled
modules share every parameter with the eager ones.

Compiled kernels are cached in TORCHINDUCTOR_CACHE_DIR (SDXL_COMPILE_CACHE sets it, default
weights/inductor-cache): `python -m sdxl warmup` on the target GPU type fills it, and a cache
shipped with the image makes a cold start skip compilation. It matches only the same torch,
Triton and GPU type.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch

INDUCTOR_FLAGS = {  # the PyTorch/diffusers fast-diffusion recipe
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}


def use_cache_dir(weights_dir: Path) -> Path:
    folder = Path(os.environ.get("SDXL_COMPILE_CACHE") or weights_dir / "inductor-cache")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


class Compiled:
    def __init__(self, models, shapes: tuple[tuple[int, int], ...], mode: str | None = None):
        import torch._inductor.config as inductor

        use_cache_dir(models.weights_dir)
        for name, value in INDUCTOR_FLAGS.items():
            setattr(inductor, name, value)
        mode = mode or ("max-autotune" if models.device.type == "cuda" else "default")
        self.shapes = frozenset(shapes)

        def compiled(module):
            return torch.compile(module, mode=mode, fullgraph=True, dynamic=False)

        self.modules = {
            "base": compiled(models.base.unet),
            "refiner": compiled(models.refiner.unet),
            "vae": _with_decoder(models.base.vae, compiled(models.base.vae.decoder)),
        }

    def modules_for(self, job, trained: bool) -> dict | None:
        """The compiled modules when `job` has a compiled shape, else None (eager)."""
        req = job.request
        refiner_guidance = (
            req.guidance_scale if req.guidance_scale_refiner is None else req.guidance_scale_refiner
        )
        fits = (job.width, job.height) in self.shapes and req.num_outputs == 1
        guided = req.guidance_scale > 1 and (req.refine == "no_refiner" or refiner_guidance > 1)
        return self.modules if fits and guided and not trained else None


def _with_decoder(vae, decoder):
    """A VAE object sharing every module and parameter of `vae`, but with `decoder` (the
    compiled one): the shared VAE itself is never changed."""
    view = copy.copy(vae)
    view._modules = dict(vae._modules)
    view._modules["decoder"] = decoder
    return view


def warm_up(models, shapes) -> float:
    """One short generation per shape through each stage (compiling what is compiled);
    returns the seconds it took."""
    from sdxl.core.generate import denoise, prepare
    from sdxl.core.request import Request

    started = time.perf_counter()
    for width, height in shapes:
        request = Request(
            prompt="warm-up",
            width=width,
            height=height,
            num_inference_steps=4,
            seed=0,
            refine="expert_ensemble_refiner",
        )
        job = prepare(models, request)
        compiled = models.compiled.modules_for(job, False) if models.compiled else None
        denoise(models, job, compiled=compiled)
    if models.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started
