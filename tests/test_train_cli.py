"""`python -m sdxl train` as a user without Docker meets it, on the tiny model: a wrong input is
refused before any model is loaded (the weights folder is empty: loading would fail first);
the training's log on stderr as it runs (the images, the captions, the seed it drew, a line per
step with `verbose`); the drawn seed trains the same weights again; `caption_prefix` follows a
changed `token_string`; the tar's web UI files named after `name`, else a hash of the weights.
The Cog trainer checks its inputs before its engine loads; a full fine-tune's files are named
after the hash of its unet.safetensors."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from support.archives import photos, write_zip

from sdxl.errors import InputError
from sdxl.train import output
from sdxl.train.trainable import Trained

SMALL = ["max_train_steps=2", "resolution=256", "train_batch_size=1", "lora_rank=4"]


def members_of(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def train(weights, out, *pairs: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDXL_WEIGHTS_DIR": str(weights), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "sdxl", "train", "-o", str(out)]
    for pair in pairs:
        argv += ["-i", pair]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def uncaptioned(tmp_path_factory):
    """Three images without captions: BLIP writes them after caption_prefix."""
    folder = tmp_path_factory.mktemp("cli")
    return write_zip(folder / "photos.zip", photos(3, caption=None))


@pytest.mark.parametrize(
    "pair, said",
    [
        ("lr_scheduler=cosine", "lr_scheduler='cosine' is not supported; choose one of"),
        ("resolution=260", "resolution=260 is not a multiple of 8; use 256 or 264"),
        ("token_string=two words", "token_string='two words' is not a token"),
        ("seed=4294967296", "seed=4294967296 is out of range; use 0..4294967295"),
        ("name=../dog", "name='../dog' is not a file name"),
        ("name=CON", "name='CON' is not a file name"),
        ("max_train_step=2", "did you mean max_train_steps?"),
        ("caption_prefix=a photo of, ", "does not contain"),
    ],
)
def test_a_wrong_input_fails_before_any_model_is_loaded(tmp_path, uncaptioned, pair, said):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    done = train(empty, tmp_path / "out", f"input_images=@{uncaptioned}", pair)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "loaded SDXL" not in done.stderr
    assert not (tmp_path / "out").exists() and done.stdout == ""


@pytest.fixture(scope="module")
def drawn(tiny_weights, uncaptioned, tmp_path_factory):
    """A training with no seed and only token_string changed, verbose (the default)."""
    out = tmp_path_factory.mktemp("drawn")
    done = train(tiny_weights, out, f"input_images=@{uncaptioned}", "token_string=ZWX", *SMALL)
    assert done.returncode == 0, done.stderr
    return done, out / "trained_model.tar"


def test_the_log_shows_the_images_captions_the_drawn_seed_and_each_step(drawn):
    done, tar = drawn
    assert done.stdout.strip() == str(tar)
    log = done.stderr
    assert "3 images of ZWX" in log
    captions = re.findall(r"^caption: (.*)$", log, re.MULTILINE)
    assert len(captions) == 3 and all(c.startswith("a photo of ZWX,") for c in captions), log
    (seed,) = re.findall(r"^training: .*, seed (\d+)$", log, re.MULTILINE)
    assert 0 <= int(seed) <= 2**32 - 1
    assert f"-i seed={seed} trains the same again" in log
    assert re.search(r"^step 1/2 loss \d", log, re.MULTILINE)
    assert re.search(r"^step 2/2 loss \d", log, re.MULTILINE)
    assert "job 1 done" not in log  # the engine's own line is not printed twice


def test_token_string_alone_is_the_trained_word_and_the_names_default_to_the_weights_hash(drawn):
    _, tar = drawn
    found = members_of(tar)
    assert found["special_params.json"] == b'{"ZWX": "<s0><s1>"}'
    short = hashlib.sha256(found["lora.safetensors"]).hexdigest()[:8]
    webui = {name for name in found if name.startswith("webui/")}
    assert webui == {
        f"webui/{short}.safetensors",
        "webui/embeddings.safetensors",
        f"webui/embeddings/{short}_ZWX.safetensors",
    }


@pytest.mark.slow  # a second training (about 11 s): the drawn seed's reproducibility
def test_the_drawn_seed_trains_the_same_weights_and_name_names_the_files(
    drawn, tiny_weights, uncaptioned, tmp_path
):
    first, tar = drawn
    (seed,) = re.findall(r"^training: .*, seed (\d+)$", first.stderr, re.MULTILINE)
    pairs = [f"seed={seed}", "verbose=false", "name=my-dog", "token_string=ZWX", *SMALL]
    again = train(tiny_weights, tmp_path, f"input_images=@{uncaptioned}", *pairs)
    assert again.returncode == 0, again.stderr
    assert f", seed {seed}" in again.stderr and "trains the same again" not in again.stderr
    assert "3 images of ZWX" in again.stderr
    assert not re.search(r"^step \d+/2 loss", again.stderr, re.MULTILINE)  # not verbose
    assert "2/2" in again.stderr  # the progress bar still counts the steps
    before, after = members_of(tar), members_of(tmp_path / "trained_model.tar")
    assert after["lora.safetensors"] == before["lora.safetensors"]
    short = hashlib.sha256(before["lora.safetensors"]).hexdigest()[:8]
    assert after["webui/my-dog.safetensors"] == before[f"webui/{short}.safetensors"]
    embedding = after["webui/embeddings/my-dog_ZWX.safetensors"]
    assert embedding == before[f"webui/embeddings/{short}_ZWX.safetensors"]
    assert "<lora:my-dog:1>" in again.stderr and "write my-dog_ZWX in the prompt" in again.stderr


def test_the_cog_trainer_checks_its_inputs_before_its_engine_loads(tmp_path, uncaptioned):
    from sdxl.cog import trainer

    assert trainer._engine is None
    inputs = {"input_images": uncaptioned, "lr_scheduler": "constant", "name": "my dog"}
    with pytest.raises(InputError) as caught:
        trainer.train(inputs)
    assert caught.value.field == "name" and "not a file name" in str(caught.value)
    assert trainer._engine is None


def test_a_full_fine_tunes_web_ui_files_are_named_after_the_hash_of_its_unet():
    unet = torch.nn.Linear(2, 2)
    rows = [SimpleNamespace(rows=torch.ones(2, 3)), SimpleNamespace(rows=torch.ones(2, 4))]
    tokens = {"TOK": ["<s0>", "<s1>"]}
    trained = Trained(unet, [], [], rows, tokens, list(unet.parameters()), is_lora=False)
    members = output.tar_members(trained, torch.float32)
    short = hashlib.sha256(members["unet.safetensors"]).hexdigest()[:8]
    assert set(members) == {
        "unet.safetensors",
        "embeddings.pti",
        "special_params.json",
        "webui/embeddings.safetensors",
        f"webui/embeddings/{short}_TOK.safetensors",
    }
    named = output.tar_members(trained, torch.float32, "v1.5")
    assert "webui/embeddings/v1.5_TOK.safetensors" in named
