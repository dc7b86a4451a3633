"""Trained weights on the shared models: resident LoRA adapters and fine-tuned UNets.

A Replicate trained version sends the same `replicate_weights` on every call, so what was
loaded once stays loaded, bounded and least recently used out:
- LoRAs stay in the base pipeline as peft adapters (never fused). A job that names one
  activates it (`set_adapters`, with the job's scale); every other job runs with the adapters
  disabled, which computes exactly the base layers. When the last adapter leaves, the LoRA
  layers are unloaded altogether.
- A fine-tuned UNet becomes its own module, handed to the job's pipeline instead of the shared
  UNet. With `max_unets` 0 (the CPU default), its tensors are copied into the shared UNet for
  the job and put back afterwards instead (`sdxl.adapters.session`).
- Trained tokens are applied per job and always removed: every trainer version calls its
  tokens `<s0>`, `<s1>`, so they would collide between versions, and a plain prompt that
  contains the text `<s0>` must tokenize as it does on a fresh server.

Only the engine calls `apply` and `undo`, holding its lock. `is_resident` may be called from
any thread (preparation skips reading weights that are loaded already).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from sdxl.adapters.lora import LoraError, LoraState, read_lora
from sdxl.adapters.session import Session, checked_cast
from sdxl.adapters.staging import FinetuneSource, LoraSource, StagedWeights
from sdxl.adapters.tar import load_safetensors
from sdxl.model import fast
from sdxl.model.device import free_device_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResidentLimits:
    max_loras: int = 4  # LoRA adapters kept loaded (0: unloaded after each job)
    max_lora_bytes: int = 2 << 30
    max_unets: int = 0  # fine-tuned UNets kept as modules (0: copy into the shared UNet)
    max_unet_bytes: int = 12 << 30


@dataclass
class _Lora:
    name: str  # the peft adapter name
    label: str
    nbytes: int


@dataclass
class _Unet:
    module: Any
    nbytes: int


@dataclass
class Active:
    """What `apply` did for one job; `undo` takes it back."""

    session: Session
    unet: Any = None  # a resident fine-tuned UNet for the base stages, or None
    adapters: list[str] = field(default_factory=list)  # peft adapter names active


class RestoreError(RuntimeError):
    """The shared models could not be put back: they can no longer be trusted."""


class ResidentWeights:
    def __init__(self, models, limits: ResidentLimits):
        self.models = models
        self.limits = limits
        self.loras: OrderedDict[str, _Lora] = OrderedDict()  # key -> adapter, oldest first
        self.unets: OrderedDict[str, _Unet] = OrderedDict()
        self._names = (f"sdxl_lora_{n}" for n in itertools.count())
        self._resident: frozenset[str] = frozenset()

    # ---- any thread ---------------------------------------------------------------------
    def is_resident(self, key: str) -> bool:
        return key in self._resident

    def stats(self) -> dict:
        return {
            "loras": len(self.loras),
            "lora_bytes": sum(e.nbytes for e in self.loras.values()),
            "unets": len(self.unets),
            "unet_bytes": sum(e.nbytes for e in self.unets.values()),
        }

    # ---- under the engine's lock --------------------------------------------------------
    def apply(self, staged: StagedWeights | None) -> Active:
        active = Active(Session(self.models))
        if staged is None:
            return active
        try:
            if staged.tokens:
                active.session.add_tokens(staged.tokens, staged.embeddings)
            if staged.finetune is not None:
                if staged.loras:
                    raise LoraError("a fine-tuned UNet and a LoRA cannot be combined in one job")
                active.unet = self._finetune(staged.finetune, active.session)
            self._check_count(staged)
            active.adapters = [self._lora(source) for source in staged.loras]
            if active.adapters:
                base = self.models.base
                fast.use_fused(base.unet, self.models.fused.get("base"), False)  # LoRA sees q/k/v
                base.enable_lora()
                base.set_adapters(active.adapters, staged.weights())  # in order, each its own
            log.info(
                "trained weights active: LoRA %s (weights %s), fine-tuned UNet: %s, new tokens "
                "%s; LoRA and fine-tune apply to the base UNet only, new tokens reach the "
                "refiner through the shared text_encoder_2",
                [s.label for s in staged.loras] or "none",
                staged.weights(),
                "resident module" if active.unet is not None else staged.finetune is not None,
                staged.tokens or "none",
            )
        except BaseException:
            self.undo(active)
            raise
        return active

    def undo(self, active: Active) -> None:
        """Disable the job's adapters, remove its tokens, put a copied fine-tune back, and
        trim the resident sets to their bounds. RestoreError when anything fails."""
        errors: list[BaseException] = []
        for step in (self._disable, active.session.restore, self._trim):
            try:
                step()
            except BaseException as err:  # keep restoring the rest, then report
                errors.append(err)
        if errors:
            raise RestoreError(f"{type(errors[0]).__name__}: {errors[0]}") from errors[0]

    # ---- LoRAs --------------------------------------------------------------------------
    @property
    def most_per_job(self) -> int:
        """LoRAs one job may apply: as many as stay resident, at least one."""
        return max(1, self.limits.max_loras)

    def _check_count(self, staged: StagedWeights) -> None:
        if len(staged.loras) > self.most_per_job:
            raise LoraError(
                f"this request applies {len(staged.loras)} LoRAs "
                f"({', '.join(s.label for s in staged.loras)[:300]}); this server applies at "
                f"most {self.most_per_job} per request (SDXL_MAX_RESIDENT_LORAS); remove some",
                "loras",
            )

    def _lora(self, source: LoraSource) -> str:
        entry = self.loras.get(source.key)
        if entry is not None:
            self.loras.move_to_end(source.key)
            return entry.name
        state = source.state
        if state is None:  # evicted since it was prepared: read it again
            m = self.models
            state = read_lora(source.path, source.label, m.unet_linears, m.base.unet.config)
        name = next(self._names)
        try:
            self._load(name, state)
        except Exception as err:  # diffusers/peft on data they cannot map
            self._delete(name)
            why = f"{type(err).__name__}: {str(err)[:300]}"
            raise LoraError(f"{source.label}: the LoRA could not be loaded ({why})") from None
        except BaseException:
            self._delete(name)
            raise
        if not any(name in names for names in self.models.base.get_list_adapters().values()):
            self._delete(name)
            raise LoraError(
                f"{source.label}: none of its weights match the SDXL UNet or text encoders"
            )
        self.loras[source.key] = _Lora(name, source.label, _lora_bytes(state, self.models.dtype))
        self._publish()
        return name

    def _load(self, name: str, lora: LoraState) -> None:
        """What diffusers' `load_lora_weights` does after reading the file (done off the lock)."""
        base = self.models.base
        common = {"network_alphas": lora.alphas, "adapter_name": name, "metadata": lora.metadata}
        with warnings.catch_warnings():  # peft warns whenever a model gets a second adapter
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            base.load_lora_into_unet(dict(lora.state), unet=base.unet, **common)
            for prefix in ("text_encoder", "text_encoder_2"):
                if any(key.startswith(f"{prefix}.") for key in lora.state):
                    base.load_lora_into_text_encoder(
                        dict(lora.state),
                        text_encoder=getattr(base, prefix),
                        prefix=prefix,
                        lora_scale=1.0,
                        **common,
                    )

    def _disable(self) -> None:
        if self.loras:
            self.models.base.disable_lora()
        fast.use_fused(self.models.base.unet, self.models.fused.get("base"), True)

    def _delete(self, name: str) -> None:
        base = self.models.base
        if any(name in names for names in base.get_list_adapters().values()):
            base.delete_adapters([name])
        if not any(base.get_list_adapters().values()):
            base.unload_lora_weights()  # no adapter left: the original module layout again

    def _trim(self) -> None:
        """Evict the least recently used entries beyond the bounds."""
        lim = self.limits
        while self.loras and (
            len(self.loras) > lim.max_loras
            or sum(e.nbytes for e in self.loras.values()) > lim.max_lora_bytes
        ):
            key, entry = next((k, e) for k, e in self.loras.items())
            del self.loras[key]
            self._delete(entry.name)
            log.info("LoRA %s (%d bytes) unloaded: least recently used", entry.label, entry.nbytes)
        while self.unets and (
            len(self.unets) > lim.max_unets
            or sum(e.nbytes for e in self.unets.values()) > lim.max_unet_bytes
        ):
            self.unets.popitem(last=False)
            free_device_memory(self.models.device)
        self._publish()

    def _unload_all_loras(self) -> None:
        if self.loras or _has_lora_layers(self.models):
            self.loras.clear()
            self.models.base.unload_lora_weights()
            self._publish()

    # ---- fine-tuned UNets ---------------------------------------------------------------
    def _finetune(self, source: FinetuneSource, session: Session):
        tensors = source.tensors
        if self.limits.max_unets <= 0:  # copy into the shared UNet for this job only
            self._unload_all_loras()  # the copy addresses the UNet's own parameter names
            session.finetune(tensors or load_safetensors(source.path, "replicate_weights"))
            return None
        entry = self.unets.get(source.key)
        if entry is not None:
            self.unets.move_to_end(source.key)
            return entry.module
        tensors = tensors or load_safetensors(source.path, "replicate_weights")
        while len(self.unets) >= self.limits.max_unets:  # make room before building
            self.unets.popitem(last=False)
            free_device_memory(self.models.device)
        module = self._build_unet(tensors)
        nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
        self.unets[source.key] = _Unet(module, nbytes)
        self._publish()
        return module

    def _build_unet(self, tensors: dict[str, torch.Tensor]):
        """A new UNet: the base UNet's parameters, replaced by the fine-tune's where it has
        them, made without a random initialisation and without touching the shared UNet."""
        from accelerate import init_empty_weights
        from diffusers import UNet2DConditionModel

        base = self.models.base.unet
        plain = {  # the UNet's own parameters: no LoRA layer, no fused projection
            key.replace(".base_layer.", "."): value
            for key, value in base.state_dict().items()
            if "lora_" not in key and ".to_qkv." not in key and ".to_kv." not in key
        }
        merged = {
            key: checked_cast(key, tensors[key], value) if key in tensors else value.clone()
            for key, value in plain.items()
        }
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(base.config)
        unet.load_state_dict(merged, strict=True, assign=True)
        return unet.requires_grad_(False).eval()

    def _publish(self) -> None:
        self._resident = frozenset(self.loras) | frozenset(self.unets)


def _lora_bytes(lora: LoraState, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() for t in lora.state.values()) * size


def _has_lora_layers(models) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = models.base
    modules = (base.unet, base.text_encoder, base.text_encoder_2)
    return any(isinstance(m, BaseTunerLayer) for mod in modules for m in mod.modules())
