"""`python -m sdxl train -i input_images=@photos.zip -i max_train_steps=500 -o DIR`: a training
on this machine, for one without Docker, with a progress bar (step, loss, ETA). The same
trainer Cog's train mode runs (train.py), in this process: DIR gets trained_model.tar, and
DIR/checkpoints/ the checkpoints (`-i checkpointing_steps=N`; a cancelled training leaves
one), to go on from with `-i resume_from_checkpoint=@DIR/checkpoints/step-N.tar`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sdxl.errors import UserError
from sdxl.inputs.command_line import typed_value
from sdxl.train.options import TRAIN_INPUTS, TrainRequest


class CommandError(RuntimeError):
    """What to print to stderr before exiting non-zero."""


def request_of(pairs: list[str]) -> TrainRequest:
    values: dict = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        spec = TRAIN_INPUTS.get(name)
        if not sep or spec is None:
            known = ", ".join(TRAIN_INPUTS)
            raise CommandError(f"-i {pair[:80]!r}: expected name=value with a name of: {known}")
        values[name] = _value(name, text, spec.kind)
    if "input_images" not in values:
        raise CommandError("-i input_images=@photos.zip is required")
    return TrainRequest(**values)


def _value(name: str, text: str, kind: str):
    if kind == "file":
        path = Path(text.removeprefix("@"))
        if not path.is_file():
            raise CommandError(f"-i {name}: {path} is not a file")
        return str(path)
    try:
        return typed_value(name, text, kind)
    except ValueError as err:
        raise CommandError(str(err)) from None


def run(pairs: list[str], out: Path) -> int:
    from tqdm import tqdm

    from sdxl.engine import Engine, EngineSettings, JobEvents
    from sdxl.settings import Runtime
    from sdxl.train.training import Training, TrainSettings

    try:
        request = request_of(pairs)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine(Runtime.from_env(), EngineSettings.from_env())
    engine.load()
    work = Training(request, out, TrainSettings.from_env())
    bar = tqdm(total=request.max_train_steps, unit="step", dynamic_ncols=True)

    def stepped(job, stage, done, total):
        bar.total = total
        bar.n = done
        bar.set_postfix(loss=f"{work.losses[-1]:.4f}")
        bar.refresh()

    try:
        result = engine.run_training(work, events=JobEvents(step=stepped))
    except UserError as err:
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped; checkpoints are in {out / 'checkpoints'}", file=sys.stderr)
        return 130
    finally:
        engine.close()
    bar.close()
    final = out / "trained_model.tar"
    if result.weights != final:
        shutil.move(result.weights, final)
    print(final)
    return 0
