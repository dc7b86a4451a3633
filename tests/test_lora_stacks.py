"""LoRA stacks on the engine (tiny model): two LoRAs at their own weights equal diffusers'
`load_lora_weights` twice and `set_adapters` with those weights, on a fresh diffusers pipeline
(tolerance 0 on CPU); the next plain request equals an idle engine's; names are looked up per
tenant among SDXL_LORA_DIR's files and offset; unknown names, duplicates and a stack over the
bound are refused naming what was written, and the Cog predictor refuses them when it checks its
inputs (InvalidInputs), before the job. The `loras` input and A1111's tags (prompt_2's too) read
as one stack; A1111's LoRA short hash is computed once per file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from conftest import start_engine
from support.helpers import assert_same_image, generator, pixels, reference_scheduler
from support.loras import save_safetensors, text_encoder_kohya

from sdxl.adapters.library import LoraLibrary
from sdxl.builders.random_lora import random_kohya_lora
from sdxl.cog.inputs import checked_inputs
from sdxl.errors import InputError
from sdxl.http.a1111.fields import TXT2IMG
from sdxl.http.replicate.inputs import REPLICATE
from sdxl.inputs.lora_refs import LoraRef, parse_lora_list
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.runtime.stored_inputs import stored_request
from sdxl.settings import Caps

SIZE = 256
PROMPT = "a photo of a cat"
BASE = {"prompt": PROMPT, "width": SIZE, "height": SIZE, "seed": 7, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("stack-loras")
    unet = models.base.unet
    save_safetensors(folder / "a.safetensors", random_kohya_lora(unet, seed=1, std=0.2))
    te = {k: v if k.endswith(".alpha") else v * 0.1 for k, v in text_encoder_kohya(models).items()}
    b = {**random_kohya_lora(unet, seed=2, std=0.2), **te}
    save_safetensors(folder / "b.safetensors", b)
    save_safetensors(folder / "c.safetensors", random_kohya_lora(unet, seed=3, std=0.2))
    return folder


@pytest.fixture(scope="module")
def stack_engine(tiny_weights, lora_dir):
    engine = start_engine(tiny_weights, lora_dir=lora_dir, max_resident_loras=2)
    yield engine
    engine.close()


def run(engine, **kwargs):
    request = Request(**{**BASE, "apply_watermark": False, **kwargs})
    (img,) = engine.run(request).images
    return img


def stack(*items: tuple[str, float]) -> tuple[LoraRef, ...]:
    return tuple(LoraRef(name, weight, f"{name}:{weight}") for name, weight in items)


def reference_stack(tiny_weights, lora_dir, items):
    """diffusers' own pipeline, fresh, with each LoRA loaded by diffusers."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        tiny_weights / "base", torch_dtype=torch.float32, add_watermarker=False
    )
    pipe.scheduler = reference_scheduler(pipe, "K_EULER")
    for name, _ in items:
        pipe.load_lora_weights(str(lora_dir), weight_name=f"{name}.safetensors", adapter_name=name)
    pipe.set_adapters([name for name, _ in items], [weight for _, weight in items])
    return pipe(
        prompt=PROMPT,
        width=SIZE,
        height=SIZE,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=generator(7),
    ).images[0]


def far(a, b) -> bool:
    return np.abs(pixels(a).astype(int) - pixels(b).astype(int)).max() > 10


def test_a_stack_equals_diffusers_and_leaves_no_trace(stack_engine, tiny_weights, lora_dir):
    idle = run(stack_engine)
    items = (("a", 0.7), ("b", 0.4))
    stacked = run(stack_engine, loras=stack(*items))
    assert_same_image(stacked, reference_stack(tiny_weights, lora_dir, items))
    assert far(stacked, idle) and far(stacked, run(stack_engine, loras=stack(("a", 0.7))))
    assert_same_image(run(stack_engine), idle, tolerance=0)
    assert stack_engine.runner.resident.stats()["loras"] == 2


