"""LoRAs and trained weights on the tiny model: what they change, and that nothing stays changed.

Each test prepares trained weights the way the engine does (off the lock) and applies them the
way the engine does (under its lock), on an engine that keeps no adapter resident, so that
afterwards every UNet and text-encoder tensor, module layout and tokenizer must be bitwise what
it was (the `before` fixture). Resident adapters are tested in test_engine.py.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import start_engine
from safetensors.torch import save
from support.loras import (
    assert_unchanged,
    embeddings_pti,
    hand_applied,
    kohya_lora,
    old_format_lora,
    params_json,
    run,
    save_safetensors,
    snapshot,
    text_encoder_kohya,
    updates_from_old,
    write_tar,
)

from sdxl.adapters.fetch import DownloadCache
from sdxl.adapters.lora import LoraError, convert_old_lora
from sdxl.adapters.staging import stage_weights
from sdxl.adapters.tar import TrainedWeightsError
from sdxl.builders.random_lora import random_kohya_lora
from sdxl.errors import InputError
from sdxl.inputs.model_rules import check_adapter_names
from sdxl.inputs.request import AdapterSpec, Request
from sdxl.settings import FetchSettings

TIGHT = 1e-4  # float32 on the CPU: factored vs merged low-rank update


@pytest.fixture(scope="module")
def engine(tiny_weights):
    """An engine of its own that unloads every adapter after each job (no residents)."""
    eng = start_engine(tiny_weights, max_resident_loras=0, max_resident_unets=0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def models(engine):
    return engine.models


@pytest.fixture
def cache(tmp_path):
    return DownloadCache(FetchSettings(cache_dir=tmp_path / "cache", local_dirs=(tmp_path,)))


@pytest.fixture
def before(models):
    state = snapshot(models)
    yield state
    assert_unchanged(models, state)


@pytest.fixture(scope="module")
def base_image(models):
    return run(models)


@contextmanager
def apply(engine, cache, tmp_path: Path, lora_dir: Path | None = None, **spec):
    """What the engine does with a job's trained weights: their names checked with the rest of
    the request, staged off the lock, applied under it, undone after the body. Yields the
    staged weights."""
    check_adapter_names(Request(**spec))
    runner = engine.runner
    lora_dir = lora_dir or tmp_path / "loras"  # the engine's SDXL_LORA_DIR setting
    resolver = dataclasses.replace(
        runner.resolver, cache=cache, weights_dir=tmp_path, lora_dir=lora_dir
    )
    prepared = stage_weights(AdapterSpec(**spec), resolver)
    try:
        with engine.lock:
            active = runner.resident.apply(prepared)
            try:
                yield prepared
            finally:
                runner.resident.undo(active)
    finally:
        if prepared is not None:
            runner.budget.release(prepared.host_bytes)
            prepared.close()


def test_old_format_keys_convert_to_the_unets_layers(models):
    old = old_format_lora(models.base.unet)
    converted = convert_old_lora(old, models.unet_linears, "test")
    assert len(converted) == len(old)
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight"
    proc = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
    assert torch.equal(converted[key], old[f"{proc}.to_out_lora.down.weight"])


def test_trainer_lora_equals_the_hand_applied_update(
    engine, models, cache, tmp_path, before, base_image
):
    old = old_format_lora(models.base.unet)
    tar = write_tar(tmp_path / "t.tar", {"lora.safetensors": save(old)})
    with apply(engine, cache, tmp_path, replicate_weights=str(tar), lora_scale=0.6) as applied:
        got = run(models)
    assert applied.describe()["adapters"] == ["replicate_weights"]
    reference = run(models, unet=hand_applied(models.base.unet, updates_from_old(old), 0.6))
    assert abs(got - reference).max() < TIGHT
    assert abs(got - base_image).max() > 0.05


def test_plain_lora_written_by_diffusers_loads_with_its_alpha_and_scale(
    engine, models, cache, tmp_path, before, base_image
):
    """A peft adapter saved by diffusers' own writer; alpha = 2 x rank lives only in the
    file's metadata, so it must be read from there."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = models.base.unet.__class__.from_config(models.base.unet.config)
    unet.load_state_dict(models.base.unet.state_dict())
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v", "to_out.0"])
    unet.add_adapter(config)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    layers = get_peft_model_state_dict(unet)
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=layers, unet_lora_adapter_metadata=config.to_dict()
    )
    path = tmp_path / "pytorch_lora_weights.safetensors"
    updates = {
        k.removesuffix(".lora_A.weight"): (v, layers[k.replace("lora_A", "lora_B")])
        for k, v in layers.items()
        if k.endswith("lora_A.weight")
    }
    with apply(engine, cache, tmp_path, replicate_weights=str(path), lora_scale=0.0):
        at_zero = run(models)
    with apply(engine, cache, tmp_path, replicate_weights=str(path), lora_scale=0.75):
        tuned = run(models)
    assert (at_zero == base_image).all()
    reference = run(models, unet=hand_applied(models.base.unet, updates, 0.75 * 8 / 4))
    assert abs(tuned - reference).max() < TIGHT
    assert abs(tuned - base_image).max() > 0.05


