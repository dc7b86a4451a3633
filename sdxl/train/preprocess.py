"""The training images made ready, as the reference trainer makes them, its defects fixed:

0. each image read as predictions read theirs (EXIF orientation, transparency flattened onto
   white);
1. a mask of what matters in each image: CLIPSeg's for `mask_target_prompts` (the prompt
   against an empty one, at `clipseg_temperature`), faces found by OpenCV's frontal-face
   detector for `use_face_detection_instead` (faces 1, the rest 0.2: the reference meant that
   and overflowed a byte instead), or a uniform mask;
2. a square crop around the mask's centre of mass (`crop_based_on_salience`) or the centre;
3. images smaller than `resolution` upscaled with Swin2SR x4 (its padding cropped off), then
   every image resized to `resolution` (LANCZOS), its mask with it;
4. a caption: the one given, else BLIP's (greedy, so a training is reproducible) after the
   caption prefix, with the concept's token in it.

Each helper model is loaded only for its stage and freed before the next (`HelperModels`), so
none of them holds memory while the UNet trains. Missing helper weights are an error naming
`python -m sdxl weights download`, except the upscaler: without it images are resized.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from sdxl.config import TRAIN_DIR
from sdxl.errors import InputError
from sdxl.images.inputs import decode
from sdxl.train.archive import TrainImage
from sdxl.train.options import TrainRequest

log = logging.getLogger("sdxl.train")

BLIP_DIR, CLIPSEG_DIR, SWIN2SR_DIR = "blip", "clipseg", "swin2sr"
FACE_WEIGHT, BACKGROUND_WEIGHT = 1.0, 0.2
MAX_CAPTION_TOKENS = 40


@dataclass
class Prepared:
    """One training example: the image and its mask at the training resolution."""

    image: Image.Image  # RGB, resolution x resolution
    mask: Image.Image  # L, 255 where it matters most
    caption: str  # with the concept's token as a word
    concept: str


class HelperModels:
    """Where the preprocessing models are (DIR/train/...), loaded one at a time."""

    def __init__(self, weights_dir: Path, device, dtype):
        self.root = Path(weights_dir) / TRAIN_DIR
        self.device, self.dtype = device, dtype

    def has(self, name: str) -> bool:
        return (self.root / name / "config.json").is_file()

    def require(self, name: str, why: str) -> Path:
        if not self.has(name):
            raise InputError(
                f"{why} need {self.root / name}, which is missing: run `python -m sdxl weights "
                f"download` (or `weights tiny` for the test model)",
                None,
            )
        return self.root / name

    def load(self, name: str):
        import transformers

        classes = {
            BLIP_DIR: ("BlipProcessor", "BlipForConditionalGeneration"),
            CLIPSEG_DIR: ("CLIPSegProcessor", "CLIPSegForImageSegmentation"),
            SWIN2SR_DIR: ("Swin2SRImageProcessor", "Swin2SRForImageSuperResolution"),
        }[name]
        folder = self.root / name
        processor = getattr(transformers, classes[0]).from_pretrained(folder)
        model = getattr(transformers, classes[1]).from_pretrained(
            folder, use_safetensors=True, dtype=self.dtype
        )
        return processor, model.to(self.device).requires_grad_(False).eval()


def preprocess(
    images: list[TrainImage],
    req: TrainRequest,
    helpers: HelperModels,
    check: Callable | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Prepared]:
    """The examples of `images`, in order; `check` may raise between images (a cancel);
    `say` takes what the training's log should say (a face not found)."""
    check = check or (lambda: None)
    say = say or log.info
    opened = [_opened(item, check) for item in images]
    masks = _masks(opened, images, req, helpers, check, say)
    squares, square_masks = [], []
    for image, mask in zip(opened, masks, strict=True):
        box = _square(image.size, _centre(mask) if req.crop_based_on_salience else None)
        squares.append(image.crop(box))
        square_masks.append(mask.crop(box))
    squares = _upscaled(squares, req.resolution, helpers, check)
    size = (req.resolution, req.resolution)
    squares = [image.resize(size, Image.LANCZOS) for image in squares]
    square_masks = [mask.resize(size, Image.LANCZOS) for mask in square_masks]
    captions = _captions(images, squares, req, helpers, check)
    return [
        Prepared(image, mask, caption, item.concept)
        for image, mask, caption, item in zip(squares, square_masks, captions, images, strict=True)
    ]


def _opened(item: TrainImage, check) -> Image.Image:
    """The image as predictions read theirs: EXIF orientation applied, RGB, transparency
    flattened onto white."""
    check()
    return decode(item.path.read_bytes(), item.member)


