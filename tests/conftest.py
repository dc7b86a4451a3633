"""Shared fixtures: the tiny weights, built once per session with the project's own command,
the models loaded from them, and an engine over its own copy of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Pixels are compared with diffusers' float32 pipelines: an explicit dtype, so that every
# machine runs the tests alike (SDXL_DTYPE=auto picks bfloat16 on CPUs that have it).
os.environ.setdefault("SDXL_DTYPE", "float32")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _remove_cog_uploads():
    from support.helpers import remove_uploads

    yield
    remove_uploads()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    subprocess.run(
        [sys.executable, "-m", "sdxl", "weights", "tiny", str(root)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return root


def load_tiny(weights: Path):
    from sdxl.core.loading import load_models
    from sdxl.settings import Runtime

    return load_models(Runtime(weights_dir=weights, dtype="float32"))


@pytest.fixture(scope="session")
def models(tiny_weights):
    """The core's models, for tests that call the core without the engine."""
    return load_tiny(tiny_weights)


def start_engine(weights: Path, cache=None, **settings):
    """An engine over its own freshly loaded tiny models (so no test sees another's)."""
    from sdxl.engine import Engine, EngineSettings
    from sdxl.settings import Runtime

    engine = Engine(
        Runtime(weights_dir=weights, dtype="float32"),
        EngineSettings(**settings),
        models=load_tiny(weights),
        cache=cache,
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
    """diffusers' own SDXL pipelines over the tiny weights, composed without `sdxl`."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(tiny_weights / "base", add_watermarker=False)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_weights / "refiner",
        text_encoder_2=base.text_encoder_2,
        vae=base.vae,
        tokenizer_2=base.tokenizer_2,
        add_watermarker=False,
    )
    return base, refiner
