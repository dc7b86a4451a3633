"""`generate` with trained weights, end to end (tar served over loopback HTTP).

Skipped while the engine still refuses `replicate_weights` (the wiring lands separately); the
same test then runs as is.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from lora_helpers import (
    assert_unchanged,
    embeddings_pti,
    old_format_lora,
    params_json,
    snapshot,
    write_tar,
)
from safetensors.torch import save

import sdxl.fetch
from sdxl.errors import InputError
from sdxl.fetch import DownloadCache, FetchSettings
from sdxl.generate import generate
from sdxl.request import Request


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


def test_generate_with_a_trainer_tar(models, tmp_path, served, monkeypatch):
    monkeypatch.setattr(
        sdxl.fetch, "_default_cache", DownloadCache(FetchSettings(cache_dir=tmp_path / "cache"))
    )
    dims = (
        models.base.text_encoder.config.hidden_size,
        models.base.text_encoder_2.config.hidden_size,
    )
    write_tar(
        tmp_path / "trained_model.tar",
        {
            "lora.safetensors": save(old_format_lora(models.base.unet)),
            "embeddings.pti": embeddings_pti(2, dims),
            "special_params.json": params_json({"TOK": "<s0><s1>"}),
        },
    )
    before = snapshot(models)
    try:
        tuned = generate(models, _request(replicate_weights=f"{served}/trained_model.tar"))
    except InputError as err:
        if "not supported by this build" in str(err):
            pytest.skip("generate does not take replicate_weights yet")
        raise
    plain = generate(models, _request())
    assert_unchanged(models, before)
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (tuned, plain))
    assert np.abs(a - b).max() > 10
    again = generate(models, _request())
    assert (np.asarray(again.images[0]) == np.asarray(plain.images[0])).all()
