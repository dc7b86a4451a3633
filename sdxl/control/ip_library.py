"""The IP-Adapters a server has: h94's SDXL adapters in SDXL_WEIGHTS_DIR/ip_adapter/sdxl_models/
and the ViT-H image encoder in ip_adapter/models/image_encoder/, found by their files (no tensor
read), so the boundary can refuse an adapter that is not here, listing those that are.

No torch here.
"""

from __future__ import annotations

from pathlib import Path

from sdxl.config import IP_ADAPTER_DIR, IP_ADAPTER_ENCODER, IP_ADAPTER_MODELS, IP_ADAPTER_SUBFOLDER
from sdxl.errors import InputError

DOWNLOAD_HINT = "`python -m sdxl weights download` fetches them"


class IpAdapterLibrary:
    def __init__(self, weights_dir: Path):
        self.root = Path(weights_dir) / IP_ADAPTER_DIR
        self.encoder_folder = self.root / IP_ADAPTER_ENCODER

    def file(self, name: str) -> Path:
        return self.root / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_MODELS[name]

    def adapters(self) -> list[str]:
        """The short names of the adapters present (read again on each call)."""
        return [name for name in IP_ADAPTER_MODELS if self.file(name).is_file()]

    def has_encoder(self) -> bool:
        return (self.encoder_folder / "config.json").is_file()

    def check(self, name: str, field: str = "ip_adapter_model") -> None:
        """InputError unless adapter `name` and the image encoder are on this server."""
        have = self.adapters()
        if name not in have:
            listed = ", ".join(have) or "none"
            raise InputError(
                f"{field}={name}: this server has no such IP-Adapter "
                f"(SDXL_WEIGHTS_DIR/{IP_ADAPTER_DIR}/{IP_ADAPTER_SUBFOLDER}/"
                f"{IP_ADAPTER_MODELS.get(name, name)}); it has: {listed}. Choose one of those, "
                f"or ask the operator to run {DOWNLOAD_HINT}",
                field,
            )
        if not self.has_encoder():
            raise InputError(
                f"{field}={name}: this server has no IP-Adapter image encoder "
                f"(SDXL_WEIGHTS_DIR/{IP_ADAPTER_DIR}/{IP_ADAPTER_ENCODER}); ask the operator "
                f"to run {DOWNLOAD_HINT}",
                field,
            )
