"""The ESRGAN-family upscalers installed under weights/upscalers/<name>.safetensors.

`Upscalers.upscale` runs one model pass (x the model's scale) in tiles, so memory stays bounded
whatever the image's size: each tile of TILE x TILE input pixels is run with CONTEXT more pixels
of its neighbours on every side (the image's own pixels, zero padding only at its borders), and
only the tile's own part of the output is kept. No blending is needed: an output pixel differs
from the untiled pass only through what lies beyond CONTEXT pixels, which RRDBNet's effective
field barely reaches (and the tests' tiny model's field does not reach at all).

Not thread-safe: it keeps the last used model, and the engine calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdxl.config import UPSCALERS_DIR
from sdxl.errors import field_error
from sdxl.upscale.rrdbnet import RRDBNet, load_rrdbnet

TILE = 192  # input pixels per tile side (at 4x, a 768 px output tile)
CONTEXT = 16  # input pixels of neighbours each tile sees on each side
OnTile = Callable[[int, int], object]  # (tiles done, tiles in all); may raise to stop


def _spans(size: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, size)) for start in range(0, size, tile)]


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the right and bottom so both sides are multiples of `multiple`."""
    pad_h, pad_w = -x.shape[2] % multiple, -x.shape[3] % multiple
    if pad_h == pad_w == 0:
        return x
    mode = "reflect" if min(x.shape[2:]) > max(pad_h, pad_w) else "replicate"
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def upscale_tiled(
    model: RRDBNet,
    image: torch.Tensor,
    tile: int = TILE,
    context: int = CONTEXT,
    on_tile: OnTile | None = None,
) -> torch.Tensor:
    """`model` over a (1, C, H, W) tensor in 0..1, tile by tile; returns (1, C, H*s, W*s)."""
    scale, (_, _, height, width) = model.scale, image.shape
    out = torch.empty(1, model.conv_last.out_channels, height * scale, width * scale)
    tiles = [(ys, xs) for ys in _spans(height, tile) for xs in _spans(width, tile)]
    for done, ((y0, y1), (x0, x1)) in enumerate(tiles, 1):
        top, left = max(y0 - context, 0), max(x0 - context, 0)
        window = image[:, :, top : min(y1 + context, height), left : min(x1 + context, width)]
        with torch.inference_mode():
            result = model(_pad_to(window, model.unshuffle)).float().cpu()
        dy, dx = (y0 - top) * scale, (x0 - left) * scale
        keep = result[:, :, dy : dy + (y1 - y0) * scale, dx : dx + (x1 - x0) * scale]
        out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = keep
        if on_tile is not None:
            on_tile(done, len(tiles))
    return out


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) float tensor in 0..1."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) tensor in 0..1 (clamped) as an RGB image."""
    pixels = tensor[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels, "RGB")


class Upscalers:
    """The models in `weights_dir`/upscalers/, by file stem; each loaded when first used."""

    def __init__(
        self,
        weights_dir: Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tile: int = TILE,
        context: int = CONTEXT,
    ):
        self.folder = Path(weights_dir) / UPSCALERS_DIR
        self.device, self.dtype = torch.device(device), dtype
        self.tile, self.context = tile, context
        self._loaded: tuple[tuple[str, int], RRDBNet] | None = None  # ((name, mtime), model)

    def names(self) -> list[str]:
        """The installed models' names (file stems), sorted; [] without an upscalers/ folder."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.safetensors") if p.is_file())

    def path(self, name: str) -> Path:
        """The file of model `name`; an InputError naming `hires_upscaler` when none is."""
        names = self.names()
        if name not in names:
            choices = ", ".join(names) if names else f"none are installed in {self.folder}"
            raise field_error(
                "{field} is not an installed upscaler model; the models here: {choices} "
                "(others: latent and Pillow upscalers; put <name>.safetensors in upscalers/)",
                "hires_upscaler",
                name,
                words={"choices": choices},
            )
        return self.folder / f"{name}.safetensors"

    def upscale(self, image: Image.Image, name: str, on_tile: OnTile | None = None) -> Image.Image:
        """One pass of model `name` over `image` (RGB out), scale times larger, in tiles;
        `on_tile(done, total)` is called after each tile and may raise to stop."""
        model = self._model(name)
        pixels = to_tensor(image).to(self.device, self.dtype)
        return to_image(upscale_tiled(model, pixels, self.tile, self.context, on_tile))

    def _model(self, name: str) -> RRDBNet:
        path = self.path(name)
        key = (name, path.stat().st_mtime_ns)  # a replaced file is loaded again
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the previous model before loading the next
            model = load_rrdbnet(path).to(self.device, self.dtype)
            self._loaded = (key, model)
        return self._loaded[1]
