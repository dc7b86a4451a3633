"""Changes to the SHARED modules for one job, each recorded before it is made, and undone.

`Session` adds tokens (a deep copy of each tokenizer's state is taken first; each text
encoder's original embedding module is kept and put back, never resized in place) and copies
a fine-tune into the base UNet's parameters when no resident UNet may be kept (their loaded
values come back from the UNet's own safetensors file, see `UnetOriginals`). `restore()` undoes
whatever was done, newest first, and may run again if interrupted. Only the engine calls this,
under its lock.
"""

from __future__ import annotations

import copy
import json
import weakref
from pathlib import Path, PurePosixPath
from typing import ClassVar

import torch

from sdxl.adapters.tar import TrainedWeightsError


class Session:
    """Every change made to the shared modules, recorded before it is made."""

    def __init__(self, models):
        self.models = models
        self.unet_keys: list[str] = []
        self.originals: UnetOriginals | None = None
        self.embeddings: list[tuple] = []  # (text encoder, original module, vocab_size)
        self.tokenizers: list[tuple] = []  # (tokenizer, deep copy taken before)

    def add_tokens(self, tokens: list[str], embeddings: tuple[torch.Tensor, ...]) -> None:
        base, refiner = self.models.base, self.models.refiner
        pairs = [
            (base.tokenizer, base.text_encoder, 0),
            (base.tokenizer_2, base.text_encoder_2, 1),
            (getattr(refiner, "tokenizer", None), getattr(refiner, "text_encoder", None), 0),
            (getattr(refiner, "tokenizer_2", None), refiner.text_encoder_2, 1),
        ]
        pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
        for tok, te, i in pairs:
            width = te.get_input_embeddings().embedding_dim
            if embeddings[i].shape[1] != width:
                raise TrainedWeightsError(
                    f"replicate_weights: embeddings.pti has {embeddings[i].shape[1]} values per "
                    f"token for text encoder {i + 1}, which has {width}; trained for another model?"
                )
            taken = [t for t in tokens if t in tok.get_vocab()]
            if taken:
                raise TrainedWeightsError(f"replicate_weights: tokens {taken} already exist")
        ids_of: dict[int, list[int]] = {}
        for tok, _te, _i in pairs:
            if id(tok) in ids_of:
                continue
            self.tokenizers.append((tok, copy.deepcopy(tok)))
            tok.add_tokens(tokens, special_tokens=True)
            ids_of[id(tok)] = tok.convert_tokens_to_ids(tokens)
        done: set[int] = set()
        for tok, te, i in pairs:
            if id(te) not in done:
                done.add(id(te))
                self._grow(te, ids_of[id(tok)], embeddings[i])

    def _grow(self, te, ids: list[int], rows: torch.Tensor) -> None:
        """A new, larger embedding module; the original module object is kept to put back."""
        old = te.get_input_embeddings()
        size = max(old.num_embeddings, max(ids) + 1)
        weight = old.weight.new_zeros(size, old.embedding_dim)
        with torch.no_grad():
            weight[: old.num_embeddings] = old.weight
            weight[ids] = rows.to(weight.device, weight.dtype)
        new = torch.nn.Embedding.from_pretrained(weight, freeze=True)
        self.embeddings.append((te, old, te.config.vocab_size))
        te.set_input_embeddings(new)
        te.config.vocab_size = size

    def finetune(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy a fine-tune's tensors into the shared base UNet (restored by `restore`)."""
        unet = self.models.base.unet
        own = unet.state_dict()
        self.originals = UnetOriginals.for_unet(unet)
        for key, value in tensors.items():
            target = own[key]
            new = checked_cast(key, value, target)
            self.originals.keep(key, target)
            self.unet_keys.append(key)
            _copy_into(target, new)

    def restore(self) -> None:
        """Undo everything recorded, newest first; idempotent, so it can run again."""
        errors: list[BaseException] = []
        for step in (self._unet_back, self._embeddings_back, self._tokens_back):
            try:
                step()
            except BaseException as err:  # keep restoring the rest, then re-raise
                errors.append(err)
        if errors:
            raise errors[0]

    def _unet_back(self) -> None:
        if self.unet_keys:
            own = self.models.base.unet.state_dict()
            for key in self.unet_keys:
                _copy_into(own[key], self.originals.original(key))
            self.unet_keys = []
            self.originals.release()

    def _embeddings_back(self) -> None:
        while self.embeddings:
            te, module, vocab = self.embeddings[-1]
            te.set_input_embeddings(module)
            te.config.vocab_size = vocab
            self.embeddings.pop()

    def _tokens_back(self) -> None:
        while self.tokenizers:
            tok, saved = self.tokenizers[-1]
            state = copy.deepcopy(saved).__dict__
            tok.__dict__.clear()
            tok.__dict__.update(state)
            self.tokenizers.pop()


def _copy_into(target: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        target.copy_(value.to(target.dtype))


def checked_cast(key: str, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value` on `like`'s device and dtype; refused if the cast leaves NaN or inf values."""
    new = value.to(like.device, like.dtype)
    if not torch.isfinite(new).all():  # after the cast: bf16 -> fp16 can overflow
        raise TrainedWeightsError(
            f"replicate_weights: unet.safetensors {key[:120]!r} has NaN or inf values "
            f"as {str(like.dtype).removeprefix('torch.')}"
        )
    return new


# ---- putting a fine-tuned UNet back ------------------------------------------------------
class UnetOriginals:
    """The loaded values of the base UNet's tensors that a fine-tune replaces.

    Read back from the UNet's own safetensors file (`config._name_or_path`), which holds a
    second copy of the weights for free: each key is checked bitwise against the live tensor
    the first time it is replaced, and only a key that fails (or has no file) is copied to CPU
    memory, for the length of one request. The file stays open (memory-mapped) once used, so
    replacing it on disk later (os.replace, as `weights download` does) changes nothing here.
    """

    _registry: ClassVar[dict[int, tuple[weakref.ref, UnetOriginals]]] = {}

    def __init__(self, files: dict[str, Path]):
        self._files = files
        self._handles: dict[Path, object] = {}
        self._verified: set[str] = set()
        self._snapshots: dict[str, torch.Tensor] = {}

    @classmethod
    def for_unet(cls, unet) -> UnetOriginals:
        held = cls._registry.get(id(unet))
        if held is not None and held[0]() is unet:
            return held[1]
        inst = cls(_unet_files(Path(getattr(unet.config, "_name_or_path", "") or ".")))
        cls._registry[id(unet)] = (weakref.ref(unet), inst)
        return inst

    def keep(self, key: str, live: torch.Tensor) -> None:
        """Make sure `key`'s current value can be put back; call before changing it."""
        if key in self._verified or key in self._snapshots:
            return
        stored = self._read(key)
        if stored is not None and torch.equal(stored.to(live.device, live.dtype), live):
            self._verified.add(key)
            return
        self._snapshots[key] = live.detach().to("cpu", copy=True)

    def original(self, key: str) -> torch.Tensor:
        if key in self._snapshots:
            return self._snapshots[key]
        stored = self._read(key)
        if stored is None:
            raise RuntimeError(f"the original value of UNet tensor {key} is lost")
        return stored

    def release(self) -> None:
        self._snapshots.clear()

    @property
    def snapshot_keys(self) -> set[str]:
        return set(self._snapshots)

    def _read(self, key: str) -> torch.Tensor | None:
        path = self._files.get(key)
        if path is None:
            return None
        if path not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
            except Exception:
                return None
        return self._handles[path].get_tensor(key)


def _unet_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> file, for a diffusers UNet folder (single file or sharded)."""
    single = folder / "diffusion_pytorch_model.safetensors"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    try:
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {k: folder / PurePosixPath(v).name for k, v in weight_map.items()}
        if single.is_file():
            from safetensors import safe_open

            with safe_open(str(single), framework="pt", device="cpu") as f:
                return dict.fromkeys(f.keys(), single)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}
