"""A locally trained tar used as documented, on every surface: the command line (`@file`, a
path or a file:// URL, read on this machine and never sent as data), the Cog predictor (a path,
or the data URI `cog predict -i replicate_weights=@trained_model.tar` sends), and the HTTP APIs
(a file:// URL or a path is a 422 at create unless inside SDXL_LOCAL_WEIGHTS_DIRS; an upload
through /v1/files works). Every surface gives the same pixels for the same tar."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest
import replicate
import requests
import torch
from PIL import Image
from safetensors.torch import save
from support.api_server import GUIDE_VERSION, KEYS, REPO, serving
from support.helpers import SERVER_ENV, assert_same_image, pixels
from support.loras import embeddings_pti, old_format_lora, params_json, write_tar

from sdxl.cog.client import ClientError, failure, parse_inputs
from sdxl.config import COG_INPUTS
from sdxl.engine.engine_settings import EngineSettings
from sdxl.errors import InputError
from sdxl.http.replicate.inputs import REPLICATE
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps, LocalFiles
from sdxl.settings.tree import CapsGroup

SMALL = {"width": 256, "height": 256, "num_inference_steps": 3, "seed": 5}
TUNED = {"prompt": "a photo of TOK", **SMALL, "lora_scale": 1.0}
KINDS = {name: spec.kind for name, spec in COG_INPUTS.items()}
FIXES = ("https URL", "/v1/files", "SDXL_LOCAL_WEIGHTS_DIRS")


@pytest.fixture(scope="module")
def folders(tiny_weights, tmp_path_factory) -> tuple[Path, Path]:
    """(allowed, outside): the same trainer tar (a LoRA and the tokens of "TOK", for the tiny
    model) in both, and a file that is no weights in `allowed`."""
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("local-weights")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    unet = UNet2DConditionModel.from_pretrained(tiny_weights / "base" / "unet")
    dims = [
        json.loads((tiny_weights / "base" / name / "config.json").read_text())["hidden_size"]
        for name in ("text_encoder", "text_encoder_2")
    ]
    members = {
        "lora.safetensors": save(old_format_lora(unet)),
        "embeddings.pti": embeddings_pti(2, tuple(dims)),
        "special_params.json": params_json({"TOK": "<s0><s1>"}),
    }
    write_tar(allowed / "trained_model.tar", members)
    shutil.copy(allowed / "trained_model.tar", outside / "trained_model.tar")
    (allowed / "notes.txt").write_text("not weights")
    return allowed, outside


def _problem(body: dict, caps: Caps) -> str:
    with pytest.raises(InvalidInputs) as caught:
        check_fields(body, REPLICATE, caps)
    (problem,) = caught.value.problems
    assert problem.field == "replicate_weights", problem
    return problem.message


# ---- the boundary's rule ---------------------------------------------------------------------
def test_over_http_a_local_file_is_refused_naming_the_value_and_the_fixes(folders):
    _, outside = folders
    tar = outside / "trained_model.tar"
    for value in (f"file://{tar}", str(tar), "trained_model.tar", f"file://localhost{tar}"):
        message = _problem({"replicate_weights": value}, Caps())
        assert message.startswith("replicate_weights: ") and value[:40] in message, message
        assert all(fix in message for fix in FIXES), message
    data = "data:application/x-tar;base64," + "A" * 5000  # not the 4096 characters' message
    message = _problem({"replicate_weights": data}, Caps())
    assert "data URI" in message and "/v1/files" in message and "AAAA" not in message
    assert "ftp:// URLs are not supported" in _problem(
        {"replicate_weights": "ftp://h/w.tar"}, Caps()
    )
    url = "https://example.com/trained_model.tar?sig=1"
    assert (
        check_fields({"replicate_weights": url}, REPLICATE, Caps()).values["replicate_weights"]
        == url
    )


def test_the_operators_folders_and_nothing_outside_them(folders):
    allowed, outside = folders
    tar = allowed / "trained_model.tar"
    caps = Caps(local_files=LocalFiles(dirs=(allowed,)))
    for value in (str(tar), f"file://{tar}", f" {tar} "):
        checked = check_fields({"replicate_weights": value}, REPLICATE, caps)
        assert checked.values["replicate_weights"] == str(tar)
        assert checked.given["replicate_weights"] == str(tar)  # what a recovered job reads
    link = allowed / "link.tar"
    link.symlink_to(outside / "trained_model.tar")
    try:
        for escape in (str(link), f"{allowed}/../outside/trained_model.tar"):
            message = _problem({"replicate_weights": escape}, caps)
            assert "outside the folders" in message and all(f in message for f in FIXES)
    finally:
        link.unlink()
    missing = _problem({"replicate_weights": str(allowed / "missing.tar")}, caps)
    assert "is not a file" in missing and "missing.tar" in missing
    env = {"SDXL_LOCAL_WEIGHTS_DIRS": f"{allowed}{os.pathsep}{outside}"}
    assert CapsGroup.read(env).build().local_files.dirs == (allowed, outside)
    engine = EngineSettings.from_env(env)
    assert engine.fetch.local_files == LocalFiles(dirs=(allowed, outside))


def test_the_cog_predictor_reads_the_data_uri_cog_sends_and_no_server_file(folders, tmp_path):
    from cog import Path as CogPath

    from sdxl.cog.inputs import checked_inputs, reading_from
    from sdxl.engine import EngineSettings

    _, outside = folders
    tar = outside / "trained_model.tar"
    settings = reading_from(EngineSettings(), tmp_path)
    assert settings.caps.local_files.dirs == (tmp_path,)
    assert settings.fetch.local_files == settings.caps.local_files
    inputs = {name: spec.default for name, spec in COG_INPUTS.items()}
    uri = "data:application/x-tar;base64," + base64.b64encode(tar.read_bytes()).decode()
    with checked_inputs({**inputs, "replicate_weights": uri}, settings.caps, tmp_path) as checked:
        staged = Path(checked.request().replicate_weights)
        assert staged.parent == tmp_path and staged.read_bytes() == tar.read_bytes()
    assert not staged.exists()  # the temporary file lasts the prediction
    # A Cog image on Replicate takes strangers' inputs: no file of the server by its path.
    for value in (str(tar), f"file://{tar}", CogPath(tar), "/etc/hostname"):
        with (
            pytest.raises(InputError, match="replicate_weights: .* is outside the folders"),
            checked_inputs({**inputs, "replicate_weights": value}, settings.caps, tmp_path),
        ):
            pass
    with (
        pytest.raises(InputError, match="replicate_weights is not a base64 data URI"),
        checked_inputs({**inputs, "replicate_weights": "data:,abc"}, settings.caps, tmp_path),
    ):
        pass


def test_the_command_line_sends_the_path_never_the_bytes(folders, monkeypatch):
    _, outside = folders
    tar = outside / "trained_model.tar"
    monkeypatch.chdir(outside)
    for given in ("@trained_model.tar", "trained_model.tar", f"file://{tar}"):
        sent = parse_inputs([f"replicate_weights={given}"], KINDS)
        assert sent == {"replicate_weights": str(tar)}, given
    url = "https://example.com/w.tar"
    assert parse_inputs([f"replicate_weights={url}"], KINDS) == {"replicate_weights": url}
    with pytest.raises(ClientError, match="missing.tar is not a file"):
        parse_inputs(["replicate_weights=@missing.tar"], KINDS)
    image = outside / "photo.png"
    Image.new("RGB", (8, 8)).save(image)
    sent = parse_inputs(["image=@photo.png"], KINDS)  # images still travel as data URIs
    assert sent["image"].startswith("data:image/png;base64,")
    assert failure("Prediction failed: Prediction failed: X: y") == "Prediction failed: X: y"
    assert failure("X: y") == "Prediction failed: X: y"


# ---- the surfaces, end to end ------------------------------------------------------------------
def _cli(tiny_weights, *pairs: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **SERVER_ENV, "SDXL_WEIGHTS_DIR": str(tiny_weights)}
    env["OMP_NUM_THREADS"] = "1"  # as the API server runs: sums round alike
    args = [arg for pair in pairs for arg in ("-i", pair)]
    return subprocess.run(
        [sys.executable, "-m", "sdxl", "predict", *args, "-o", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _pairs(inputs: dict) -> list[str]:
    return [f"{name}={value}" for name, value in inputs.items()]


@pytest.fixture(scope="module")
def cli_image(tiny_weights, folders, tmp_path_factory) -> np.ndarray:
    """`python -m sdxl predict -i replicate_weights=@trained_model.tar` (a path relative to
    where it runs), the image it wrote."""
    allowed, _ = folders
    relative = os.path.relpath(allowed / "trained_model.tar", REPO)
    out = tmp_path_factory.mktemp("cli-out")
    done = _cli(tiny_weights, *_pairs(TUNED), f"replicate_weights=@{relative}", out=out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new tokens ['<s0>', '<s1>']" in done.stderr
    (written,) = done.stdout.split()
    with Image.open(written) as img:
        return pixels(img)


@pytest.fixture(scope="module")
def predictor(tiny_weights, folders):
    """The Cog predictor in this process, its engine as predict.py sets it up, with the
    operator's folder for local weights (`allowed`)."""
    from predict import Predictor

    env = {"SDXL_WEIGHTS_DIR": str(tiny_weights), "SDXL_LOCAL_WEIGHTS_DIRS": str(folders[0])}
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        p = Predictor()
        p.setup()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield p
    p.engine.close()


