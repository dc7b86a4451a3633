"""The trainer's preprocessing with the tiny helper models (`weights tiny` builds them): BLIP's
captions after the prefix (each concept's word in it), CLIPSeg's masks for a prompt, crops
around the mask's centre, small images upscaled by Swin2SR (or resized without it), faces
(none here: the whole image), each helper loaded for its stage and freed after it."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from support.archives import photos, write_zip

from sdxl.errors import InputError
from sdxl.train import preprocess as pre
from sdxl.train.archive import read_archive
from sdxl.train.options import TrainRequest

SIZE = 256


@pytest.fixture
def helpers(tiny_weights):
    return pre.HelperModels(tiny_weights, torch.device("cpu"), torch.float32)


@pytest.fixture
def loaded(monkeypatch):
    """Each helper model loaded, and what became of it afterwards."""
    models = []
    real = pre.HelperModels.load

    def load(self, name):
        processor, model = real(self, name)
        models.append((name, model))
        return processor, model

    monkeypatch.setattr(pre.HelperModels, "load", load)
    return models


def archive_of(tmp_path, members, token="TOK"):
    path = write_zip(tmp_path / "in.zip", members)
    return read_archive(path, "infer", tmp_path / "job", token)


def test_images_without_captions_are_captioned_after_the_prefix(tmp_path, helpers, loaded):
    found = archive_of(tmp_path, {**photos(1, "DOG/", None), **photos(1, "CAT/", None)})
    req = TrainRequest(input_images="x", resolution=SIZE)
    prepared = pre.preprocess(found.images, req, helpers)
    assert [p.caption.split(",")[0] for p in prepared] == ["a photo of DOG", "a photo of CAT"]
    assert [name for name, _ in loaded] == ["blip"]
    assert all(p.device.type == "meta" for _, m in loaded for p in m.parameters())  # freed


def test_a_mask_prompt_uses_clipseg_and_the_crop_follows_the_mask(tmp_path, helpers, loaded):
    found = archive_of(tmp_path, photos(1))
    req = TrainRequest(input_images="x", resolution=SIZE, mask_target_prompts="a cat")
    (item,) = pre.preprocess(found.images, req, helpers)
    assert [name for name, _ in loaded] == ["clipseg"]
    assert item.mask.size == (SIZE, SIZE) and len(set(item.mask.getdata())) > 1
    assert item.caption == "a photo of TOK number 0"  # given: no captioner


def test_the_square_crop_is_centred_on_the_mask_as_near_as_it_fits():
    mask = np.zeros((200, 300), np.uint8)
    mask[:, 250:] = 255  # what matters is at the right edge
    centre = pre._centre(Image.fromarray(mask))
    assert pre._square((300, 200), centre) == (100, 0, 300, 200)
    assert pre._square((300, 200), None) == (50, 0, 250, 200)
    assert pre._square((200, 300), (100, 10)) == (0, 0, 200, 200)


def test_small_images_are_upscaled_by_swin2sr_or_resized_without_it(tmp_path, helpers, loaded):
    found = archive_of(tmp_path, photos(1))  # 256 pixels: smaller than 512
    req = TrainRequest(input_images="x", resolution=512)
    (item,) = pre.preprocess(found.images, req, helpers)
    assert [name for name, _ in loaded] == ["swin2sr"] and item.image.size == (512, 512)
    loaded.clear()
    weights = tmp_path / "weights"
    shutil.copytree(helpers.root.parent / "train", weights / "train")
    shutil.rmtree(weights / "train" / "swin2sr")
    without = pre.HelperModels(weights, torch.device("cpu"), torch.float32)
    (resized,) = pre.preprocess(found.images, req, without)
    assert loaded == [] and resized.image.size == (512, 512)


def test_an_image_without_a_face_is_trained_whole_and_the_log_names_it():
    image = Image.new("RGB", (128, 128), (40, 90, 200))
    said: list[str] = []
    assert set(pre._face_mask(image, "me/photo-3.png", said.append).getdata()) == {255}
    assert said == ["no face found in 'me/photo-3.png': it is trained whole"]


def test_transparency_is_flattened_onto_white_as_predictions_do(tmp_path):
    """A transparent PNG (transparent black around an opaque blue square): white around the
    square, as `sdxl.images.inputs.decode` gives a prediction's image; no helper is needed."""
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[64:192, 64:192] = (20, 40, 220, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    found = archive_of(tmp_path, {"clear.png": buffer.getvalue(), "clear.txt": b"a TOK"})
    none = pre.HelperModels(tmp_path / "no-helpers", torch.device("cpu"), torch.float32)
    req = TrainRequest(input_images="x", resolution=SIZE)
    (item,) = pre.preprocess(found.images, req, none)
    image = np.asarray(item.image)
    assert image.shape == (SIZE, SIZE, 3)
    assert image[5, 5].tolist() == [255, 255, 255]  # the transparent corner: white
    assert image[128, 128].tolist() == [20, 40, 220]  # the opaque square as it was


def test_the_training_log_names_what_was_skipped_and_the_images_without_a_face(tmp_path):
    """The log of a training's first slice: the stray files and OS clutter the archive skipped,
    and each image no face was found in, by its name in the archive."""
    from types import SimpleNamespace

    from sdxl.train.training import Training

    members = {**photos(2, "me/"), "me/README.md": b"my photos", "__MACOSX/._x.png": b"junk"}
    path = write_zip(tmp_path / "in.zip", members)
    req = TrainRequest(input_images=str(path), resolution=SIZE, use_face_detection_instead=True)
    training = Training(req, tmp_path / "work")
    training.prepare(lambda: None)
    job = SimpleNamespace(logs=[], check=lambda: None)
    job.log = job.logs.append
    models = SimpleNamespace(weights_dir=tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    slices = training.slices(models, job)
    assert next(slices) == "preprocessed"
    slices.close()
    assert job.logs[2:6] == [
        "skipped 1 file that is neither an image (.png, .jpg, .jpeg, .webp) nor a caption "
        "beside one: 'me/README.md'",
        "skipped 1 OS file (__MACOSX/, names starting with a dot)",
        "no face found in 'me/photo-0.png': it is trained whole",
        "no face found in 'me/photo-1.png': it is trained whole",
    ]


def test_a_found_face_is_weighted_and_the_crop_centres_on_it(monkeypatch):
    """OpenCV's detector stands in with one face at (160..224, 40..104) of a 256² image: the
    mask is the face's weight there, the background's far from it, and its centre (where a
    salience crop centres) moves from the image's centre towards the face."""
    import cv2

    class OneFace:
        def __init__(self, path):
            assert path.endswith("haarcascade_frontalface_default.xml")

        def detectMultiScale(self, gray, *args, **kwargs):  # OpenCV's name
            assert gray.shape == (256, 256)
            return np.array([[160, 40, 64, 64]])

    monkeypatch.setattr(cv2, "CascadeClassifier", OneFace)
    said: list[str] = []
    mask = np.asarray(pre._face_mask(Image.new("RGB", (256, 256), (40, 90, 200)), "a", said.append))
    assert said == []  # a face found: nothing to say
    assert mask[72, 192] == round(255 * pre.FACE_WEIGHT)  # the face's centre (row, column)
    assert mask[220, 30] == round(255 * pre.BACKGROUND_WEIGHT)  # a far corner
    x, y = pre._centre(Image.fromarray(mask))  # pulled from the image's centre to the face
    assert 128 + 10 < x < 192 and 72 < y < 128 - 10, (x, y)


def test_missing_helpers_are_an_error_naming_the_download(tmp_path):
    found = archive_of(tmp_path, photos(1, caption=None))
    none = pre.HelperModels(tmp_path / "empty", torch.device("cpu"), torch.float32)
    with pytest.raises(InputError, match="python -m sdxl weights download"):
        pre.preprocess(found.images, TrainRequest(input_images="x", resolution=SIZE), none)
