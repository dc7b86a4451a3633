"""The trainer on the tiny model, through the engine, on the CPU: the tar's layout and keys; its
weights through `replicate_weights` (a token only where the prompt says it); its webui files in
diffusers' own loaders giving the same pixels; the loss on its own images lowered; a resumed
training equal to an uninterrupted one; a full fine-tune that trains the UNet; several
concepts; and predictions between training steps equal to an idle engine's."""

from __future__ import annotations

import dataclasses
import json
import tarfile
import threading
import time

import numpy as np
import pytest
import torch
from conftest import start_engine
from safetensors.torch import load, load_file
from support.archives import photos, write_zip

from sdxl.adapters.fetch import DownloadCache
from sdxl.engine import JobEvents
from sdxl.engine.jobs import JobStatus
from sdxl.inputs.request import Request
from sdxl.settings import FetchSettings
from sdxl.train.options import TrainRequest
from sdxl.train.training import Training

SIZE = 256
STEPS = 12


def pixels(result) -> list[bytes]:
    return [np.asarray(im).tobytes() for im in result.images]


def members_of(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def small(**kw) -> TrainRequest:
    base = dict(
        seed=5,
        resolution=SIZE,
        train_batch_size=2,
        max_train_steps=STEPS,
        lora_rank=4,
        lora_lr=5e-3,
        ti_lr=5e-3,
        lr_warmup_steps=2,
        name="tiny",
    )
    return TrainRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def engine(tiny_weights, folder):
    fetch = FetchSettings(cache_dir=folder / "cache", local_dirs=(folder,), public_only=False)
    eng = start_engine(tiny_weights, cache=DownloadCache(fetch), fetch=fetch)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def zipped(folder):
    return write_zip(folder / "photos.zip", photos(3))


@pytest.fixture(scope="module")
def trained(engine, folder, zipped):
    req = small(input_images=str(zipped))
    return engine.run_training(Training(req, folder / "first"))


def image(engine, **kw):
    base = dict(width=SIZE, height=SIZE, num_inference_steps=3, seed=11)
    return engine.run(Request(**{**base, **kw}))


def test_the_tar_has_the_references_layout_and_the_web_uis_files(trained):
    found = members_of(trained.weights)
    assert set(found) == {
        "lora.safetensors",
        "embeddings.pti",
        "special_params.json",
        "webui/tiny.safetensors",
        "webui/embeddings.safetensors",
        "webui/embeddings/tiny_TOK.safetensors",
    }
    lora = load(found["lora.safetensors"])
    assert lora and all(".processor.to_" in k and "_lora." in k for k in lora)
    assert {k.rsplit(".", 2)[-2] for k in lora} == {"down", "up"}
    assert all(v.dtype == torch.float32 for v in lora.values())
    kohya = load(found["webui/tiny.safetensors"])
    assert all(k.startswith("lora_unet_") for k in kohya)
    alphas = {k: v for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas and all(int(v) == 4 for v in alphas.values())  # alpha = rank: scale 1
    assert len(kohya) == len(lora) * 3 // 2  # down, up and alpha per module
    pti = load(found["embeddings.pti"])
    webui = load(found["webui/embeddings.safetensors"])
    assert pti["text_encoders_0"].shape == webui["clip_l"].shape == (2, 32)  # tiny TE1 width
    assert pti["text_encoders_1"].shape == webui["clip_g"].shape == (2, 64)
    assert torch.equal(pti["text_encoders_1"], webui["clip_g"])
    own = load(found["webui/embeddings/tiny_TOK.safetensors"])
    assert torch.equal(own["clip_l"], pti["text_encoders_0"])
    assert json.loads(found["special_params.json"]) == {"TOK": "<s0><s1>"}
    assert len(trained.losses) == STEPS and trained.steps == STEPS


def test_the_weights_change_only_prompts_that_name_the_token(engine, trained):
    weights = str(trained.weights)
    plain = image(engine, prompt="a photo of TOK")
    tuned = image(engine, prompt="a photo of TOK", replicate_weights=weights, lora_scale=0.0)
    assert pixels(tuned) != pixels(plain)  # the trained tokens, at lora_scale 0
    other = image(engine, prompt="a photo of a cat", replicate_weights=weights, lora_scale=0.0)
    assert pixels(other) == pixels(image(engine, prompt="a photo of a cat"))
    tokyo = image(engine, prompt="TOKYO at night", replicate_weights=weights, lora_scale=0.0)
    assert pixels(tokyo) == pixels(image(engine, prompt="TOKYO at night"))  # a whole word only


def test_the_webui_files_in_diffusers_loaders_give_the_replicate_weights_pixels(
    engine, trained, tiny_weights, folder
):
    from diffusers import StableDiffusionXLPipeline

    found = members_of(trained.weights)
    (folder / "webui").mkdir(exist_ok=True)
    (folder / "webui" / "lora.safetensors").write_bytes(found["webui/tiny.safetensors"])
    (folder / "webui" / "embeddings.safetensors").write_bytes(found["webui/embeddings.safetensors"])
    pipe = StableDiffusionXLPipeline.from_pretrained(
        tiny_weights / "base", torch_dtype=torch.float32, add_watermarker=False
    )
    pipe.load_lora_weights(str(folder / "webui" / "lora.safetensors"))
    state = load_file(folder / "webui" / "embeddings.safetensors")
    tokens = ["<s0>", "<s1>"]
    pipe.load_textual_inversion(
        state["clip_l"], token=tokens, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    expected = pipe(
        prompt="a photo of <s0><s1>",
        width=SIZE,
        height=SIZE,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(11),
    ).images[0]
    got = image(
        engine,
        prompt="a photo of TOK",
        replicate_weights=str(trained.weights),
        lora_scale=1.0,
        apply_watermark=False,
        disable_safety_checker=True,
    )
    assert np.asarray(got.images[0]).tobytes() == np.asarray(expected).tobytes()


def trainer_of(engine, req: TrainRequest, folder):
    """A `Trainer` on the engine's models, built as a training builds it (under its lock)."""
    from sdxl.train import trainable
    from sdxl.train.archive import read_archive
    from sdxl.train.loop import Trainer, encode_examples
    from sdxl.train.preprocess import HelperModels, preprocess

    models = engine.models
    archive = read_archive(req.input_images, "infer", folder, "TOK")
    prepared = preprocess(archive.images, req, HelperModels(models.weights_dir, "cpu", None))
    generator = torch.Generator().manual_seed(5)
    trained = trainable.build(models, ["TOK"], req.is_lora, req.lora_rank, generator)
    return Trainer(models, trained, req, encode_examples(models, prepared, trained.tokens, 5))


def test_training_lowers_the_loss_on_its_own_images(engine, zipped, folder):
    """The denoising loss on the training images with fixed noise and timesteps, before the
    first step and after the last."""
    req = small(input_images=str(zipped), max_train_steps=30, lr_warmup_steps=0)
    with engine.lock:
        trainer = trainer_of(engine, req, folder / "loss")
        before = trainer.evaluate(seed=123)
        while trainer.step < trainer.total:
            trainer.train_step()
        after = trainer.evaluate(seed=123)
    assert after < before * 0.95, (before, after)


def test_gradients_are_clipped_before_each_step(engine, zipped, folder, monkeypatch):
    """The norm of the gradients the optimiser steps with is at most MAX_GRAD_NORM (the
    reference passed max_grad_norm and never applied it); set tiny here, so that every step
    clips."""
    from sdxl.train import loop

    monkeypatch.setattr(loop, "MAX_GRAD_NORM", 1e-3)
    req = small(input_images=str(zipped), max_train_steps=4)
    norms: list[float] = []
    with engine.lock:
        trainer = trainer_of(engine, req, folder / "clipped")

        def measure(optimizer, args, kwargs):  # before each optimiser step
            grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
            each = [torch.linalg.vector_norm(g) for g in grads if g is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack(each))))

        trainer.optimizer.register_step_pre_hook(measure)
        while trainer.step < trainer.total:
            trainer.train_step()
    assert len(norms) == 4 and all(n <= 1e-3 * (1 + 1e-5) for n in norms), norms


@pytest.mark.parametrize(
    ("is_lora", "steps", "every", "resume_at"),
    [
        (True, 8, 3, 6),  # after the pivot (step 4): the token rows frozen, embeddings cached
        # before it: the token rows still training
        pytest.param(True, 8, 3, 3, marks=pytest.mark.slow),
        # a full fine-tune: the UNet's parameters and their optimiser state
        pytest.param(False, 6, 2, 2, marks=pytest.mark.slow),
    ],
)
def test_a_resumed_training_ends_with_the_uninterrupted_ones_weights(
    engine, folder, zipped, is_lora, steps, every, resume_at
):
    req = small(
        input_images=str(zipped),
        max_train_steps=steps,
        checkpointing_steps=every,
        is_lora=is_lora,
        unet_learning_rate=1e-3,
    )
    name = f"{is_lora}-{resume_at}"
    whole = engine.run_training(Training(req, folder / f"whole-{name}"))
    checkpoint = folder / f"whole-{name}" / "checkpoints" / f"step-{resume_at}.tar"
    assert checkpoint.is_file()
    again = dataclasses.replace(req, resume_from_checkpoint=str(checkpoint), seed=None)
    resumed = engine.run_training(Training(again, folder / f"resumed-{name}"))
    assert resumed.steps == steps - resume_at and resumed.seed == whole.seed  # its seed
    assert members_of(resumed.weights) == members_of(whole.weights)  # byte for byte


def test_a_checkpoint_of_other_inputs_is_refused(engine, folder, zipped):
    req = small(input_images=str(zipped), max_train_steps=4, checkpointing_steps=2)
    engine.run_training(Training(req, folder / "other"))
    wrong = dataclasses.replace(
        req,
        lora_rank=8,
        resume_from_checkpoint=str(folder / "other" / "checkpoints" / "step-2.tar"),
    )
    with pytest.raises(Exception, match="resume_from_checkpoint: was made with other inputs"):
        engine.run_training(Training(wrong, folder / "wrong"))


def test_a_full_fine_tune_trains_the_unet(engine, folder, zipped):
    req = small(input_images=str(zipped), is_lora=False, max_train_steps=3, unet_learning_rate=1e-3)
    result = engine.run_training(Training(req, folder / "full"))
    found = members_of(result.weights)
    assert "unet.safetensors" in found and "lora.safetensors" not in found
    tuned = load(found["unet.safetensors"])
    served = {  # the served UNet's own tensors (resident LoRAs of other tests aside)
        k.replace(".base_layer.", "."): v
        for k, v in engine.models.base.unet.state_dict().items()
        if "lora_" not in k
    }
    changed = [k for k, v in tuned.items() if not torch.equal(v, served[k])]
    assert len(changed) > len(tuned) // 2  # the UNet trained (the reference's trained nothing)
    assert not any("norm" in k or "time_" in k for k in tuned)
    plain = image(engine, prompt="a photo of TOK")
    tuned_image = image(engine, prompt="a photo of TOK", replicate_weights=str(result.weights))
    assert pixels(tuned_image) != pixels(plain)


def test_concept_folders_train_a_token_each(engine, folder):
    archive = write_zip(
        folder / "two.zip",
        {**photos(2, "DOG/", "a photo of DOG"), **photos(2, "CAT/", "a photo of CAT")},
    )
    req = small(input_images=str(archive), max_train_steps=2)
    result = engine.run_training(Training(req, folder / "two"))
    found = members_of(result.weights)
    assert json.loads(found["special_params.json"]) == {"DOG": "<s0><s1>", "CAT": "<s2><s3>"}
    pti = load(found["embeddings.pti"])
    assert pti["text_encoders_0"].shape[0] == 4
    # The web UIs name an embedding by its file: one per concept, with its own two rows.
    for word, rows in (("DOG", slice(0, 2)), ("CAT", slice(2, 4))):
        own = load(found[f"webui/embeddings/tiny_{word}.safetensors"])
        assert torch.equal(own["clip_l"], pti["text_encoders_0"][rows])
        assert torch.equal(own["clip_g"], pti["text_encoders_1"][rows])


def test_predictions_between_training_steps_give_an_idle_engines_pixels(
    engine, folder, zipped, tiny_weights
):
    """A prediction prepared while the training runs its step 3 starts after that step and
    ends before step 4 (the training's step counter seen by each of its denoising steps), and
    its pixels are a fresh engine's: the training changes none of the served models."""
    fresh = start_engine(tiny_weights)
    try:
        expected = pixels(image(fresh, prompt="a photo of a cat", seed=3))
    finally:
        fresh.close()
    at_step_3, prepared = threading.Event(), threading.Event()
    seen: list[int] = []  # the training's steps done, at each denoising step of the prediction

    def training_step(job, stage, done, total):  # on the GPU thread, ending step `done`
        if done == 3:
            at_step_3.set()
            assert prepared.wait(120)  # the GPU held until the prediction waits prepared

    req = small(input_images=str(zipped), max_train_steps=40)
    events = JobEvents(step=training_step)
    training = engine.submit_training(Training(req, folder / "busy"), events=events)
    assert at_step_3.wait(120)
    prediction = engine.submit(
        Request(prompt="a photo of a cat", width=SIZE, height=SIZE, num_inference_steps=3, seed=3),
        events=JobEvents(step=lambda job, stage, done, total: seen.append(training.steps["train"])),
    )
    while prediction.status != JobStatus.READY:  # prepared off the GPU thread, which waits
        assert not prediction.done()
        time.sleep(0.01)
    prepared.set()
    assert prediction.wait(120) and training.wait(300)
    assert seen == [3, 3, 3]  # it ran whole between the training's steps 3 and 4
    assert pixels(prediction.result()) == expected
    assert training.status == "succeeded" and training.steps["train"] == 40


def test_a_cancelled_training_stops_at_its_next_step_and_leaves_a_checkpoint(
    engine, folder, zipped
):
    before = pixels(image(engine, prompt="a photo of a cat", seed=4))

    def cancel_at_3(job, stage, done, total):
        if done == 3:
            job.cancel("stop")

    req = small(input_images=str(zipped), max_train_steps=500)
    job = engine.submit_training(
        Training(req, folder / "cancel"), events=JobEvents(step=cancel_at_3)
    )
    assert job.wait(120) and job.status == "canceled"
    assert job.steps["train"] == 3  # no step after the one the cancel came in
    assert (folder / "cancel" / "checkpoints" / "step-3.tar").is_file()
    assert pixels(image(engine, prompt="a photo of a cat", seed=4)) == before  # engine sound


def test_out_of_memory_in_a_training_names_what_to_lower(engine, folder, zipped, monkeypatch):
    from sdxl.engine import OutOfMemory
    from sdxl.train.loop import Trainer

    def out_of_memory(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    job = engine.submit_training(Training(small(input_images=str(zipped)), folder / "oom"))
    assert job.wait(120) and job.status == "failed"
    with pytest.raises(OutOfMemory, match="lower resolution, train_batch_size or lora_rank"):
        job.result()
    monkeypatch.undo()
    assert engine.run(
        Request(prompt="a cat", width=SIZE, height=SIZE, num_inference_steps=2)
    ).images


def test_a_seed_makes_a_training_reproducible_and_zero_is_a_seed(engine, folder, zipped):
    def trained_with(seed: int, name: str) -> dict[str, bytes]:
        req = small(input_images=str(zipped), max_train_steps=2, seed=seed)
        result = engine.run_training(Training(req, folder / name))
        assert result.seed == seed  # 0 stays 0 (the reference took it for "random")
        return members_of(result.weights)

    assert trained_with(0, "zero") == trained_with(0, "zero-again")


@pytest.mark.slow  # test_train_cli runs the command by default: its tar, log and refusals
def test_the_train_command_writes_the_tar_and_refuses_a_wrong_input(tiny_weights, tmp_path, zipped):
    """`python -m sdxl train`, as a user without Docker runs it."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "SDXL_WEIGHTS_DIR": str(tiny_weights), "OMP_NUM_THREADS": "1"}
    inputs = ["max_train_steps=2", f"resolution={SIZE}", "train_batch_size=1", "lora_rank=4"]
    argv = [sys.executable, "-m", "sdxl", "train", "-i", f"input_images=@{zipped}"]
    for pair in inputs:
        argv += ["-i", pair]
    done = subprocess.run(
        [*argv, "-o", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "trained_model.tar")
    assert "2/2" in done.stderr  # the progress bar's last step
    assert {"lora.safetensors", "embeddings.pti"} <= set(members_of(tmp_path / "trained_model.tar"))
    wrong = subprocess.run(
        [*argv, "-i", "max_train_step=2", "-o", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "max_train_step" in wrong.stderr