def _cog(predictor, **inputs) -> np.ndarray:
    args = {name: spec.default for name, spec in COG_INPUTS.items()}
    args.update(inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the servers run
    try:
        (path,) = predictor.run(**args)
    finally:
        torch.set_num_threads(threads)
    with Image.open(path) as img:
        return pixels(img)


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8))


@pytest.mark.slow  # the same tar over HTTP runs by default; the CLI adds the tar's folder
def test_the_command_line_and_the_cog_predictor_use_a_local_tar(folders, cli_image, predictor):
    allowed, _ = folders
    tar = allowed / "trained_model.tar"
    uri = "data:application/x-tar;base64," + base64.b64encode(tar.read_bytes()).decode()
    by_data_uri = _cog(predictor, **TUNED, replicate_weights=uri)  # what `cog predict` sends
    by_path = _cog(predictor, **TUNED, replicate_weights=str(tar))
    plain = _cog(predictor, **TUNED)
    assert_same_image(_image(cli_image), _image(by_data_uri), 0)
    assert_same_image(_image(by_path), _image(by_data_uri), 0)
    assert np.abs(cli_image - plain).max() > 10  # the tar changed the image


def test_coglets_doubled_prefix_is_said_once():
    from sdxl.cog.client import failure

    doubled = "Prediction failed: Prediction failed: replicate_weights: not a tar"
    assert failure(doubled) == "Prediction failed: replicate_weights: not a tar"
    assert failure("LoraError: x") == "Prediction failed: LoraError: x"


