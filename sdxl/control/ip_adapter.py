"""IP-Adapter for one request, nothing left behind.

Once diffusers loads an IP-Adapter into a UNet (`load_ip_adapter`), that UNet has an image
projection and IP attention processors for good: a plain request on it fails, and
`unload_ip_adapter()` restores diffusers' default processors, not the fused ones of the fast
path. So here an adapter's parts are built once with diffusers' own converters
(`_convert_ip_adapter_image_proj_to_diffusers`, `_convert_ip_adapter_attn_to_diffusers`) and
kept resident off the UNet (at most `max_resident`, least recently used out); `installed`
swaps them into the job's UNet for the job (its cross-attention processors and
`encoder_hid_proj`, `config.encoder_hid_dim_type` as diffusers sets them) and puts the UNet's
own processors, projection and config back after it. The ViT-H image encoder and its
`CLIPImageProcessor` (as `load_ip_adapter` makes it) are loaded once and handed to the job's
pipeline, which encodes the reference images itself. Used on the GPU thread, under the
engine's lock.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from sdxl.control.ip_library import IpAdapterLibrary
from sdxl.control.lru import Resident

log = logging.getLogger(__name__)
IP_PROJECTION = "ip_image_proj"  # diffusers' encoder_hid_dim_type for an IP-Adapter


@dataclass
class LoadedAdapter:
    """An adapter's parts, built for the base UNet's layout, on the device."""

    projection: Any  # ImageProjection or IPAdapterPlusImageProjection
    processors: dict[str, Any]  # cross-attention name -> IPAdapterAttnProcessor2_0


@dataclass
class ImagePrompt:
    """What the job's pipelines take for an installed adapter."""

    components: dict[str, Any]  # image_encoder, feature_extractor
    images: list  # the reference images (PIL)
    scale: float | dict  # as diffusers' set_ip_adapter_scale takes it

    def kwargs(self) -> dict[str, Any]:
        return {"ip_adapter_image": [list(self.images)]}  # one adapter, its images


class ResidentIpAdapters:
    def __init__(
        self, library: IpAdapterLibrary, device: torch.device, dtype: torch.dtype, max_resident: int
    ):
        self.library = library
        self.device, self.dtype = device, dtype
        self._resident = Resident("IP-Adapter", max(1, max_resident))  # name -> LoadedAdapter
        self._encoder: Any = None
        self._feature_extractor: Any = None

    @property
    def names(self) -> list[str]:
        """The resident adapters, least recently used first."""
        return self._resident.names

    @contextmanager
    def installed(self, unet, request):
        """The request's adapter in `unet` for the block (yields an ImagePrompt, or None when
        the request has no reference image); the UNet exactly as it was afterwards."""
        if not request.ip_adapter_images:
            yield None
            return
        adapter = self.adapter(request.ip_adapter_model, unet)
        with unet_kept(unet) as saved_processors:
            _swap_in(unet, adapter, saved_processors)
            yield ImagePrompt(
                self.components(),
                list(request.ip_adapter_images),
                request.image_prompt_scale,
            )

    def adapter(self, name: str, unet) -> LoadedAdapter:
        """Adapter `name`'s parts for `unet`'s layout, resident (built on first use)."""
        return self._resident.get(name, partial(self._load, name, unet))

    def _load(self, name: str, unet) -> LoadedAdapter:
        """diffusers' own reading of h94's file and its converters, on the UNet's layout."""
        from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
        from safetensors.torch import load_file

        state = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in load_file(self.library.file(name)).items():
            part, _, rest = key.partition(".")
            state[part][rest] = tensor
        projection = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"])
        converted = unet._convert_ip_adapter_attn_to_diffusers([state])
        processors = {
            key: proc.to(self.device, self.dtype)
            for key, proc in converted.items()
            if isinstance(proc, IPAdapterAttnProcessor2_0)
        }
        projection.to(self.device, self.dtype).requires_grad_(False).eval()
        log.info("loaded IP-Adapter %s on %s", name, self.device)
        return LoadedAdapter(projection, processors)

    def components(self) -> dict[str, Any]:
        """The image encoder and its feature extractor, as a pipeline takes them."""
        if self._encoder is None:
            from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

            encoder = CLIPVisionModelWithProjection.from_pretrained(
                self.library.encoder_folder, dtype=self.dtype, use_safetensors=True
            )
            self._encoder = encoder.to(self.device).requires_grad_(False).eval()
            size = encoder.config.image_size  # as diffusers' load_ip_adapter makes it
            self._feature_extractor = CLIPImageProcessor(size=size, crop_size=size)
        return {"image_encoder": self._encoder, "feature_extractor": self._feature_extractor}


@contextmanager
def unet_kept(unet):
    """The block may install an IP-Adapter in `unet`; afterwards, however it ends, the UNet's
    own processors (fused ones too), projection and `encoder_hid_dim_type` are back. Yields
    the processors as they were."""
    saved_processors = dict(unet.attn_processors)
    saved_projection = unet.encoder_hid_proj
    saved_type = unet.config.encoder_hid_dim_type
    try:
        yield saved_processors
    finally:
        unet.encoder_hid_proj = saved_projection  # first: a Plus projection has processors
        unet.set_attn_processor(dict(saved_processors))  # a copy: diffusers pops from it
        unet.config.encoder_hid_dim_type = saved_type


def _swap_in(unet, adapter: LoadedAdapter, saved: dict[str, Any]) -> None:
    """The adapter's processors on the cross-attentions (the UNet's own elsewhere: fused ones
    stay fused), its projection as `encoder_hid_proj`, as diffusers' _load_ip_adapter_weights
    sets them."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    unet.encoder_hid_proj = None
    unet.set_attn_processor(
        {name: adapter.processors.get(name, proc) for name, proc in saved.items()}
    )
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([adapter.projection])
    unet.config.encoder_hid_dim_type = IP_PROJECTION
