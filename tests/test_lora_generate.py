"""Trained weights end to end through the engine: a trainer tar served over loopback HTTP.

With no resident adapters the shared models must be bitwise what they were after the job;
with resident adapters the LoRA stays loaded, and a plain job's bytes must still equal what a
fresh engine gives.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import start_engine
from safetensors.torch import save
from support.loras import (
    assert_unchanged,
    embeddings_pti,
    old_format_lora,
    params_json,
    snapshot,
    write_tar,
)

from sdxl.adapters.fetch import DownloadCache
from sdxl.inputs.request import Request
from sdxl.settings import FetchSettings


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _request(**kw) -> Request:
    base = dict(width=256, height=256, num_inference_steps=2, seed=7, prompt="a photo of TOK")
    return Request(**{**base, **kw})


def _trainer_tar(models, folder) -> None:
    dims = (
        models.base.text_encoder.config.hidden_size,
        models.base.text_encoder_2.config.hidden_size,
    )
    write_tar(
        folder / "trained_model.tar",
        {
            "lora.safetensors": save(old_format_lora(models.base.unet)),
            "embeddings.pti": embeddings_pti(2, dims),
            "special_params.json": params_json({"TOK": "<s0><s1>"}),
        },
    )


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.mark.parametrize("resident", [0, 4], ids=["unloaded-after", "resident"])
def test_a_trainer_tar_from_a_url(tiny_weights, tmp_path, served, resident):
    cache = DownloadCache(FetchSettings(cache_dir=tmp_path / "cache", public_only=False))
    engine = start_engine(tiny_weights, cache=cache, max_resident_loras=resident)
    try:
        models = engine.models
        _trainer_tar(models, tmp_path)
        fresh = engine.run(_request())
        before = snapshot(models)
        tuned = engine.run(_request(replicate_weights=f"{served}/trained_model.tar"))
        assert tuned.parameters["trained_weights"]["tokens"] == ["<s0>", "<s1>"]
        plain = engine.run(_request())
        if resident == 0:
            assert_unchanged(models, before)
        else:
            assert engine.runner.resident.stats()["loras"] == 1
        assert np.abs(pixels(tuned) - pixels(plain)).max() > 10
        assert (pixels(plain) == pixels(fresh)).all()
        again = engine.run(_request(replicate_weights=f"{served}/trained_model.tar"))
        assert (pixels(again) == pixels(tuned)).all()
    finally:
        engine.close()
