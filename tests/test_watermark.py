"""sdxl.generate.watermark against invisible-watermark itself: same pixels, same bits, no state.

The reference is the invisible-watermark package (imwatermark), installed for the tests only and
without its dependencies (`python -m pip install --no-deps invisible-watermark==0.2.0`), since
it requires the GUI build of OpenCV; here it imports the headless one of requirements.txt.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from sdxl.generate import watermark
from sdxl.generate.watermark import WATERMARK_BITS, apply_watermark, has_watermark, read_watermark
from sdxl.inputs.request import Request

_REFERENCE_MISSING = (
    "the reference encoder is not installed: run "
    "`python -m pip install --no-deps invisible-watermark==0.2.0` (README, Tests)"
)


@pytest.fixture(scope="module")
def imwatermark():
    try:
        import imwatermark
    except ImportError as err:
        pytest.fail(f"{_REFERENCE_MISSING} ({err})")
    return imwatermark


def reference_mark(imwatermark, image: Image.Image) -> np.ndarray:
    """What diffusers does with SDXL outputs: RGB -> BGR, encode dwtDct, BGR -> RGB, to uint8."""
    encoder = imwatermark.WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    bgr = np.asarray(image, dtype=np.float32)[:, :, ::-1]
    rgb = encoder.encode(bgr, "dwtDct")[:, :, ::-1]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def reference_bits(imwatermark, image: Image.Image) -> list[int]:
    decoder = imwatermark.WatermarkDecoder("bits", len(WATERMARK_BITS))
    bgr = np.asarray(image, dtype=np.float32)[:, :, ::-1]
    return [int(bit) for bit in decoder.decode(bgr, "dwtDct")]


def smooth(width: int, height: int) -> Image.Image:
    """A smooth, softly coloured gradient. The mark lives in the U (blue-difference) channel and
    reads back reliably where that is low; on saturated colours or noise it often does not."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack(
        [
            70 + 100 * x / width + 8 * np.sin(y / 40),
            60 + 55 * (x / width + y / height),
            65 + 100 * x / width + 6 * np.cos(x / 50),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def cats(**changes) -> Request:
    """Two tiny-model images of one seed, fast."""
    base = dict(prompt="a photo of a cat", width=256, height=256, num_outputs=2, seed=7)
    return Request(**{**base, "num_inference_steps": 2, **changes})


@pytest.fixture(scope="module")
def unmarked(engine) -> list[Image.Image]:
    return engine.run(cats(apply_watermark=False)).images


def test_the_message_is_sdxl_s_48_bits() -> None:
    from diffusers.pipelines.stable_diffusion_xl import watermark as sdxl

    assert WATERMARK_BITS == sdxl.WATERMARK_BITS and len(WATERMARK_BITS) == 48


def test_generated_output_marked_equals_the_reference_encoder(imwatermark, unmarked) -> None:
    marked = apply_watermark(unmarked)
    assert len(marked) == len(unmarked)
    for ours, plain in zip(marked, unmarked, strict=True):
        assert ours.mode == "RGB" and ours.size == plain.size == (256, 256)
        assert not np.array_equal(pixels(ours), pixels(plain))  # the mark changed something
        assert np.array_equal(pixels(ours), reference_mark(imwatermark, plain))


def test_generate_marks_its_outputs_unless_told_not_to(engine, unmarked) -> None:
    marked = engine.run(cats()).images  # apply_watermark defaults to true
    expected = apply_watermark(unmarked)
    assert [pixels(m).tobytes() for m in marked] == [pixels(e).tobytes() for e in expected]


@pytest.mark.parametrize("size", [(260, 300), (516, 264), (1344, 768)])
def test_matches_the_reference_encoder_at_other_sizes(imwatermark, size) -> None:
    rng = np.random.default_rng(sum(size))
    noise = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for image in (noise, smooth(*size)):
        assert np.array_equal(pixels(watermark.mark(image)), reference_mark(imwatermark, image))


def test_decoder_reads_sdxl_bits_from_a_marked_smooth_image(imwatermark) -> None:
    plain = smooth(512, 512)
    marked = apply_watermark([plain])[0]
    assert reference_bits(imwatermark, marked) == WATERMARK_BITS
    assert read_watermark(marked) == WATERMARK_BITS and has_watermark(marked)
    assert reference_bits(imwatermark, plain) != WATERMARK_BITS
    assert read_watermark(plain) == reference_bits(imwatermark, plain)
    assert not has_watermark(plain)


@pytest.mark.parametrize("size", [(255, 512), (128, 128), (512, 100)])
def test_images_too_small_for_the_encoder_are_left_unmarked(size) -> None:
    # Narrower than 256 px (diffusers skips those) or under 256x256 px in all (the encoder
    # refuses those): returned unchanged, as a new image.
    image = smooth(*size)
    (out,) = apply_watermark([image])
    assert out is not image and np.array_equal(pixels(out), pixels(image))
    assert read_watermark(image) is None


def test_the_smallest_markable_image_is_marked() -> None:
    image = smooth(256, 256)
    assert not np.array_equal(pixels(watermark.mark(image)), pixels(image))


def test_inputs_are_never_changed() -> None:
    images = [smooth(256, 320), smooth(300, 256).convert("RGBA")]
    before = [im.tobytes() for im in images]
    out = apply_watermark(images)
    assert [im.tobytes() for im in images] == before
    assert all(o is not i for o, i in zip(out, images, strict=True))
    assert out[1].mode == "RGB"


class Cancelled(BaseException):
    """Stands in for Cog's cancellation, which is not an Exception either."""


def test_marking_keeps_no_state_between_calls(monkeypatch) -> None:
    """A prediction that fails or is cancelled midway, or that runs with the mark off, cannot
    change the next one: the mark is a pure function of the image."""
    image = smooth(320, 256)
    bits = list(WATERMARK_BITS)
    first = pixels(watermark.mark(image)).copy()
    calls = 0
    real_dwt2 = watermark.pywt.dwt2

    def dwt2_then_fail(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Cancelled("midway")
        return real_dwt2(*args, **kwargs)

    monkeypatch.setattr(watermark.pywt, "dwt2", dwt2_then_fail)
    with pytest.raises(Cancelled):
        apply_watermark([image, image])
    monkeypatch.undo()
    assert np.array_equal(pixels(watermark.mark(image)), first)
    assert bits == watermark.WATERMARK_BITS


def test_concurrent_calls_give_the_same_marks() -> None:
    images = [smooth(256 + 8 * i, 256) for i in range(4)]
    expected = [pixels(watermark.mark(im)).tobytes() for im in images]
    barrier = threading.Barrier(4)

    def run(index: int) -> bytes:
        barrier.wait()
        return pixels(watermark.mark(images[index])).tobytes()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, range(4))) == expected