def test_refused_stacks_name_what_was_written(stack_engine):
    with pytest.raises(InputError) as err:
        run(stack_engine, loras=stack(("nope", 0.5)))
    assert "'nope:0.5' names no LoRA here" in str(err.value)
    assert "SDXL_LORA_DIR" in str(err.value) and "/sdapi/v1/loras" in str(err.value)
    with pytest.raises(InputError) as err:
        run(stack_engine, loras=stack(("a", 1.0), ("b", 1.0), ("c", 1.0)))
    assert "at most 2 per request (SDXL_MAX_RESIDENT_LORAS)" in str(err.value)
    idle_again = run(stack_engine)
    assert_same_image(idle_again, run(stack_engine), tolerance=0)


def test_the_cog_predictor_refuses_them_when_it_checks_its_inputs(stack_engine, tmp_path):
    check = stack_engine.lora_check(None)  # predict.py's: the shared LoRAs and offset
    for loras, words in [
        ("a:0.5, nope:0.5", "'nope:0.5' names no LoRA here"),
        ("a, b, c", "at most 2 per request (SDXL_MAX_RESIDENT_LORAS)"),
        ("https://h/trained_model.tar", "goes in replicate_weights"),
    ]:
        inputs = {"prompt": "x", "loras": loras}
        with pytest.raises(InvalidInputs) as err, checked_inputs(inputs, Caps(), tmp_path, check):
            pass
        assert words in str(err.value) and err.value.problems[0].field == "loras"
    with checked_inputs({"prompt": "x", "loras": "a, offset:0.3"}, Caps(), tmp_path, check) as ok:
        assert [r.ref for r in ok.request().loras] == ["a", "offset"]


# ---- reading the stack --------------------------------------------------------------------
def test_the_loras_input_is_parsed():
    refs = parse_lora_list("a:0.7, https://h:8443/x.safetensors, b, https://h/y.safetensors:-1")
    assert [(r.ref, r.weight) for r in refs] == [
        ("a", 0.7),
        ("https://h:8443/x.safetensors", 1.0),
        ("b", 1.0),
        ("https://h/y.safetensors", -1.0),
    ]
    for bad, words in [
        ("a,,b", "empty item"),
        ("a:3", "weight 3"),
        ("a:0.5, a:0.2", "again"),
        ("../x", "neither a LoRA's name"),
        (",".join(f"l{i}" for i in range(17)), "at most 16"),
    ]:
        with pytest.raises(InputError, match=words):
            parse_lora_list(bad)


def test_tags_and_the_input_are_one_stack():
    body = {"prompt": "<lora:a:0.7>a cat <lora:b>", "negative_prompt": "ugly<lora:c:-0.5>"}
    request = check_fields(body, TXT2IMG, Caps()).request()
    assert request.prompt == "a cat " and request.negative_prompt == "ugly"
    assert [(r.ref, r.weight) for r in request.loras] == [("a", 0.7), ("b", 1.0), ("c", -0.5)]
    body = {"prompt": "<lora:a:0.7> cat", "loras": "b:0.4", "prompt_syntax": "a1111"}
    request = check_fields(body, REPLICATE, Caps()).request()
    assert [(r.ref, r.weight) for r in request.loras] == [("b", 0.4), ("a", 0.7)]
    assert request.describe()["loras"] == ["b:0.4", "a:0.7"]
    plain = check_fields({"prompt": "<lora:a:0.7> cat"}, REPLICATE, Caps()).request()
    assert plain.prompt == "<lora:a:0.7> cat" and plain.loras == ()  # plain: literal text
    with pytest.raises(InvalidInputs) as err:
        check_fields({"prompt": "<lora:a> x <lora:a:0.5>"}, TXT2IMG, Caps())
    assert "again" in str(err.value.problems)
    stored = stored_request({"prompt": "x", "loras": "a:0.7,https://h/y.safetensors"}, (), dict)
    assert [r.shown() for r in stored.loras] == ["a:0.7", "<url>:1"]


