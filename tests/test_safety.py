"""sdxl.generate.safety: tiny checkers that never flag or flag everything through their
thresholds, the helpers the Cog and REST paths use, and loading from safetensors only."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sdxl.builders.tiny_safety import build_tiny_safety_checker
from sdxl.config import SAFETY_DIR
from sdxl.errors import InputError
from sdxl.generate.safety import FILES, SafetyChecker, SafetyCheckerError, load_safety_checker
from sdxl.images.outputs import AllFlagged, encode_outputs
from sdxl.images.result import Result, StepPlan
from sdxl.inputs.request import Request

CPU = torch.device("cpu")


def load(root: Path) -> SafetyChecker:
    return load_safety_checker(root, CPU, torch.float32)


@pytest.fixture(scope="module")
def never(tmp_path_factory) -> SafetyChecker:
    root = tmp_path_factory.mktemp("never")
    build_tiny_safety_checker(root / SAFETY_DIR)
    return load(root)


@pytest.fixture(scope="module")
def everything(tmp_path_factory) -> SafetyChecker:
    root = tmp_path_factory.mktemp("everything")
    build_tiny_safety_checker(root / SAFETY_DIR, flag_everything=True)
    return load(root)


@pytest.fixture(scope="module")
def outputs(engine) -> list[Image.Image]:
    """Three tiny-model outputs, plus the extremes: black, white and noise."""
    request = Request(
        prompt="a photo of a cat", width=256, height=256, num_outputs=3, num_inference_steps=2
    )
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))
    extremes = [Image.new("RGB", (256, 256)), Image.new("RGB", (512, 256), "white"), noise]
    return [*engine.run(request).images, *extremes]


def test_the_tiny_checker_has_the_real_layout(tmp_path) -> None:
    folder = build_tiny_safety_checker(tmp_path / SAFETY_DIR)
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)


def test_the_never_flagging_checker_flags_nothing(never, outputs) -> None:
    assert never.check(outputs) == [False] * len(outputs)
    assert never.check(outputs[:1]) == [False]
    assert never.check([]) == []


def test_a_flag_everything_checker_flags_every_image(everything, outputs) -> None:
    assert everything.check(outputs) == [True] * len(outputs)
    assert everything.check(outputs[1:2]) == [True]


def test_checking_changes_no_image(everything, outputs) -> None:
    before = [im.tobytes() for im in outputs]
    everything.check(outputs)
    assert [im.tobytes() for im in outputs] == before


def test_weights_tiny_writes_a_never_flagging_checker(tiny_weights, outputs) -> None:
    assert load(tiny_weights).check(outputs) == [False] * len(outputs)


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (256, 256 + 8 * i), (40 * i, 90, 200)) for i in range(n)]


def result_of(ims: list[Image.Image], flags: list[bool]) -> Result:
    seeds = [100 + i for i in range(len(ims))]
    return Result(ims, seeds, "txt2img", StepPlan(1), parameters={"prompt": "p"}, nsfw=flags)


def decoded(output) -> np.ndarray:
    with Image.open(io.BytesIO(output.data)) as img:
        return np.asarray(img.convert("RGB"))


def test_dropping_keeps_the_unflagged_images_with_their_seeds() -> None:
    ims = images(4)
    kept = encode_outputs(result_of(ims, [False, True, False, True]), "png", 80, "drop")
    assert [(o.index, o.seed, o.name) for o in kept] == [
        (0, 100, "out-0.png"),
        (2, 102, "out-1.png"),
    ]
    for output, image in zip(kept, (ims[0], ims[2]), strict=True):
        assert np.array_equal(decoded(output), np.asarray(image))
    assert len(encode_outputs(result_of(ims, [False] * 4), "png", 80, "drop")) == 4
    assert encode_outputs(result_of([], []), "png", 80, "drop") == []


@pytest.mark.parametrize(
    ("n", "start"), [(4, "all 4 images were flagged"), (1, "the image was flagged")]
)
def test_dropping_fails_when_every_image_is_flagged(n, start) -> None:
    with pytest.raises(AllFlagged) as caught:
        encode_outputs(result_of(images(n), [True] * n), "png", 80, "drop")
    assert not isinstance(caught.value, InputError)  # the request was fine: the images were not
    assert str(caught.value) == (
        f"{start} by the safety checker; try another prompt or seed, or set disable_safety_checker"
    )


def test_blackening_replaces_only_the_flagged_images() -> None:
    ims = images(3)
    before = [im.tobytes() for im in ims]
    out = encode_outputs(result_of(ims, [True, False, True]), "png", 80, "black")
    assert [o.flagged for o in out] == [True, False, True]
    assert np.array_equal(decoded(out[1]), np.asarray(ims[1]))
    for im, black in ((ims[0], out[0]), (ims[2], out[2])):
        assert decoded(black).shape == np.asarray(im).shape
        assert not decoded(black).any()
    assert [im.tobytes() for im in ims] == before


def test_the_step_refuses_mismatched_flags() -> None:
    with pytest.raises(ValueError, match="2 images but 3 safety flags"):
        encode_outputs(result_of(images(2), [False] * 3), "png", 80, "drop")


def test_a_pickle_checkpoint_is_refused_unread(tmp_path, monkeypatch) -> None:
    folder = build_tiny_safety_checker(tmp_path / SAFETY_DIR)
    # The real repository's other format: the same weights as a pickle.
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(SafetyCheckerError) as caught:
        load(tmp_path)
    message = str(caught.value)
    assert "pytorch_model.bin" in message and "only safetensors" in message
    assert f"python -m sdxl weights download {tmp_path}" in message


def test_a_missing_checker_names_the_command_that_fetches_it(tmp_path) -> None:
    with pytest.raises(SafetyCheckerError) as caught:
        load(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / SAFETY_DIR) in message
    assert f"python -m sdxl weights download {tmp_path}" in message


def test_an_incomplete_checker_folder_names_what_is_missing(tmp_path) -> None:
    folder = build_tiny_safety_checker(tmp_path / "full" / SAFETY_DIR)
    shutil.copytree(folder, tmp_path / SAFETY_DIR, ignore=shutil.ignore_patterns("preproc*"))
    with pytest.raises(SafetyCheckerError, match="missing preprocessor_config.json"):
        load(tmp_path)


def test_a_checkpoint_missing_weights_is_refused(tmp_path) -> None:
    # Without the thresholds the checker would start from random ones and flag nothing.
    folder = build_tiny_safety_checker(tmp_path / SAFETY_DIR)
    weights = load_file(folder / "model.safetensors")
    del weights["concept_embeds_weights"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SafetyCheckerError, match="lacks concept_embeds_weights"):
        load(tmp_path)


def test_the_checkpoint_layout_of_the_real_repository_loads(tmp_path) -> None:
    """CompVis' model.safetensors was written by transformers 4, as vision_model.vision_model.*
    (with a position_ids buffer); every weight must still land where it belongs."""
    folder = build_tiny_safety_checker(tmp_path / SAFETY_DIR, flag_everything=True)
    weights = load_file(folder / "model.safetensors")
    nested = {
        re.sub(r"^vision_model\.", "vision_model.vision_model.", k): v for k, v in weights.items()
    }
    nested["vision_model.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    save_file(nested, folder / "model.safetensors", metadata={"format": "pt"})
    loaded = load(tmp_path).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
