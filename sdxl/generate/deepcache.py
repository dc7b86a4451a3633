"""DeepCache (Ma et al., CVPR 2024) for one stage of one job: every `cache_interval`-th step runs
the whole UNet and caches its deep features; the steps between run only the shallow branch on
top of the cache.

The reference is the `DeepCache` package's DeepCacheSDHelper (`cache_branch_id=0`, uniform
skipping): we use its block logic as it is, so that its behaviour, Heun's repeated timesteps
included, is the definition. Only its UNet wrapper is replaced: the helper finds each call's
step with `list(scheduler.timesteps).index(timestep.item())`, a host sync on every UNet call
on a GPU; here the step of each call comes from the engine's step plan
(`StepPlan.base_calls`, `refiner_calls`), counted on the host. The helper patches `forward` on
the UNet's modules; its `disable()` puts the original bound methods back as instance
attributes, so afterwards we delete every instance attribute the modules did not have before:
the shared UNet is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def feature_cache(pipe: Any, interval: int, calls: Sequence[int]) -> Iterator[None]:
    """Reuse `pipe.unet`'s deep features for `interval` steps at a time while the block runs
    (`interval` 1: nothing is touched). `calls[k]` is the step (the position of its timestep in
    the scheduler's schedule, as DeepCache counts) of the stage's k-th UNet call. Call it under
    the engine's lock."""
    if interval <= 1:
        yield
        return
    modules = list(pipe.unet.modules())
    before = [set(vars(module)) for module in modules]
    helper = _planned_helper(pipe, calls)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()
        for module, keys in zip(modules, before, strict=True):
            for key in set(vars(module)) - keys:
                del vars(module)[key]


def _planned_helper(pipe: Any, calls: Sequence[int]):
    from DeepCache import DeepCacheSDHelper

    class PlannedSteps(DeepCacheSDHelper):
        """The reference helper, told each UNet call's step instead of asking the device."""

        def wrap_unet_forward(self) -> None:
            forward = self.function_dict["unet_forward"] = self.pipe.unet.forward
            made = iter(calls)

            def counted(*args, **kwargs):
                self.cur_timestep = next(made)
                return forward(*args, **kwargs)

            self.pipe.unet.forward = counted

    return PlannedSteps(pipe=pipe)