# ---- 1. masks ------------------------------------------------------------------------------
def _masks(images, items, req: TrainRequest, helpers: HelperModels, check, say) -> list:
    if req.use_face_detection_instead:
        masks = []
        for image, item in zip(images, items, strict=True):
            check()
            masks.append(_face_mask(image, item.member, say))
        return masks
    if not req.mask_target_prompts:
        return [Image.new("L", image.size, 255) for image in images]
    helpers.require(CLIPSEG_DIR, "masks for mask_target_prompts")
    import torch

    processor, model = helpers.load(CLIPSEG_DIR)
    masks = []
    try:
        for image in images:
            check()
            inputs = processor(
                text=[req.mask_target_prompts, ""],
                images=[image, image],
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            ).to(helpers.device)
            with torch.no_grad():
                logits = model(**inputs).logits.float()  # [2, 352, 352]
            probs = torch.softmax(logits / req.clipseg_temperature, dim=0)[0]
            probs = (probs + 0.01).clamp(0, 1)
            pixels = (255 * probs / probs.max()).cpu().numpy().astype(np.uint8)
            masks.append(Image.fromarray(pixels, "L").resize(image.size, Image.BILINEAR))
    finally:
        _free(helpers, model)
    return masks


def _face_mask(image: Image.Image, name: str, say: Callable[[str], None]) -> Image.Image:
    import cv2

    detector = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    side = min(image.size)
    faces = detector.detectMultiScale(gray, 1.1, 4, minSize=(max(16, side // 16),) * 2)
    if len(faces) == 0:
        say(f"no face found in {name[:100]!r}: it is trained whole")
        return Image.new("L", image.size, 255)
    mask = np.full(gray.shape, int(255 * BACKGROUND_WEIGHT), np.uint8)
    for x, y, w, h in faces:
        centre, axes = (int(x + w / 2), int(y + h / 2)), (int(w * 0.6), int(h * 0.75))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, int(255 * FACE_WEIGHT), -1)
    soft = max(1, int(min(faces[:, 2].min(), faces[:, 3].min()) / 8))
    return Image.fromarray(mask, "L").filter(ImageFilter.GaussianBlur(soft))


# ---- 2. crops ------------------------------------------------------------------------------
def _centre(mask: Image.Image) -> tuple[float, float]:
    """The mask's centre of mass (a uniform mask: the image's centre)."""
    weights = np.asarray(mask, np.float64) + 0.01
    ys, xs = np.indices(weights.shape)
    total = weights.sum()
    return float((xs * weights).sum() / total), float((ys * weights).sum() / total)


def _square(size: tuple[int, int], centre: tuple[float, float] | None) -> tuple[int, ...]:
    """The largest square inside `size`, as near `centre` (default: the middle) as it fits."""
    width, height = size
    side = min(width, height)
    cx, cy = centre if centre is not None else (width / 2, height / 2)
    left = round(min(max(cx - side / 2, 0), width - side))
    top = round(min(max(cy - side / 2, 0), height - side))
    return left, top, left + side, top + side


# ---- 3. upscaling --------------------------------------------------------------------------
def _upscaled(images, resolution: int, helpers: HelperModels, check) -> list[Image.Image]:
    small = [i for i, image in enumerate(images) if image.width < resolution]
    if not small:
        return images
    if not helpers.has(SWIN2SR_DIR):
        log.info(
            "%d images smaller than %d are resized: no upscaler in %s",
            len(small),
            resolution,
            helpers.root / SWIN2SR_DIR,
        )
        return images
    import torch

    processor, model = helpers.load(SWIN2SR_DIR)
    out = list(images)
    try:
        for i in small:
            check()
            image = images[i]
            inputs = processor(image, return_tensors="pt").to(helpers.device, helpers.dtype)
            with torch.no_grad():
                made = model(**inputs).reconstruction[0].float().clamp(0, 1)
            scale = model.config.upscale
            made = made[:, : image.height * scale, : image.width * scale]  # the padding off
            pixels = (made.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            out[i] = Image.fromarray(pixels)
    finally:
        _free(helpers, model)
    return out


# ---- 4. captions ---------------------------------------------------------------------------
def _captions(items, images, req: TrainRequest, helpers: HelperModels, check) -> list[str]:
    missing = [i for i, item in enumerate(items) if item.caption is None]
    captions = [item.caption or "" for item in items]
    if not missing:
        return captions
    helpers.require(BLIP_DIR, f"automatic captions ({len(missing)} images have none)")
    import torch

    processor, model = helpers.load(BLIP_DIR)
    try:
        for i in missing:
            check()
            inputs = processor(images=images[i], return_tensors="pt").to(helpers.device)
            with torch.no_grad():
                ids = model.generate(
                    **inputs, max_new_tokens=MAX_CAPTION_TOKENS, num_beams=1, do_sample=False
                )
            said = processor.decode(ids[0], skip_special_tokens=True).strip()
            prefix = req.caption_prefix.replace(req.token_string, items[i].concept)
            captions[i] = f"{prefix.strip()} {said}".strip()
    finally:
        _free(helpers, model)
    return captions


def _free(helpers: HelperModels, model) -> None:
    from sdxl.model.device import free_device_memory

    model.to("meta")  # its tensors go now, whoever still holds the module
    free_device_memory(helpers.device)
