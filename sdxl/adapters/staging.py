"""Trained weights staged off the GPU: downloaded, checked, converted and read into memory.

`stage_weights` does every part of using `replicate_weights`, `lora_name` or `lora_id` that
needs no model: the download (into the bounded cache), the tar checks, the LoRA key conversion,
the shape checks of a fine-tune against the UNet's table, and reading the tensors into host
memory. It runs on the engine's preparation threads, so a slow URL delays only its own job.
What it returns is applied under the engine's lock by `sdxl.adapters.resident`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdxl.adapters.fetch import DownloadCache
from sdxl.adapters.library import LoraLibrary
from sdxl.adapters.lora import LoraError, LoraState, read_lora, rewrite_prompt
from sdxl.adapters.tar import (
    TrainedWeightsError,
    load_safetensors,
    read_trained_tar,
    safetensors_shapes,
    sniff,
)
from sdxl.config import NAMED_LORAS
from sdxl.inputs.request import AdapterSpec

Check = Callable[[], None]  # raises to stop (the job was cancelled)


@dataclass
class LoraSource:
    """One LoRA a job needs: `state` is None when it was resident already at preparation."""

    key: str  # content identity: the same bytes give the same key, whatever the URL
    label: str  # the input it came from, for messages: "replicate_weights", "lora_name='offset'"
    path: Path  # a .safetensors file the job keeps until it ends, to read again if needed
    state: LoraState | None = None
    weight: float | None = None  # its own weight in a stack (None: the job's lora_scale)


@dataclass
class FinetuneSource:
    key: str
    path: Path
    tensors: dict[str, torch.Tensor] | None = None  # None when it was resident already


@dataclass
class StagedWeights:
    """Everything a job's trained weights need, in host memory, nothing applied yet."""

    scale: float
    loras: list[LoraSource] = field(default_factory=list)
    finetune: FinetuneSource | None = None
    tokens: list[str] = field(default_factory=list)
    embeddings: tuple[torch.Tensor, ...] = ()  # per text encoder: [tokens, hidden]
    special_params: dict[str, str] = field(default_factory=dict)
    host_bytes: int = 0  # reserved from the engine's budget for prepared weights
    folder: Path | None = None  # the job's own files (tar members, staged LoRA); removed at close

    def rewrite(self, text: str | None) -> str | None:
        return rewrite_prompt(text, self.special_params)

    def describe(self) -> dict:
        return {
            "adapters": [source.label for source in self.loras],
            "weights": self.weights(),
            "lora_scale": self.scale,
            "tokens": list(self.tokens),
            "finetuned_unet": self.finetune is not None,
        }

    def weights(self) -> list[float]:
        """Each LoRA's weight, in order: its own in a stack, else lora_scale."""
        return [self.scale if s.weight is None else s.weight for s in self.loras]

    def close(self) -> None:
        """Drop the host tensors and the job's files (the caller releases `host_bytes`)."""
        for source in self.loras:
            source.state = None
        if self.finetune is not None:
            self.finetune.tensors = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class HostBudget:
    """Bytes of trained weights held in host memory by prepared jobs, bounded: `acquire` waits
    until there is room (a single item larger than the bound waits until nothing else is held)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, check: Check | None = None) -> None:
        with self._cond:
            while self.used and self.used + nbytes > self.limit:
                self._cond.wait(0.2)
                if check is not None:
                    check()
            self.used += nbytes

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used = max(0, self.used - nbytes)
            self._cond.notify_all()


@dataclass
class Resolver:
    """What preparation reads: the models' tables, the download cache, where LoRAs live."""

    linears: dict  # Models.unet_linears
    unet_shapes: dict  # Models.unet_shapes
    unet_config: object
    weights_dir: Path
    lora_dir: Path
    cache: DownloadCache
    budget: HostBudget
    is_resident: Callable[[str], bool] = lambda key: False
    library: LoraLibrary | None = None  # the names a stack may use (default: lora_dir, offset)

    def __post_init__(self) -> None:
        if self.library is None:
            self.library = LoraLibrary(self.lora_dir, self.weights_dir / NAMED_LORAS["offset"])


def stage_weights(
    spec: AdapterSpec, r: Resolver, check: Check | None = None, tenant: str | None = None
):
    """The job's trained weights as StagedWeights, or None without any; raises InputError.
    (Their names were checked with the request's other rules, `sdxl.inputs.rules`; a stack's
    names are looked up here, among `tenant`'s.)"""
    if spec.empty:
        return None
    root = r.cache.settings.cache_dir / "work"
    root.mkdir(parents=True, exist_ok=True)
    prepared = StagedWeights(scale=spec.lora_scale, folder=Path(tempfile.mkdtemp(dir=root)))
    try:
        if spec.replicate_weights:
            _from_url(prepared, spec.replicate_weights, r, check)
        elif spec.trained_tar:  # a trained version's weights or an upload, in this server's files
            path = Path(spec.trained_tar)
            if not path.is_file():
                raise LoraError(
                    "the trained weights are no longer in this server's files: upload the file "
                    "again (uploads expire), or train the version again",
                    "version",
                )
            _from_file(prepared, path, file_sha256(path), r, check, "this server's files")
        if spec.lora_name:
            path = r.weights_dir / NAMED_LORAS[spec.lora_name]
            if not path.is_file():
                raise LoraError(
                    f"lora_name={spec.lora_name!r}: {path} is missing; run `python -m sdxl "
                    "weights download` to fetch it",
                    "lora_name",
                    spec.lora_name,
                )
            _add_lora(prepared, path, f"lora_name={spec.lora_name!r}", file_sha256(path), r, check)
        if spec.lora_id:
            path = r.lora_dir / f"{spec.lora_id}.safetensors"
            if not path.is_file():
                raise LoraError(
                    f"lora_id={spec.lora_id!r}: no such LoRA (looked for "
                    f"{spec.lora_id}.safetensors)",
                    "lora_id",
                    spec.lora_id,
                )
            _add_lora(prepared, path, f"lora_id={spec.lora_id!r}", file_sha256(path), r, check)
        for i, ref in enumerate(spec.loras):
            _add_ref(prepared, i, ref, r, check, tenant)
    except BaseException:
        r.budget.release(prepared.host_bytes)
        prepared.close()
        raise
    return prepared


