"""torch.compile that never recompiles while serving (SDXL_COMPILE=1).

The UNets and the VAE decoder are compiled as fixed shapes (`dynamic=False`, full graph). What
each compiled module was warmed with is all it ever runs: the engine's warm-up (on the thread
that runs the jobs, since CUDA graph trees keep per-thread state) records the signature of every
call (each tensor argument's shape and dtype), then `seal()` closes the set. From then on a
call whose signature was warmed runs the compiled graph and any other call (another size, a
batch, guidance off, a prompt past 77 tokens, tiles of a large decode) runs the eager module,
so no request ever waits for a compile. Timesteps reach the UNet as float32 whatever the
scheduler made them (int64 for DDIM, DPM++, PNDM, LCM, TCD; float32 for Euler and Heun): the
UNet casts them to float before its first use, so the values are the same and one warm-up
serves every scheduler.

A job whose base UNet carries trained weights (a LoRA's layers, a fine-tune) runs the eager
base; the refiner and the VAE stay compiled (`modules_for`). The compiled modules share every
parameter with the eager ones.

Compiled kernels are cached in TORCHINDUCTOR_CACHE_DIR (SDXL_COMPILE_CACHE sets it, default
weights/inductor-cache): `python -m sdxl warmup` on the target GPU type fills it, and a cache
shipped with the image makes a cold start skip compilation. It matches only the same torch,
Triton and GPU type.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

INDUCTOR_FLAGS = {  # the PyTorch/diffusers fast-diffusion recipe
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}


def use_cache_dir(weights_dir: Path, cache: Path | None = None) -> Path:
    """Inductor's cache: `cache` (SDXL_COMPILE_CACHE), or weights_dir/inductor-cache (an
    operator's own TORCHINDUCTOR_CACHE_DIR wins)."""
    folder = cache or weights_dir / "inductor-cache"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def signature(value: Any) -> Any:
    """What a compiled graph is specialised on, for one call's arguments: each tensor's shape,
    dtype and device; other values as they are (None, flags)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    if isinstance(value, dict):
        return tuple(sorted((key, signature(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return tuple(signature(item) for item in value)
    return value


class Sealed:
    """One compiled module's calls: compiled for the signatures seen while warming, eager for
    every other one once sealed. Installed as the compiled module's `forward`, so that the
    pipelines see the same module object (its config, dtype and submodules are the eager
    module's)."""

    def __init__(self, compiled: torch.nn.Module, cast_timestep: bool):
        self.eager = compiled._orig_mod
        self.graph = compiled.forward  # dynamo's entry
        self.cast_timestep = cast_timestep
        self.warmed: set = set()
        self.sealed = True  # until Compiled.warming() opens it: nothing compiles unwarmed
        self.eager_calls = 0  # calls sent to the eager module while sealed (benchmarks)
        compiled.forward = self

    def __call__(self, *args, **kwargs):
        if self.cast_timestep:
            args, kwargs = _float_timestep(args, kwargs)
        key = signature((args, kwargs))  # only the GPU thread calls: no lock needed
        known = key in self.warmed
        if not known and not self.sealed:
            self.warmed.add(key)
            known = True
        if not known:
            self.eager_calls += 1
        return self.graph(*args, **kwargs) if known else self.eager(*args, **kwargs)


def _float_timestep(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The UNet's `timestep` (its second argument) as float32, wherever it was passed."""
    if len(args) > 1:
        return (args[0], _as_float(args[1]), *args[2:]), kwargs
    if "timestep" in kwargs:
        return args, {**kwargs, "timestep": _as_float(kwargs["timestep"])}
    return args, kwargs


def _as_float(timestep: Any) -> Any:
    if isinstance(timestep, torch.Tensor):
        return timestep.to(torch.float32)
    return torch.tensor(float(timestep), dtype=torch.float32)


class Compiled:
    def __init__(
        self,
        models,
        shapes: tuple[tuple[int, int], ...],
        mode: str | None = None,
        backend: str = "inductor",
        cache: Path | None = None,
    ):
        """`backend` other than inductor ("eager", "aot_eager") traces the same graphs without
        Inductor's code generation: the tests count graphs that way in seconds."""
        import torch._inductor.config as inductor

        use_cache_dir(models.weights_dir, cache)
        for name, value in INDUCTOR_FLAGS.items():
            setattr(inductor, name, value)
        if backend == "inductor":
            mode = mode or ("max-autotune" if models.device.type == "cuda" else "default")
        else:
            mode = None
        self.shapes = frozenset(shapes)

        def compiled(module, cast_timestep: bool = False):
            graph = torch.compile(module, backend=backend, mode=mode, fullgraph=True, dynamic=False)
            self.sealed.append(Sealed(graph, cast_timestep))
            return graph

        self.sealed: list[Sealed] = []
        self.modules = {
            "base": compiled(models.base.unet, cast_timestep=True),
            "refiner": compiled(models.refiner.unet, cast_timestep=True),
            "vae": _with_decoder(models.base.vae, compiled(models.base.vae.decoder)),
        }

    @contextmanager
    def warming(self) -> Iterator[None]:
        """Every call made inside is warmed (compiled now, served compiled later)."""
        for module in self.sealed:
            module.sealed = False
        try:
            yield
        finally:
            self.seal()

    def seal(self) -> None:
        for module in self.sealed:
            module.sealed = True

    @property
    def eager_calls(self) -> int:
        return sum(module.eager_calls for module in self.sealed)

    def modules_for(self, generation, base_trained: bool) -> dict | None:
        """The compiled modules for `generation`, or None for a size never compiled. A job
        whose base UNet carries trained weights gets the refiner and the VAE only."""
        if (generation.width, generation.height) not in self.shapes:
            return None
        if base_trained:
            return {k: v for k, v in self.modules.items() if k != "base"}
        return self.modules


def _with_decoder(vae, decoder):
    """A VAE object sharing every module and parameter of `vae`, but with `decoder` (the
    compiled one): the shared VAE itself is never changed."""
    view = copy.copy(vae)
    view._modules = dict(vae._modules)
    view._modules["decoder"] = decoder
    return view
