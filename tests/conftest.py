"""Shared fixtures: the tiny weights, built once per session with the project's own command,
the models loaded from them, and an engine over its own copy of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.browser import playground_browser, playground_server
from support.helpers import TEST_DEVICE
from support.postgres import Cluster

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Pixels are compared with diffusers' float32 pipelines on the same device, like with like: an
# explicit dtype and device, so that every machine runs the tests alike (SDXL_DTYPE=auto picks
# bfloat16 on CPUs that have it, SDXL_DEVICE=auto a GPU where there is one). The servers the
# tests start inherit both. SDXL_TEST_DEVICE=cuda runs the pixel tests on a GPU (bench/device.sh).
os.environ.setdefault("SDXL_DTYPE", "float32")
os.environ.setdefault("SDXL_DEVICE", TEST_DEVICE)
REPO = Path(__file__).resolve().parent.parent
__all__ = ["playground_browser", "playground_server"]  # fixtures, shared by the session


@pytest.fixture(scope="session", autouse=True)
def _remove_cog_uploads():
    from support.helpers import remove_uploads

    yield
    remove_uploads()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    done = subprocess.run(
        [sys.executable, "-m", "sdxl", "weights", "tiny", str(root)],
        cwd=REPO,
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # A newcomer's first command says what it did, and nothing else (no library notices, no
    # progress bars).
    assert done.stdout.startswith(f"tiny random-weight SDXL written to {root} in "), done.stdout
    assert done.stdout.count("\n") == 1, done.stdout
    return root


def runtime_for_tests(weights: Path):
    """float32 on the test device, without the fast path's switches (fused QKV, channels-last
    and TF32 change the arithmetic): what diffusers' own pipelines compute."""
    from sdxl.settings import Runtime

    return Runtime(
        weights_dir=weights,
        dtype="float32",
        device=TEST_DEVICE,
        channels_last="0",
        fuse_qkv="0",
        warmup="0",
        tf32="0",
    )


def load_tiny(weights: Path):
    from sdxl.model.loading import load_models

    return load_models(runtime_for_tests(weights))


@pytest.fixture(scope="session")
def models(tiny_weights):
    """The core's models, for tests that call the core without the engine."""
    return load_tiny(tiny_weights)


def start_engine(weights: Path, cache=None, clock=None, **settings):
    """An engine over its own freshly loaded tiny models (so no test sees another's)."""
    from sdxl.engine import Engine, EngineSettings

    engine = Engine(
        runtime_for_tests(weights),
        EngineSettings(**settings),
        models=load_tiny(weights),
        cache=cache,
        **({} if clock is None else {"clock": clock}),
    )
    engine.load()
    return engine


@pytest.fixture(scope="session")
def engine(tiny_weights):
    """The engine with its default settings, shared by the session's tests."""
    eng = start_engine(tiny_weights)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def reference(tiny_weights):
    """diffusers' own SDXL pipelines over the tiny weights, composed without `sdxl`, in float32
    on the test device."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    options = {"torch_dtype": torch.float32, "add_watermarker": False}
    base = StableDiffusionXLPipeline.from_pretrained(tiny_weights / "base", **options)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_weights / "refiner",
        text_encoder_2=base.text_encoder_2,
        vae=base.vae,
        tokenizer_2=base.tokenizer_2,
        **options,
    )
    return base.to(TEST_DEVICE), refiner.to(TEST_DEVICE)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL for the shared-store tests (tests/support/postgres.py)."""
    url = os.environ.get("SDXL_TEST_DATABASE_URL")
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="sdxl-postgres-"))  # not under a 0700 pytest folder
    cluster = Cluster(folder)
    try:
        yield cluster.url
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def cog_server(tiny_weights, tmp_path_factory):
    """Cog's own server over the predictor, shared by the modules that only send it
    predictions (each must answer as on a fresh server: no state leaks between them)."""
    from support.cog_server import start_server

    server = start_server(tiny_weights, tmp_path_factory.mktemp("cog-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def plain_api(tiny_weights, tmp_path_factory):
    """`python -m sdxl api` with one key and nothing else set, shared by the modules that only
    send it requests (bad inputs, hostile bodies, malformed numbers); no request may leave a
    traceback in its log."""
    from support.api_server import KEYS, Server

    server = Server(tiny_weights, tmp_path_factory.mktemp("plain-api"), {"SDXL_API_KEYS": KEYS[0]})
    server.wait_ready()
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]