def _from_url(prepared: StagedWeights, url: str, r: Resolver, check: Check | None) -> None:
    path = r.cache.fetch(url, "replicate_weights", check)
    digest = r.cache.digest(path) or file_sha256(path)
    _from_file(prepared, path, digest, r, check, url[:80])


def _from_file(prepared, path: Path, digest: str, r: Resolver, check, shown: str) -> None:
    """A trainer tar or a LoRA at `path` (`shown`: where it came from, for messages)."""
    label = "replicate_weights"
    kind = sniff(path)
    if kind == "tar":
        tar = read_trained_tar(path, prepared.folder / "trained", label)
        if tar.lora is not None:
            lora_path = prepared.folder / "trained" / "lora.safetensors"
            _add_lora(prepared, lora_path, label, f"{digest}/lora", r, check)
        if tar.unet_file is not None:
            _add_finetune(prepared, tar.unet_file, f"{digest}/unet", r, check)
        prepared.tokens = tar.tokens
        prepared.embeddings = tar.embeddings
        prepared.special_params = dict(tar.special_params)
    elif kind == "safetensors":
        _add_lora(prepared, _staged(path, prepared.folder), label, digest, r, check)
    elif kind == "pickle":
        load_safetensors(path, label)  # raises the "never unpickled" message
    else:
        raise LoraError(f"{label}: the file is neither a tar nor a .safetensors LoRA", label, shown)


def _add_ref(prepared, i: int, ref, r: Resolver, check, tenant: str | None) -> None:
    """One LoRA of a stack: a name among `tenant`'s, or a .safetensors URL."""
    label = f"{ref.field}: {ref.written[:80]!r}"
    if ref.is_url:
        path = r.cache.fetch(ref.ref, ref.field, check)
        digest = r.cache.digest(path) or file_sha256(path)
        if sniff(path) != "safetensors":
            raise LoraError(
                f"{label} is not a .safetensors LoRA; a trainer's tar goes in "
                "replicate_weights (one trained version per request: the tokens <s0><s1> of "
                "two would collide)",
                ref.field,
            )
        path = _staged(path, prepared.folder, f"loras_{i}")
    else:
        path = r.library.path_of(ref.ref, tenant, ref.written, ref.field)
        digest = file_sha256(path)
    for other in prepared.loras:
        if other.key == digest:
            raise LoraError(
                f"{label} is the same file as {other.label}; give each LoRA once", ref.field
            )
    _add_lora(prepared, path, label, digest, r, check)
    prepared.loras[-1].weight = ref.weight


def _add_lora(prepared, path: Path, label: str, key: str, r: Resolver, check) -> None:
    source = LoraSource(key=key, label=label, path=path)
    if not r.is_resident(key):
        size = path.stat().st_size
        r.budget.acquire(size, check)
        prepared.host_bytes += size
        source.state = read_lora(path, label, r.linears, r.unet_config)
    prepared.loras.append(source)


def _add_finetune(prepared, path: Path, key: str, r: Resolver, check) -> None:
    label = "replicate_weights: unet.safetensors"
    for name, (dtype, shape) in safetensors_shapes(path, label).items():
        target = r.unet_shapes.get(name)
        if target is None:
            raise TrainedWeightsError(
                f"{label} has {name[:120]!r}, which the SDXL UNet does not have"
            )
        if dtype is None or target[1] != shape:
            raise TrainedWeightsError(
                f"{label} has {name[:120]!r} as {dtype} {shape}; the UNet needs a float tensor "
                f"of shape {target[1]}"
            )
    source = FinetuneSource(key=key, path=path)
    if not r.is_resident(key):
        size = path.stat().st_size
        r.budget.acquire(size, check)
        prepared.host_bytes += size
        source.tensors = load_safetensors(path, label)
    prepared.finetune = source


def _staged(path: Path, folder: Path, stem: str = "replicate_weights") -> Path:
    """The fetched file under a .safetensors name (diffusers reads LoRA metadata from it)."""
    staged = folder / f"{stem}.safetensors"
    try:
        os.link(path, staged)
    except OSError:
        shutil.copyfile(path, staged)
    return staged


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, remembered by (path, size, mtime) so that a LoRA shipped with the
    weights is hashed once, not on every request."""
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    with _digests_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]