def test_kohya_lora_by_id_and_by_name(engine, models, cache, tmp_path, before, base_image):
    state, updates = kohya_lora(models.base.unet, alpha=2.0)
    reference = run(models, unet=hand_applied(models.base.unet, updates, 0.8))
    (tmp_path / "ids").mkdir()
    save_safetensors(tmp_path / "ids" / "my-style_v1.safetensors", state)
    (tmp_path / "loras").mkdir()
    save_safetensors(tmp_path / "loras" / "offset.safetensors", state)
    ids = tmp_path / "ids"
    with apply(engine, cache, tmp_path, ids, lora_id="my-style_v1", lora_scale=0.8):
        by_id = run(models)
    with apply(engine, cache, tmp_path, lora_name="offset", lora_scale=0.8) as applied:
        by_name = run(models)
    assert applied.describe()["adapters"] == ["lora_name='offset'"]
    assert abs(by_id - reference).max() < TIGHT and (by_id == by_name).all()


def test_the_tiny_offset_lora_changes_the_output(
    engine, models, cache, tmp_path, before, base_image
):
    (tmp_path / "loras").mkdir()
    save_safetensors(tmp_path / "loras" / "offset.safetensors", random_kohya_lora(models.base.unet))
    with apply(engine, cache, tmp_path, lora_name="offset", lora_scale=1.0):
        assert abs(run(models) - base_image).max() > 1e-3


def test_text_encoder_lora_loads_into_both_encoders(engine, models, cache, tmp_path, before):
    state = {**kohya_lora(models.base.unet)[0], **text_encoder_kohya(models)}
    path = save_safetensors(tmp_path / "te.safetensors", state)
    plain = models.base.encode_prompt("a photo of a cat", do_classifier_free_guidance=False)
    with apply(engine, cache, tmp_path, replicate_weights=str(path), lora_scale=1.0):
        assert set(models.base.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
        tuned = models.base.encode_prompt("a photo of a cat", do_classifier_free_guidance=False)
    assert (tuned[0] - plain[0]).abs().max() > 0.01  # prompt embeds of both encoders
    assert (tuned[2] - plain[2]).abs().max() > 0.01  # pooled, from text_encoder_2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lora_id": "../escape"}, "not a valid id"),
        ({"lora_id": "a/b"}, "not a valid id"),
        ({"lora_id": "missing"}, "no such LoRA"),
        ({"lora_name": "nope"}, "choose one of: offset"),
        ({"lora_name": "offset"}, "weights download"),
        ({"replicate_weights": "ftp://example.com/x.tar"}, "ftp:// URLs are not supported"),
    ],
)
def test_bad_names_are_refused_before_anything_changes(
    engine, models, cache, tmp_path, before, spec, message
):
    with (
        pytest.raises(InputError, match=message),
        apply(engine, cache, tmp_path, tmp_path, **spec),
    ):
        pytest.fail("the body must not run")


def test_lora_matching_nothing_is_an_error_not_a_silent_no_op(
    engine, models, cache, tmp_path, before
):
    path = save_safetensors(tmp_path / "x.safetensors", {"foo.lora_A.weight": torch.ones(2, 2)})
    with (
        pytest.raises(LoraError, match="replicate_weights"),
        apply(engine, cache, tmp_path, replicate_weights=str(path)),
    ):
        pass


def test_old_format_lora_for_another_model_is_refused(engine, models, cache, tmp_path, before):
    old = old_format_lora(models.base.unet)
    key = next(iter(old))
    old[key] = torch.ones(4, 7)
    tar = write_tar(tmp_path / "t.tar", {"lora.safetensors": save(old)})
    with (
        pytest.raises(LoraError, match="has shape"),
        apply(engine, cache, tmp_path, replicate_weights=str(tar)),
    ):
        pass


def _finetune(models, scale=0.05) -> dict:
    """Like the trainer's unet.safetensors: every UNet weight but the norms, perturbed."""
    g = torch.Generator().manual_seed(3)
    return {
        k: v + scale * torch.randn(v.shape, generator=g)
        for k, v in models.base.unet.state_dict().items()
        if "norm" not in k and "time" not in k
    }


def test_full_finetune_changes_the_output_and_is_put_back(
    engine, models, cache, tmp_path, before, base_image
):
    tar = write_tar(tmp_path / "ft.tar", {"unet.safetensors": save(_finetune(models))})
    with apply(engine, cache, tmp_path, replicate_weights=str(tar)) as applied:
        tuned = run(models)
    assert applied.describe()["finetuned_unet"] and abs(tuned - base_image).max() > 0.05
    assert (run(models) == base_image).all()


