"""The depth preprocessor: a depth map of an image, from the model in annotators/depth/.

The model is Depth Anything V2 Small (or any depth model transformers loads natively), read
with transformers' own image processor and post-processing, so the map equals what
`transformers.pipeline("depth-estimation")` returns as "depth", in 3 channels.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class DepthEstimator:
    """Depth maps from the model in `folder`, loaded on first use, in eval mode, on `device`
    in `dtype`."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype
        self._loaded: tuple | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._read()
            return self._loaded

    def _read(self) -> tuple:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no depth model in {self.folder} (config.json, model.safetensors, "
                "preprocessor_config.json): run `python -m sdxl weights download` "
                "(its --control full or small fetches it)"
            )
        processor = AutoImageProcessor.from_pretrained(self.folder)
        model = AutoModelForDepthEstimation.from_pretrained(
            self.folder, use_safetensors=True, dtype=self.dtype
        )
        return processor, model.to(self.device).eval().requires_grad_(False)

    @torch.inference_mode()
    def estimate(self, image: Image.Image) -> Image.Image:
        """The depth map of `image` at its size: 0-255 gray (near is bright), as RGB."""
        processor, model = self._load()
        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        inputs = inputs.to(self.device).to(self.dtype)
        outputs = model(**inputs)
        # As the depth-estimation pipeline does: the processor's post-processing to the
        # image's size, then min-max normalised to 0..255 and truncated to uint8.
        (result,) = processor.post_process_depth_estimation(outputs, [image.size[::-1]])
        depth = result["predicted_depth"].float().cpu().numpy()
        span = depth.max() - depth.min()
        depth = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
        return Image.fromarray((depth * 255).astype("uint8")).convert("RGB")
