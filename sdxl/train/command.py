"""`python -m sdxl train -i input_images=@photos.zip -i max_train_steps=500 -o DIR`: a training
on this machine, for one without Docker. The same trainer Cog's train mode runs (train.py), in
this process: DIR gets trained_model.tar, and DIR/checkpoints/ the checkpoints
(`-i checkpointing_steps=N`; a cancelled training leaves one), to go on from with
`-i resume_from_checkpoint=@DIR/checkpoints/step-N.tar`.

The inputs are checked before any model is loaded (a wrong one exits 2 at once). On stderr:
the training's log as it runs (`sdxl.train.console`: the images, the captions, the seed used;
with `verbose`, a line per step) above a progress bar (step, loss, ETA), then the tar's web
UI files and, when no seed was given, the seed drawn; on stdout, the tar's path."""

from __future__ import annotations

import difflib
import logging
import shutil
import sys
from pathlib import Path

from sdxl.errors import UserError
from sdxl.inputs.command_line import typed_value
from sdxl.train.options import TRAIN_INPUTS, TrainRequest, check_train_request


class CommandError(RuntimeError):
    """What to print to stderr before exiting non-zero."""


def request_of(pairs: list[str]) -> TrainRequest:
    """The request the pairs spell, checked (CommandError names the input at fault)."""
    values: dict = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        spec = TRAIN_INPUTS.get(name)
        if not sep or spec is None:
            raise CommandError(_unknown(pair, name))
        values[name] = _value(name, text, spec.kind)
    if "input_images" not in values:
        raise CommandError("-i input_images=@photos.zip is required")
    request = TrainRequest(**values)
    try:
        check_train_request(request)  # the training's own check, before any model loads
    except UserError as err:
        raise CommandError(str(err)) from None
    return request


def _unknown(pair: str, name: str) -> str:
    close = difflib.get_close_matches(name, list(TRAIN_INPUTS), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    known = ", ".join(TRAIN_INPUTS)
    return f"-i {pair[:80]!r}: {hint}expected name=value with a name of: {known}"


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
    try:
        request = request_of(pairs)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from sdxl.engine import Engine, EngineSettings, JobEvents
    from sdxl.settings.tree import load_settings
    from sdxl.train.console import shown, webui_lines
    from sdxl.train.training import Training, TrainSettings

    logging.getLogger("sdxl.engine").setLevel(logging.WARNING)  # its job lines: printed below
    out.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    engine = Engine(settings.runtime.build(), EngineSettings.from_tree(settings))
    engine.load()
    work = Training(request, out, TrainSettings.from_group(settings.train))
    bar = tqdm(total=request.max_train_steps, unit="step", dynamic_ncols=True, file=sys.stderr)

    def stepped(job, stage, done, total):
        bar.total = total
        bar.n = done
        bar.set_postfix(loss=f"{work.losses[-1]:.4f}")
        bar.refresh()

    def logged(line: str) -> None:
        if shown(line, request.verbose):
            bar.write(line, file=sys.stderr)

    try:
        result = engine.run_training(work, on_log=logged, events=JobEvents(step=stepped))
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
    for line in webui_lines(final):
        print(line, file=sys.stderr)
    if request.seed is None:
        print(f"seed {result.seed}: -i seed={result.seed} trains the same again", file=sys.stderr)
    print(final)
    return 0