def test_finetune_restores_from_a_memory_copy_when_the_file_cannot_vouch(
    engine, models, cache, tmp_path, before, monkeypatch
):
    from sdxl.adapters.session import UnetOriginals

    monkeypatch.setattr(UnetOriginals, "_registry", {})
    monkeypatch.setattr("sdxl.adapters.session._unet_files", lambda folder: {})
    tar = write_tar(tmp_path / "ft.tar", {"unet.safetensors": save(_finetune(models))})
    with apply(engine, cache, tmp_path, replicate_weights=str(tar)):
        originals = UnetOriginals.for_unet(models.base.unet)
        assert originals.snapshot_keys  # held in memory for this request only
    assert not originals.snapshot_keys


def _trained_tar(models, tmp_path, **extra):
    dims = (
        models.base.text_encoder.config.hidden_size,
        models.base.text_encoder_2.config.hidden_size,
    )
    members = {
        "embeddings.pti": embeddings_pti(2, dims),
        "special_params.json": params_json({"TOK": "<s0><s1>"}),
        **extra,
    }
    return write_tar(tmp_path / "trained.tar", members)


def test_new_tokens_are_usable_reach_the_refiner_and_are_removed(
    engine, models, cache, tmp_path, before, base_image
):
    tar = _trained_tar(models, tmp_path)
    base, refiner = models.base, models.refiner
    n1, n2 = len(base.tokenizer), len(base.tokenizer_2)
    with apply(engine, cache, tmp_path, replicate_weights=str(tar)) as applied:
        prompt = applied.rewrite("a photo of TOK")
        assert prompt == "a photo of <s0><s1>"
        assert applied.rewrite(None) is None
        for tok, n in ((base.tokenizer, n1), (base.tokenizer_2, n2), (refiner.tokenizer_2, n2)):
            ids = tok("<s0><s1>", add_special_tokens=False).input_ids
            assert ids == [n, n + 1]
        emb = base.text_encoder_2.get_input_embeddings().weight
        pti = dict(__import__("safetensors.torch").torch.load(tar_member(tar, "embeddings.pti")))
        assert torch.equal(emb[n2 : n2 + 2], pti["text_encoders_1"])
        tuned = run(models, prompt=prompt)
        plain_text = run(models, prompt="a photo of TOK")
    assert abs(tuned - plain_text).max() > 0.01
    assert len(base.tokenizer) == n1 and len(base.tokenizer_2) == n2


def tar_member(tar, name: str) -> bytes:
    import tarfile

    with tarfile.open(tar) as t:
        return t.extractfile(name).read()


def test_exception_in_the_body_restores_everything(engine, models, cache, tmp_path, before):
    old = old_format_lora(models.base.unet)
    tar = _trained_tar(models, tmp_path, **{"lora.safetensors": save(old)})
    with (
        pytest.raises(RuntimeError, match="boom"),
        apply(engine, cache, tmp_path, replicate_weights=str(tar)),
    ):
        raise RuntimeError("boom")


def test_cancellation_mid_lora_load_restores_everything(
    engine, models, cache, tmp_path, before, monkeypatch
):
    real = models.base.load_lora_into_unet

    def load_then_cancel(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(models.base, "load_lora_into_unet", load_then_cancel)
    tar = _trained_tar(
        models, tmp_path, **{"lora.safetensors": save(old_format_lora(models.base.unet))}
    )
    with (
        pytest.raises(KeyboardInterrupt),
        apply(engine, cache, tmp_path, replicate_weights=str(tar)),
    ):
        pytest.fail("the body must not run")


@pytest.mark.parametrize("step", ["_copy_into", "_grow"])
def test_cancellation_mid_finetune_or_tokens_restores_everything(
    engine, models, cache, tmp_path, before, monkeypatch, step
):
    import sdxl.adapters.session

    owner = sdxl.adapters.session if step == "_copy_into" else sdxl.adapters.session.Session
    real = getattr(owner, step)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        if len(calls) == 2:  # the second change is made, then the cancellation arrives
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(owner, step, flaky)
    tar = _trained_tar(models, tmp_path, **{"unet.safetensors": save(_finetune(models))})
    with (
        pytest.raises(KeyboardInterrupt),
        apply(engine, cache, tmp_path, replicate_weights=str(tar)),
    ):
        pytest.fail("the body must not run")


def test_tokens_of_the_wrong_width_are_refused(engine, models, cache, tmp_path, before):
    tar = write_tar(tmp_path / "t.tar", {"embeddings.pti": embeddings_pti(2, (7, 9))})
    with (
        pytest.raises(TrainedWeightsError, match="values per token"),
        apply(engine, cache, tmp_path, replicate_weights=str(tar)),
    ):
        pass


def test_empty_spec_touches_nothing(engine, models, cache, tmp_path, before):
    with apply(engine, cache, tmp_path) as applied:
        assert applied is None  # nothing prepared, nothing applied
