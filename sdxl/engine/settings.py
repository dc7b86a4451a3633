"""The engine's limits, read from the environment once (each variable is in the README)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from sdxl.config import Caps, env_number
from sdxl.trained.fetch import parse_size


@dataclass(frozen=True)
class EngineSettings:
    max_seconds: float | None = (
        None  # SDXL_MAX_SECONDS: running time of one job (queue not counted)
    )
    max_resident_loras: int = 4  # SDXL_MAX_RESIDENT_LORAS: LoRA adapters kept loaded
    max_resident_lora_bytes: int = 2 << 30  # SDXL_MAX_RESIDENT_LORA_BYTES
    max_resident_unets: int | None = None  # SDXL_MAX_RESIDENT_UNETS: None = 1 on CUDA, 0 on the CPU
    max_resident_unet_bytes: int = 12 << 30  # SDXL_MAX_RESIDENT_UNET_BYTES
    max_prepared_bytes: int = 12 << 30  # SDXL_MAX_PREPARED_BYTES: trained weights waiting in RAM
    prepare_workers: int = 2  # SDXL_PREPARE_WORKERS: jobs prepared (downloads) at once
    caps: Caps = field(default_factory=Caps)  # SDXL_MAX_STEPS, _PIXELS, _OUTPUTS, _PROMPT_CHARS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env

        def number(name: str, parse, minimum, default):
            hint = "sizes may end in K, M or G" if parse is parse_size else ""
            return env_number(env, name, parse, minimum, default, hint)

        return cls(
            max_seconds=number("SDXL_MAX_SECONDS", float, 0.001, None),
            max_resident_loras=number("SDXL_MAX_RESIDENT_LORAS", int, 0, cls.max_resident_loras),
            max_resident_lora_bytes=number(
                "SDXL_MAX_RESIDENT_LORA_BYTES", parse_size, 1, cls.max_resident_lora_bytes
            ),
            max_resident_unets=number("SDXL_MAX_RESIDENT_UNETS", int, 0, None),
            max_resident_unet_bytes=number(
                "SDXL_MAX_RESIDENT_UNET_BYTES", parse_size, 1, cls.max_resident_unet_bytes
            ),
            max_prepared_bytes=number(
                "SDXL_MAX_PREPARED_BYTES", parse_size, 1, cls.max_prepared_bytes
            ),
            prepare_workers=number("SDXL_PREPARE_WORKERS", int, 1, cls.prepare_workers),
            caps=Caps.from_env(env),
        )

    def resident_unets(self, device_type: str) -> int:
        if self.max_resident_unets is not None:
            return self.max_resident_unets
        return 1 if device_type == "cuda" else 0
