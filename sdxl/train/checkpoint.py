"""A training's whole state in one tar, to go on from later: the trained tensors (LoRA or UNet,
the new token rows), the optimizer's moments and steps, the schedule, the noise generator's
state and the step (the data order follows from the step and the seed). Two members:
`state.safetensors` (every tensor) and `state.json` (the rest, and the inputs it was made
with, which a resume must match). Read back without trusting it: only those two members, sizes
bounded, safetensors only, every tensor's shape checked against the training's own.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load, save

from sdxl.errors import InputError

TENSORS, META = "state.safetensors", "state.json"
LIMITS = {TENSORS: 48 << 30, META: 1 << 20}
INPUT = "resume_from_checkpoint"
VERSION = 1


class CheckpointError(InputError):
    def __init__(self, message: str):
        super().__init__(f"{INPUT}: {message}", INPUT)


def state_of(trainer, archive_digest: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a trainer now."""
    trained, tensors = trainer.trained, {}
    names = _unet_names(trained)
    for name, param in zip(names, trained.unet_params, strict=True):
        tensors[f"unet.{name}"] = param.detach().float().cpu().contiguous()
    for i, embedding in enumerate(trained.embeddings):
        tensors[f"rows.{i}"] = embedding.rows.detach().float().cpu().contiguous()
    optimizer = trainer.optimizer.state_dict()
    for index, state in optimizer["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    tensors["generator"] = trainer.generator.get_state()
    meta = {
        "version": VERSION,
        "step": trainer.step,
        "total": trainer.total,
        "inputs": trainer.req.describe(),
        "archive_sha256": archive_digest,
        "schedule": trainer.schedule.state_dict(),  # its lambdas are functions: None here
        "optimizer_groups": [
            {k: v for k, v in group.items() if k != "params"} for group in optimizer["param_groups"]
        ],
    }
    return tensors, meta


def write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in ((TENSORS, save(tensors)), (META, json.dumps(meta).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def seed_of(path: Path) -> int | None:
    """The seed a checkpoint's training ran with (a resume without a seed takes it)."""
    return read_meta(path)["inputs"].get("seed")


def read_meta(path: Path) -> dict:
    return read(path)[1]


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.name not in LIMITS or not member.isreg() or member.name in found:
                    raise CheckpointError(f"{member.name[:100]!r} is not a checkpoint member")
                if member.size > LIMITS[member.name]:
                    raise CheckpointError(f"{member.name} is larger than {LIMITS[member.name]}")
                found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CheckpointError(f"is not a checkpoint tar ({err})") from None
    if set(found) != set(LIMITS):
        raise CheckpointError(f"a checkpoint holds {TENSORS} and {META}")
    try:
        meta = json.loads(found[META])
        tensors = load(found[TENSORS])
    except Exception as err:
        raise CheckpointError(f"is damaged ({type(err).__name__})") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise CheckpointError("was written by another version of the trainer")
    return tensors, meta


def restore(trainer, tensors: dict[str, torch.Tensor], meta: dict, archive_digest: str) -> None:
    """Put a checkpoint's state into a trainer built from the same inputs."""
    differs = [k for k, v in trainer.req.describe().items() if meta["inputs"].get(k) != v]
    if differs or meta.get("archive_sha256") != archive_digest:
        what = ", ".join(differs) if differs else "input_images"
        raise CheckpointError(f"was made with other inputs ({what}); resume with the same ones")
    trained = trainer.trained
    with torch.no_grad():
        for name, param in zip(_unet_names(trained), trained.unet_params, strict=True):
            param.copy_(_tensor(tensors, f"unet.{name}", param))
        for i, embedding in enumerate(trained.embeddings):
            embedding.rows.copy_(_tensor(tensors, f"rows.{i}", embedding.rows))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = value.to(trainer.device)
    groups = trainer.optimizer.state_dict()["param_groups"]
    saved = meta["optimizer_groups"]
    if len(saved) != len(groups):
        raise CheckpointError("does not match this training's optimizer")
    for group, old in zip(groups, saved, strict=True):
        group.update({k: v for k, v in old.items() if k != "params"})
    trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    trainer.schedule.load_state_dict(meta["schedule"])
    trainer.generator.set_state(tensors["generator"])
    trainer.step = int(meta["step"])
    if trainer.step >= trainer.pivot:
        for embedding in trained.embeddings:
            embedding.rows.requires_grad_(False)


def _unet_names(trained) -> list[str]:
    by_id = {id(p): n for n, p in trained.unet.named_parameters()}
    return [by_id[id(p)] for p in trained.unet_params]


def _tensor(tensors, key: str, like: torch.Tensor) -> torch.Tensor:
    found = tensors.get(key)
    if found is None or tuple(found.shape) != tuple(like.shape):
        raise CheckpointError(f"does not match this training ({key})")
    return found.to(like.device, like.dtype)
