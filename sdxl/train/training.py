"""One training as the engine runs it, phase by phase on the engine's threads:

1. `prepare` (a preparation thread): the inputs checked, the archive read and checked (the
   cancel checked at least every MiB decompressed), the seed fixed (a resume without one takes
   its checkpoint's);
2. `slices` (the GPU thread; each slice under the engine's lock, predictions may run between
   two): the preprocessing, each helper model loaded and freed in turn; the training's own
   modules built and the latents encoded; a checkpoint restored; each training step, with a
   checkpoint every `checkpointing_steps`; the trained tensors taken out, the modules freed;
3. `finish` (the finishing thread): `trained_model.tar` written.

A training that stops early (cancelled, or its server stopping) after at least one step leaves
a checkpoint (`checkpoints/step-<n>.tar` in its folder, and `on_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sdxl.engine.jobs import OutOfMemory, notify
from sdxl.inputs.request import draw_seed
from sdxl.train import checkpoint, output, trainable
from sdxl.train.archive import Archive, read_archive
from sdxl.train.loop import Trainer, encode_examples
from sdxl.train.options import TrainRequest, check_train_request
from sdxl.train.preprocess import HelperModels, preprocess
from sdxl.train.train_settings import TrainSettings

log = logging.getLogger("sdxl.train")

TAR_NAME = "trained_model.tar"


@dataclass
class TrainingResult:
    weights: Path  # trained_model.tar
    steps: int
    seed: int
    losses: list[float] = field(default_factory=list)  # one per step, in order
    checkpoint: Path | None = None  # the last one written


class Training:
    """One training's work; `job` reports its logs and steps (sdxl.engine.jobs.Job)."""

    def __init__(
        self,
        req: TrainRequest,
        workdir: Path,
        settings: TrainSettings = TrainSettings(),  # noqa: B008 (frozen)
        on_checkpoint: Callable[[Path, int], None] | None = None,
    ):
        self.req = req
        self.workdir = Path(workdir)
        self.settings = settings
        self.on_checkpoint = on_checkpoint
        self.archive: Archive | None = None
        self.digest = ""
        self.result: TrainingResult | None = None
        self._members: dict[str, bytes] = {}
        self._losses: list[float] = []
        self._last_checkpoint: Path | None = None
        self._steps_began: float | None = None  # monotonic: when this run's steps began

    @property
    def losses(self) -> list[float]:
        """The loss of each step run so far, in order."""
        return self._losses

    def steps_per_second(self) -> float | None:
        """The training steps run per second since the steps began (None before that)."""
        if self._steps_began is None or not self._losses:
            return None
        return len(self._losses) / max(time.monotonic() - self._steps_began, 1e-9)

    def describe(self) -> str:
        req = self.req
        kind = f"LoRA rank {req.lora_rank}" if req.is_lora else "full fine-tune"
        return (
            f"training: {kind}, {req.max_train_steps} steps at most, batch "
            f"{req.train_batch_size}, {req.resolution}x{req.resolution}, seed {req.seed}"
        )

    # ---- 1. a preparation thread ------------------------------------------------------------
    def prepare(self, check: Callable[[], None]) -> None:
        req = self.req
        check_train_request(req)
        if req.seed is None:
            found = None
            if req.resume_from_checkpoint:
                found = checkpoint.seed_of(Path(req.resume_from_checkpoint))
            self.req = req = dataclasses.replace(req, seed=draw_seed() if found is None else found)
        check()
        self.digest = _sha256(Path(req.input_images), check)
        self.archive = read_archive(
            Path(req.input_images),
            req.input_images_filetype,
            self.workdir / "images",
            req.token_string,
            self.settings.archive,
            check,  # at least every MiB decompressed: a cancel stops the read
        )
        check()

    # ---- 2. the GPU thread, one slice at a time ---------------------------------------------
    def slices(self, models, job) -> Iterator[str]:
        req, archive = self.req, self.archive
        job.log(self.describe())
        job.log(f"{len(archive.images)} images of {', '.join(archive.concepts)}")
        for line in archive.skipped_lines():
            job.log(line)
        helpers = HelperModels(models.weights_dir, models.device, models.dtype)
        prepared = preprocess(archive.images, req, helpers, job.check, job.log)
        for item in prepared:
            job.log(f"caption: {item.caption}")
        yield "preprocessed"
        generator = _generator(req.seed)
        trained = trainable.build(models, archive.concepts, req.is_lora, req.lora_rank, generator)
        if self._checkpointing(models):
            trained.unet.enable_gradient_checkpointing()
        examples = encode_examples(models, prepared, trained.tokens, req.seed)
        trainer = Trainer(models, trained, req, examples)
        first = 0
        try:
            if req.resume_from_checkpoint:
                tensors, meta = checkpoint.read(Path(req.resume_from_checkpoint))
                checkpoint.restore(trainer, tensors, meta, self.digest)
                job.log(f"resumed from step {trainer.step} of {trainer.total}")
            yield "ready"
            started, first = time.monotonic(), trainer.step
            self._steps_began = started
            while trainer.step < trainer.total:
                job.check()
                loss = _trained(trainer, req)
                self._losses.append(loss)
                done = trainer.step
                job.steps["train"] = done
                job.log(_line(trainer, loss, started, first))
                if done % req.checkpointing_steps == 0 and done < trainer.total:
                    self._save(trainer, job)
                notify(job.events.step, job, "train", done, trainer.total)
                yield "step"
            self._members = output.tar_members(trained, models.dtype, req.name)
        except BaseException:
            if trainer.step > first:
                self._save(trainer, job)  # stopped early: go on from here later
            raise
        finally:
            del trainer, trained, examples
            from sdxl.model.device import free_device_memory

            free_device_memory(models.device)
        self.result = TrainingResult(
            self.workdir / TAR_NAME,
            len(self._losses),
            req.seed,
            self._losses,
            self._last_checkpoint,
        )
        yield "trained"

    def out_of_memory(self) -> OutOfMemory:
        return out_of_memory(self.req)

    # ---- 3. the finishing thread -------------------------------------------------------------
    def finish(self) -> TrainingResult:
        output.write_tar(self.result.weights, self._members)
        self._members = {}
        shutil.rmtree(self.workdir / "images", ignore_errors=True)  # copies of the archive's
        return self.result

    def _checkpointing(self, models) -> bool:
        switch = self.settings.gradient_checkpointing
        return models.device.type == "cuda" if switch == "auto" else switch == "1"

    def _save(self, trainer: Trainer, job) -> None:
        folder = self.workdir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        tensors, meta = checkpoint.state_of(trainer, self.digest)
        path = checkpoint.write(folder / f"step-{trainer.step}.tar", tensors, meta)
        self._last_checkpoint = path
        job.log(f"checkpoint at step {trainer.step}: {path.name}")
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, trainer.step)


def out_of_memory(req: TrainRequest) -> OutOfMemory:
    return OutOfMemory(
        f"the GPU ran out of memory training at resolution={req.resolution} with "
        f"train_batch_size={req.train_batch_size} and lora_rank={req.lora_rank}; lower "
        "resolution, train_batch_size or lora_rank",
        "train_batch_size",
        req.train_batch_size,
    )


def _trained(trainer: Trainer, req: TrainRequest) -> float:
    import torch

    try:
        return trainer.train_step()
    except torch.OutOfMemoryError:
        raise out_of_memory(req) from None


def _line(trainer: Trainer, loss: float, started: float, first: int) -> str:
    done, total = trainer.step, trainer.total
    rate = (time.monotonic() - started) / max(1, done - first)
    eta = int(rate * (total - done))
    return (
        f"step {done}/{total} loss {loss:.4f} lr {trainer.lr:.2e} ({rate:.2f} s/step, ETA "
        f"{eta // 60}:{eta % 60:02d})"
    )


def _generator(seed: int):
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def _sha256(path: Path, check: Callable[[], None]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            check()
    return digest.hexdigest()