def test_prompt_2_tags_join_the_stack():
    body = {
        "prompt": "<lora:a:0.7> cat",
        "prompt_2": "<lora:a:0.7> cat <lora:b:0.3>",  # a copy of the prompt's tag: once
        "negative_prompt_2": "blur<lora:c>",
        "prompt_syntax": "a1111",
    }
    request = check_fields(body, REPLICATE, Caps()).request()
    texts = (request.prompt, request.prompt_2, request.negative_prompt_2)
    assert texts == (" cat", " cat ", "blur")
    assert [(r.ref, r.weight, r.field) for r in request.loras] == [
        ("a", 0.7, "prompt"),
        ("b", 0.3, "prompt_2"),
        ("c", 1.0, "negative_prompt_2"),
    ]
    with pytest.raises(InvalidInputs) as err:
        check_fields({**body, "prompt_2": "<lora:a:0.2> cat"}, REPLICATE, Caps())
    assert "'<lora:a:0.2>' (prompt_2) names the LoRA of '<lora:a:0.7>' (prompt) again" in str(
        err.value
    )
    plain = check_fields({**body, "prompt_syntax": "plain"}, REPLICATE, Caps()).request()
    assert plain.prompt_2 == body["prompt_2"] and plain.loras == ()


# ---- names, per tenant ----------------------------------------------------------------------
def _lora_file(path, metadata=None):
    header = json.dumps({"__metadata__": metadata or {}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def test_names_per_tenant(tmp_path):
    folder = tmp_path / "loras"
    (folder / "alice").mkdir(parents=True)
    (folder / "bob").mkdir()
    _lora_file(folder / "shared.safetensors", {"ss_output_name": "style", "ss_tags": '{"x": 1}'})
    _lora_file(folder / "alice" / "mine.safetensors")
    _lora_file(folder / "bob" / "his.safetensors")
    _lora_file(folder / "alice" / "shared.safetensors")  # shadows the shared one for alice
    offset = tmp_path / "offset.safetensors"
    _lora_file(offset)
    library = LoraLibrary(folder, offset)
    assert library.find("mine", "alice") == folder / "alice" / "mine.safetensors"
    assert library.find("mine", "bob") is None and library.find("his", "alice") is None
    assert library.find("shared", "alice") == folder / "alice" / "shared.safetensors"
    assert library.find("style", "bob") == folder / "shared.safetensors"  # by its alias
    assert library.find("offset", None) == offset
    for bad in ("../loras/shared", "alice/mine", "bob/his"):
        assert library.find(bad, "alice") is None
    listed = library.listing("bob")
    assert [row["name"] for row in listed] == ["his", "offset", "shared"]
    assert listed[2]["alias"] == "style" and listed[2]["metadata"]["ss_tags"] == {"x": 1}
    assert listed[2]["path"] == "models/Lora/shared.safetensors"
    assert str(tmp_path) not in json.dumps(listed)
    _lora_file(folder / "new.safetensors")
    library.refresh()
    assert library.find("new", None) == folder / "new.safetensors"


def test_the_short_hash_is_a1111s_and_computed_once_per_file(tmp_path, monkeypatch):
    import hashlib

    from sdxl.adapters import library as library_module

    path = tmp_path / "x.safetensors"
    save_safetensors(path, {"w": torch.ones(3)})
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    library = LoraLibrary(tmp_path)
    assert library.short_hash(path) == hashlib.sha256(data[8 + size :]).hexdigest()[:12]
    computed = []
    real = library_module._tensor_sha256
    monkeypatch.setattr(library_module, "_tensor_sha256", lambda p: computed.append(p) or real(p))
    library.short_hash(path)
    assert computed == []  # remembered
    save_safetensors(path, {"w": torch.zeros(4)})  # another file at that path: hashed again
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    assert library.short_hash(path) == hashlib.sha256(data[8 + size :]).hexdigest()[:12]
    assert computed == [path]
    given = "ab" * 32  # kohya's sshs_model_hash, which A1111 prefers
    _lora_file(tmp_path / "k.safetensors", {"sshs_model_hash": given})
    assert library.short_hash(tmp_path / "k.safetensors") == given[:12]
