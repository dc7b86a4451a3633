"""The engine's limits, built from the settings tree (`sdxl.settings.tree.EngineGroup`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sdxl.settings import Caps, FetchSettings
from sdxl.settings.tree import CapsGroup, EngineGroup, FetchGroup, SettingsTree


@dataclass(frozen=True)
class EngineSettings:
    max_seconds: float | None = None  # SDXL_MAX_SECONDS: running time of one job (not the queue)
    # SDXL_MAX_RESIDENT_LORAS: LoRA adapters kept loaded (None: 4, or 0 with SDXL_COMPILE=1, so
    # that a LoRA's layers leave the base UNet after its job and the others run it compiled)
    max_resident_loras: int | None = None
    max_resident_lora_bytes: int = 2 << 30  # SDXL_MAX_RESIDENT_LORA_BYTES
    max_resident_unets: int | None = None  # SDXL_MAX_RESIDENT_UNETS: None = 1 on CUDA, 0 on CPU
    max_resident_unet_bytes: int = 12 << 30  # SDXL_MAX_RESIDENT_UNET_BYTES
    max_prepared_bytes: int = 12 << 30  # SDXL_MAX_PREPARED_BYTES: trained weights waiting in RAM
    prepare_workers: int = 2  # SDXL_PREPARE_WORKERS: jobs prepared (downloads) at once
    # SDXL_MAX_RESIDENT_CONTROLNETS: control models kept on the device after their job (least
    # recently used out); a job that uses more keeps them for its own time
    max_resident_controlnets: int = 3
    # SDXL_MAX_RESIDENT_IP_ADAPTERS: IP-Adapters kept on the device, off the UNet (at least 1)
    max_resident_ip_adapters: int = 2
    lora_dir: Path | None = None  # SDXL_LORA_DIR: where lora_id names files (None: weights/loras)
    caps: Caps = field(default_factory=Caps)  # SDXL_MAX_STEPS, _PIXELS, _OUTPUTS, _PROMPT_CHARS
    fetch: FetchSettings = field(default_factory=FetchSettings)  # SDXL_FETCH_*, SDXL_CACHE_*

    @classmethod
    def from_group(cls, engine: EngineGroup, caps: CapsGroup, fetch: FetchGroup) -> EngineSettings:
        """The engine's settings from the tree's groups (`sdxl.settings.tree.load_settings`)."""
        return cls(
            **engine.model_dump(),
            caps=caps.build(),
            fetch=fetch.build(caps.local_dirs),
        )

    @classmethod
    def from_tree(cls, tree: SettingsTree) -> EngineSettings:
        return cls.from_group(tree.engine, tree.caps, tree.fetch)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        return cls.from_group(EngineGroup.read(env), CapsGroup.read(env), FetchGroup.read(env))

    def resident_loras(self, compiled: bool) -> int:
        if self.max_resident_loras is not None:
            return self.max_resident_loras
        return 0 if compiled else 4

    def resident_unets(self, device_type: str) -> int:
        if self.max_resident_unets is not None:
            return self.max_resident_unets
        return 1 if device_type == "cuda" else 0
