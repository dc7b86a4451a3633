"""SDXL's invisible watermark: the `dwtDct` method of invisible-watermark with SDXL's 48 bits.

A port of the one code path SDXL uses (invisible-watermark 0.2.0, `imwatermark/maxDct.py`,
MIT licence, default scales [0, 36, 36] and 4x4 blocks), so that the package, which requires
the GUI build `opencv-python` and so the system's libGL, is not needed at run time. It makes
the same OpenCV (headless build) and PyWavelets calls in the same order, vectorised over the
blocks; tests/test_watermark.py checks it pixel for pixel against the package itself.

As in diffusers, the mark goes on every image of a request; images narrower than 256 px are
left unmarked (diffusers' rule), and so are images of under 256x256 px in area, which the
encoder refuses. The functions are pure: nothing here keeps state between calls.
"""

from __future__ import annotations

import cv2
import numpy as np
import pywt
from PIL import Image

# diffusers' pipelines/stable_diffusion_xl/watermark.py, from Stability AI's generative-models.
WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
WATERMARK_BITS = [int(bit) for bit in bin(WATERMARK_MESSAGE)[2:]]
MIN_WIDTH = 256
MIN_PIXELS = 256 * 256
_SCALE = 36  # scales [0, 36, 36]: only channel 1 (U) is marked; Y has scale 0, V is never read
_CHANNEL = 1
_BLOCK = 4


def apply_watermark(images: list[Image.Image]) -> list[Image.Image]:
    """New RGB images carrying SDXL's watermark; the inputs are never changed."""
    return [mark(image) for image in images]


def markable(width: int, height: int) -> bool:
    return width >= MIN_WIDTH and width * height >= MIN_PIXELS


def mark(image: Image.Image) -> Image.Image:
    """One image, marked as diffusers marks SDXL outputs (RGB -> BGR, encode, BGR -> RGB)."""
    if not markable(*image.size):
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    bgr = _bgr(image)
    rgb = encode(bgr, WATERMARK_BITS)[:, :, ::-1]
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def read_watermark(image: Image.Image) -> list[int] | None:
    """The 48 bits the dwtDct decoder reads from `image`; None if it is too small to carry any."""
    if not markable(*image.size):
        return None
    return decode(_bgr(image), len(WATERMARK_BITS))


def has_watermark(image: Image.Image) -> bool:
    return read_watermark(image) == WATERMARK_BITS


def encode(bgr: np.ndarray, bits: list[int]) -> np.ndarray:
    """EmbedMaxDct.encode: a float32 BGR array (values 0..255) in, the marked float32 array out."""
    rows, cols = _whole_blocks(bgr.shape)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    approx, (horizontal, vertical, diagonal) = pywt.dwt2(yuv[:rows, :cols, _CHANNEL], "haar")
    _embed(approx, np.asarray(bits, dtype=np.int64))
    # The package hands the detail bands back as (vertical, horizontal, diagonal); so do we,
    # or the pixels would differ from every other SDXL implementation's.
    restored = pywt.idwt2((approx, (vertical, horizontal, diagonal)), "haar")
    yuv[:rows, :cols, _CHANNEL] = restored
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)


def decode(bgr: np.ndarray, length: int) -> list[int]:
    """EmbedMaxDct.decode: each bit is the majority vote of the blocks that carry it."""
    rows, cols = _whole_blocks(bgr.shape)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    approx, _ = pywt.dwt2(yuv[:rows, :cols, _CHANNEL], "haar")
    blocks = _blocks(approx)
    values = np.abs(blocks[np.arange(len(blocks)), _peaks(blocks)])
    votes = ((values % _SCALE) > 0.5 * _SCALE).astype(np.float64)
    index = np.arange(len(blocks)) % length
    means = np.bincount(index, votes, length) / np.bincount(index, minlength=length)
    return [int(m * 255 > 127) for m in means]


def _bgr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1]


def _whole_blocks(shape: tuple[int, ...]) -> tuple[int, int]:
    """The region the encoder works on: rows and columns cropped to multiples of 4."""
    return shape[0] // 4 * 4, shape[1] // 4 * 4


def _blocks(frame: np.ndarray) -> np.ndarray:
    """The whole 4x4 blocks of `frame` as rows of 16, in the encoder's (row-major) order."""
    r, c = frame.shape[0] // _BLOCK, frame.shape[1] // _BLOCK
    tiles = frame[: r * _BLOCK, : c * _BLOCK].reshape(r, _BLOCK, c, _BLOCK).swapaxes(1, 2)
    return tiles.reshape(r * c, _BLOCK * _BLOCK)


def _peaks(blocks: np.ndarray) -> np.ndarray:
    """Per block, the position of the largest magnitude after the first (first one on ties)."""
    return np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1


def _embed(frame: np.ndarray, bits: np.ndarray) -> None:
    """EmbedMaxDct.encode_frame, in place: quantise each block's peak to carry one bit."""
    blocks = _blocks(frame)
    n = np.arange(len(blocks))
    peaks = _peaks(blocks)
    values = blocks[n, peaks]
    offsets = np.where(bits[n % len(bits)] == 1, np.float32(0.75), np.float32(0.25))
    magnitudes = ((np.abs(values) // _SCALE) + offsets) * np.float32(_SCALE)
    blocks[n, peaks] = np.where(values >= 0, magnitudes, -magnitudes)
    r, c = frame.shape[0] // _BLOCK, frame.shape[1] // _BLOCK
    tiles = blocks.reshape(r, c, _BLOCK, _BLOCK).swapaxes(1, 2)
    frame[: r * _BLOCK, : c * _BLOCK] = tiles.reshape(r * _BLOCK, c * _BLOCK)
