"""The IP-Adapters `weights download --ip-adapter` fetches: h94's SDXL ViT-H adapters and the
ViT-H image encoder they were trained with, in h94/IP-Adapter's own layout under ip_adapter/.

Each choice names (repo, remote file, local path) rows; sdxl.weights.download pins them at the
commit below and verifies them like every other file. Safetensors and JSON only (the repository
also ships pickles, never fetched). The encoder is `models/image_encoder` (OpenCLIP ViT-H/14,
632M parameters), never `sdxl_models/image_encoder`, which is ViT-bigG and fits none of these.
"""

from __future__ import annotations

from sdxl.config import IP_ADAPTER_DIR, IP_ADAPTER_ENCODER, IP_ADAPTER_MODELS, IP_ADAPTER_SUBFOLDER

IP_ADAPTER = "h94/IP-Adapter"  # apache-2.0

IP_ADAPTER_PINNED = {
    # The snapshot public code loads these very files from (models--h94--IP-Adapter/snapshots/
    # 018e402..., with sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors and models/
    # image_encoder/), and a public fetch manifest's .../resolve/018e402.../models/
    # image_encoder/model.safetensors (sha256 6ca9667da1ca9e0b0f75e46bb030f7e011f44f86cbfb8d5a
    # 36590fcd7507b030, as it records).
    IP_ADAPTER: "018e402774aeeddd60609b4ecdb7e298259dc729",
}
IP_ADAPTER_BRANCH_PINNED: frozenset[str] = frozenset()  # the repository has a commit

_ENCODER = tuple(
    (IP_ADAPTER, f"{IP_ADAPTER_ENCODER}/{name}", f"{IP_ADAPTER_DIR}/{IP_ADAPTER_ENCODER}/{name}")
    for name in ("config.json", "model.safetensors")
)
_ADAPTERS = tuple(
    (
        IP_ADAPTER,
        f"{IP_ADAPTER_SUBFOLDER}/{file}",
        f"{IP_ADAPTER_DIR}/{IP_ADAPTER_SUBFOLDER}/{file}",
    )
    for file in IP_ADAPTER_MODELS.values()
)

# Published sizes: ip-adapter_sdxl_vit-h 698 MB, the plus and plus-face 848 MB each, the
# encoder 2.5 GB (float32, as h94 ships it).
IP_ADAPTER_CHOICES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "all": (*_ADAPTERS, *_ENCODER),  # about 4.9 GB
    "none": (),
}
DEFAULT_IP_ADAPTER = "all"
