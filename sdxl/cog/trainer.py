"""The Cog trainer's work (train.py is its surface): the inputs checked (before the engine
loads the models), the training run through an engine that owns the GPU, its log printed
(`sdxl.train.console`: the step lines with `verbose`), the tar handed back.

One engine per Cog worker process, loaded at the first training and kept (a Cog train
container runs trainings one after another). Cog's cancel arrives in the waiting thread as an
exception: the training stops at its next step, leaves a checkpoint in its folder, and the
exception goes on.
"""

from __future__ import annotations

import pathlib
import tempfile

from sdxl import logs
from sdxl.cog.inputs import uploaded
from sdxl.train.options import FILE_INPUTS, TRAIN_INPUTS, TrainRequest, check_train_request

_engine = None


def engine():
    global _engine
    if _engine is None:
        from sdxl.engine import Engine, EngineSettings
        from sdxl.settings.tree import load_settings

        logs.configure(job_lines=False)  # train() prints each line into the training's logs
        settings = load_settings()
        started = Engine(settings.runtime.build(), EngineSettings.from_tree(settings))
        started.load()
        _engine = started
    return _engine


def train(inputs: dict) -> pathlib.Path:
    """`train()`'s arguments -> trained_model.tar (in a folder of the training's own)."""
    from sdxl.train.console import shown, webui_lines
    from sdxl.train.training import Training, TrainSettings

    values = {name: inputs[name] for name in TRAIN_INPUTS if name in inputs}
    check_train_request(TrainRequest(**values))  # before the files come and any model loads
    for name in FILE_INPUTS:
        if values.get(name) is not None:
            values[name] = str(uploaded(name, values[name]))
    request = TrainRequest(**values)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="sdxl-training-"))
    work = Training(request, folder, TrainSettings.from_env())

    def logged(line: str) -> None:
        if shown(line, request.verbose):
            print(line)

    result = engine().run_training(work, on_log=logged)
    for line in webui_lines(result.weights):
        print(line)
    return result.weights
