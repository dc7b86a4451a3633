"""Replicate trainer tars: what a good one yields, and every hostile one refused clearly."""

from __future__ import annotations

import io
import pickle
import re
import tarfile

import pytest
import torch
from safetensors.torch import save
from support.loras import embeddings_pti, params_json, write_tar

from sdxl.adapters import tar as trained
from sdxl.adapters.tar import TrainedWeightsError, read_trained_tar, sniff
from sdxl.errors import InputError

LORA = {"a.processor.to_q_lora.down.weight": torch.ones(2, 3)}


def _read(tmp_path, members: dict, mode: str = "w"):
    path = tmp_path / "in.tar"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return read_trained_tar(path, tmp_path / "work")


def _special(tmp_path, configure) -> TrainedWeightsError:
    """A tar whose one odd member is set up by `configure(info)`; returns the error raised."""
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        data = save(LORA)
        ok = tarfile.TarInfo("lora.safetensors")
        ok.size = len(data)
        tar.addfile(ok, io.BytesIO(data))
        info = tarfile.TarInfo("odd")
        configure(info)
        tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    with pytest.raises(TrainedWeightsError) as caught:
        read_trained_tar(path, tmp_path / "work")
    return caught.value


def test_a_trainer_tar_yields_lora_tokens_and_params(tmp_path):
    weights = _read(
        tmp_path,
        {
            "./lora.safetensors": save(LORA),
            "embeddings.pti": embeddings_pti(2, (4, 6)),
            "special_params.json": params_json({"TOK": "<s0><s1>"}),
            "training_log.txt": b"ignored",
        },
    )
    assert torch.equal(weights.lora["a.processor.to_q_lora.down.weight"], torch.ones(2, 3))
    assert weights.tokens == ["<s0>", "<s1>"]
    assert [tuple(e.shape) for e in weights.embeddings] == [(2, 4), (2, 6)]
    assert weights.special_params == {"TOK": "<s0><s1>"}
    assert weights.unet_file is None
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "embeddings.pti",
        "lora.safetensors",
        "special_params.json",
    ]


def test_a_gzipped_tar_with_a_full_finetune(tmp_path):
    weights = _read(tmp_path, {"unet.safetensors": save({"w": torch.zeros(3)})}, mode="w:gz")
    assert weights.unet_file == tmp_path / "work" / "unet.safetensors" and weights.lora is None


@pytest.mark.parametrize(
    ("configure", "message"),
    [
        (lambda i: setattr(i, "name", "/etc/evil"), "absolute path"),
        (lambda i: setattr(i, "name", "../evil"), r"'\.\.'"),
        (lambda i: setattr(i, "name", "a/../../evil"), r"'\.\.'"),
        (lambda i: (setattr(i, "type", tarfile.SYMTYPE), setattr(i, "linkname", "/etc")), "link"),
        (lambda i: (setattr(i, "type", tarfile.LNKTYPE), setattr(i, "linkname", "x")), "link"),
        (lambda i: setattr(i, "type", tarfile.CHRTYPE), "device"),
        (lambda i: setattr(i, "type", tarfile.BLKTYPE), "device"),
        (lambda i: setattr(i, "type", tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "symlink", "hardlink", "chr", "blk", "fifo"],
)
def test_hostile_members_refuse_the_whole_tar(tmp_path, configure, message):
    err = _special(tmp_path, configure)
    assert isinstance(err, InputError) and "replicate_weights" in str(err)
    assert "the tar is refused" in str(err) and re.search(message, str(err)), str(err)
    assert not (tmp_path / "evil").exists()


def test_too_many_members(tmp_path, monkeypatch):
    monkeypatch.setattr(trained, "MAX_MEMBERS", 3)
    with pytest.raises(TrainedWeightsError, match="more than 3 members"):
        _read(tmp_path, {f"f{i}": b"x" for i in range(4)})


def test_member_too_big_and_total_too_big(tmp_path, monkeypatch):
    monkeypatch.setitem(trained.MEMBER_LIMITS, "embeddings.pti", 100)
    with pytest.raises(TrainedWeightsError, match="embeddings.pti is .* bytes; the limit is 100"):
        _read(tmp_path, {"embeddings.pti": embeddings_pti(2, (4, 6))})
    monkeypatch.setattr(trained, "MAX_TOTAL_BYTES", 1000)
    with pytest.raises(TrainedWeightsError, match="add up to more than 1000 bytes"):
        _read(tmp_path, {"junk": b"x" * 600, "junk2": b"y" * 600})


def test_pickles_are_never_loaded(tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    raw = pickle.dumps({"text_encoders_0": [1.0]})
    with pytest.raises(TrainedWeightsError, match="embeddings.pti is a pickle"):
        _read(tmp_path, {"embeddings.pti": raw})
    zipped = io.BytesIO()
    torch.save({"x": torch.ones(1)}, zipped)
    with pytest.raises(TrainedWeightsError, match="lora.safetensors is a pickle"):
        _read(tmp_path, {"lora.safetensors": zipped.getvalue()})
    with pytest.raises(TrainedWeightsError, match="not a safetensors file"):
        _read(tmp_path, {"unet.safetensors": b"hello, world, not tensors"})


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"lora.safetensors": save(LORA), "unet.safetensors": save(LORA)}, "both"),
        ({"readme.txt": b"hi"}, "none of"),
        ({"special_params.json": b"{not json"}, "not valid JSON"),
        ({"special_params.json": params_json({"TOK": 3})}, "string value"),
        ({"special_params.json": params_json(["TOK"])}, "JSON object"),
        ({"embeddings.pti": save({"text_encoders_0": torch.ones(2, 4)})}, "exactly"),
        (
            {
                "embeddings.pti": save(
                    {"text_encoders_0": torch.ones(2, 4), "text_encoders_1": torch.ones(3, 6)}
                )
            },
            "same number of token rows",
        ),
        ({"lora.safetensors": save({"k": torch.tensor([float("nan")])})}, "NaN"),
        ({"lora.safetensors": save({"k": torch.ones(2, dtype=torch.int64)})}, "not float"),
    ],
    ids=[
        "lora+unet",
        "empty",
        "bad-json",
        "non-string",
        "list",
        "one-encoder",
        "rows",
        "nan",
        "int",
    ],
)
def test_malformed_contents_are_refused_clearly(tmp_path, members, message):
    with pytest.raises(TrainedWeightsError, match=message):
        _read(tmp_path, members)


def test_duplicate_and_truncated_members(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("lora.safetensors")
            data = save(LORA)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(TrainedWeightsError, match="twice"):
        read_trained_tar(path, tmp_path / "w1")
    whole = write_tar(tmp_path / "whole.tar", {"lora.safetensors": save(LORA) * 50}).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(TrainedWeightsError):
        read_trained_tar(cut, tmp_path / "w2")


def test_not_a_tar_at_all(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(TrainedWeightsError, match="not a readable tar"):
        read_trained_tar(path, tmp_path / "w")


def test_sniff_tells_formats_apart(tmp_path):
    (tmp_path / "a").write_bytes(save(LORA))
    (tmp_path / "b").write_bytes(pickle.dumps(1))
    write_tar(tmp_path / "c", {"x": b"y"})
    (tmp_path / "d").write_bytes(b"plain text")
    assert [sniff(tmp_path / n) for n in "abcd"] == ["safetensors", "pickle", "tar", "unknown"]