@pytest.mark.slow  # a whole CLI run (about 10 s); the default run checks `failure` alone
def test_a_failed_prediction_says_prediction_failed_once(tiny_weights, folders, tmp_path):
    allowed, _ = folders
    done = _cli(
        tiny_weights, *_pairs(SMALL), f"replicate_weights={allowed / 'notes.txt'}", out=tmp_path
    )
    assert done.returncode == 1
    (last,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert last.startswith("error: Prediction failed: "), last
    assert done.stderr.count("Prediction failed") == 1, done.stderr[-2000:]
    assert "replicate_weights: the file is neither a tar nor a .safetensors LoRA" in last


@pytest.fixture(scope="module")
def api(tiny_weights, folders, tmp_path_factory):
    allowed, _ = folders
    folder = tmp_path_factory.mktemp("local-weights-api")
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_LOCAL_WEIGHTS_DIRS": str(allowed)}
    with serving(tiny_weights, folder, env) as srv:
        yield srv


def _output(prediction: dict) -> np.ndarray:
    assert prediction["status"] == "succeeded", prediction.get("error")
    (uri,) = prediction["output"]
    with Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))) as img:
        return pixels(img)


def test_over_http_local_files_are_a_422_at_create_unless_allowed(api, folders, cli_image):
    allowed, outside = folders
    refused = (
        f"file://{outside / 'trained_model.tar'}",
        str(outside / "trained_model.tar"),
        f"{allowed}/../outside/trained_model.tar",
        "trained_model.tar",
    )
    for value in refused:
        body = {"version": GUIDE_VERSION, "input": {**TUNED, "replicate_weights": value}}
        answer = api.api("POST", "/v1/predictions", body)
        assert answer.status_code == 422, (value, answer.text)
        detail = answer.json()["detail"]
        assert "input.replicate_weights: replicate_weights: " in detail, detail
        assert value[:40] in detail and all(fix in detail for fix in FIXES), detail
    client = openai.OpenAI(api_key=KEYS[0], base_url=api.base + "/v1", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:  # every API: OpenAI's extras too
        client.images.generate(prompt="a", extra_body={"replicate_weights": refused[0]})
    assert caught.value.param == "replicate_weights" and "/v1/files" in caught.value.message
    tar = allowed / "trained_model.tar"
    images = []
    for value in (str(tar), f"file://{tar}"):
        created = api.create_prediction({**TUNED, "replicate_weights": value})
        images.append(_output(api.wait_prediction(created["id"])))
    assert_same_image(_image(images[0]), _image(images[1]), 0)
    assert_same_image(_image(images[0]), _image(cli_image), 0)  # the same as on the CLI


def test_over_http_an_upload_through_v1_files_is_used(api, folders, cli_image):
    """The official Python client uploads an open file to /v1/files and passes its URL; the
    server reads the upload from its files, never over HTTP."""
    allowed, _ = folders
    client = replicate.Client(api_token=KEYS[0], base_url=api.base)
    with open(allowed / "trained_model.tar", "rb") as tar:
        prediction = client.predictions.create(
            version=GUIDE_VERSION, input={**TUNED, "replicate_weights": tar}
        )
    assert prediction.input["replicate_weights"].startswith(api.base + "/v1/files/")
    done = api.wait_prediction(prediction.id)
    assert_same_image(_image(_output(done)), _image(cli_image), 0)
    other = requests.post(
        api.base + "/v1/predictions",
        json={
            "version": GUIDE_VERSION,
            "input": {**TUNED, "replicate_weights": api.base + "/v1/files/nope"},
        },
        headers={"Authorization": f"Bearer {KEYS[0]}"},
        timeout=30,
    )
    assert other.status_code == 201
    failed = api.wait_prediction(other.json()["id"])
    assert failed["status"] == "failed" and "upload the file again" in failed["error"]
