"""torch.compile for a fixed set of shapes (SDXL_COMPILE=1), warmed in setup (`sdxl.model.loading`).

The UNets and the VAE decoder are compiled once, as fixed shapes (`dynamic=False`): the sizes
in SDXL_COMPILE_SHAPES, one image, classifier-free guidance on; all three are warmed in
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

    def modules_for(self, generation, trained: bool) -> dict | None:
        """The compiled modules when `generation` has a compiled shape, else None (eager)."""
        req = generation.request
        refiner_guidance = (
            req.guidance_scale if req.guidance_scale_refiner is None else req.guidance_scale_refiner
        )
        fits = (generation.width, generation.height) in self.shapes and req.num_outputs == 1
        guided = req.guidance_scale > 1 and (req.refine == "no_refiner" or refiner_guidance > 1)
        return self.modules if fits and guided and not trained else None


def _with_decoder(vae, decoder):
    """A VAE object sharing every module and parameter of `vae`, but with `decoder` (the
    compiled one): the shared VAE itself is never changed."""
    view = copy.copy(vae)
    view._modules = dict(vae._modules)
    view._modules["decoder"] = decoder
    return view
