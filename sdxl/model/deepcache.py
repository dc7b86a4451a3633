"""DeepCache (Ma et al., CVPR 2024) for one stage of one job: every `cache_interval`-th step runs
the whole UNet and caches its deep features; the steps between run only the shallow branch on
top of the cache.

The reference is the `DeepCache` package's DeepCacheSDHelper (`cache_branch_id=0`, uniform
skipping): we use it as it is, so that its behaviour, Heun's repeated timesteps included, is
the definition. It patches `forward` on the UNet's modules; its `disable()` puts the original
bound methods back as instance attributes, so afterwards we delete every instance attribute
the modules did not have before: the shared UNet is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def feature_cache(pipe: Any, interval: int) -> Iterator[None]:
    """Reuse `pipe.unet`'s deep features for `interval` steps at a time while the block runs
    (`interval` 1: nothing is touched). Call it under the engine's lock."""
    if interval <= 1:
        yield
        return
    from DeepCache import DeepCacheSDHelper

    modules = list(pipe.unet.modules())
    before = [set(vars(module)) for module in modules]
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()
        for module, keys in zip(modules, before, strict=True):
            for key in set(vars(module)) - keys:
                del vars(module)[key]
