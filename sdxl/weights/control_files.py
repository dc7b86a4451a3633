"""The control models `weights download --control` fetches: ControlNets and the depth annotator.

Each choice names (repo, remote file, local path) rows; sdxl.weights.download pins them at the
commits below and verifies them like every other file. Safetensors and JSON only.
"""

from __future__ import annotations

from sdxl.config import ANNOTATORS_DIR, CONTROLNET_DIR, UNION_MODEL

CANNY = "diffusers/controlnet-canny-sdxl-1.0"
DEPTH = "diffusers/controlnet-depth-sdxl-1.0"
CANNY_SMALL = "diffusers/controlnet-canny-sdxl-1.0-small"
DEPTH_SMALL = "diffusers/controlnet-depth-sdxl-1.0-small"
UNION = "xinsir/controlnet-union-sdxl-1.0"  # apache-2.0
# Apache-2.0; never the Base or Large checkpoints, which are CC-BY-NC-4.0.
DEPTH_ANYTHING = "depth-anything/Depth-Anything-V2-Small-hf"

# The commits public code and docs pin (the Hub cannot be reached where this was written):
CONTROL_PINNED = {
    # Pinned with `hf download --revision eb115a1... --include "*.json" "*fp16.safetensors"` in
    # public setup docs, and as huggingface_hub snapshot paths in several projects.
    CANNY: "eb115a19a10d14909256db740ed109532ab1483c",
    # The same setup docs pin it so (`--include "*fp16.safetensors"`), and snapshot paths.
    DEPTH: "17bb97973f29801224cd66f192c5ffacf82648b4",
    # Pinned by public presets and snapshot paths; its fp16 safetensors is 320,237,179 bytes
    # (sha256 fde4888a5f0a5648118991cc50e0ac4d60a2356dbaddf5e0649dd69c1119a2f9, as a public
    # manifest records).
    CANNY_SMALL: "edd85f64c5f87dfb6d73762949d9daca16389518",
    # "add model" (Aug 15 2023): the Hub's tree at this commit lists config.json and
    # diffusion_pytorch_model.fp16.safetensors (320 MB); later commits add only the card's images.
    DEPTH_SMALL: "b890ef929eb80694d1218cee36ef5bcd7df32c7a",
    # The Hub's tree at this commit lists config_promax.json (1.26 kB) and
    # diffusion_pytorch_model_promax.safetensors (2,513,342,408 bytes, fp16); a public model
    # manifest pins it for diffusers' ControlNetUnionModel, the two stored under diffusers'
    # plain names, as here.
    UNION: "801a4a3fa3d4c936f4feea95b98607bc6726f80c",
    # Pinned in public fetch scripts (.../resolve/5426e4f.../model.safetensors, 99,173,660 bytes)
    # and snapshot paths.
    DEPTH_ANYTHING: "5426e4f0f36572d16453bbda7a8389317b1bef99",
}
CONTROL_BRANCH_PINNED: frozenset[str] = frozenset()  # every control repository has a commit

_FP16 = ("config.json", "diffusion_pytorch_model.fp16.safetensors")
_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _controlnet(name: str, repo: str) -> tuple[tuple[str, str, str], ...]:
    """A diffusers SDXL ControlNet's config and fp16 weights into controlnet/<name>/."""
    folder = f"{CONTROLNET_DIR}/{name}"
    return ((repo, _FP16[0], f"{folder}/config.json"), (repo, _FP16[1], f"{folder}/{_WEIGHTS}"))


# xinsir's union "promax" (8 control types) as diffusers' ControlNetUnionModel loads it: its
# promax config and weights under diffusers' plain names (the repo's config.json and
# diffusion_pytorch_model.safetensors are the earlier, 6-type union model).
_UNION_FOLDER = f"{CONTROLNET_DIR}/{UNION_MODEL}"
_UNION_ROWS = (
    (UNION, "config_promax.json", f"{_UNION_FOLDER}/config.json"),
    (UNION, "diffusion_pytorch_model_promax.safetensors", f"{_UNION_FOLDER}/{_WEIGHTS}"),
)
_DEPTH_ANNOTATOR = tuple(
    (DEPTH_ANYTHING, name, f"{ANNOTATORS_DIR}/depth/{name}")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json")
)

# Published sizes: canny and depth 2.5 GB each (fp16), the union 2.5 GB, the small ones 320 MB
# each, the depth annotator about 100 MB (99 MB of weights).
CONTROL_CHOICES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "full": (
        *_controlnet("canny", CANNY),
        *_controlnet("depth", DEPTH),
        *_UNION_ROWS,
        *_DEPTH_ANNOTATOR,
    ),  # about 7.6 GB
    "small": (
        *_controlnet("canny-small", CANNY_SMALL),
        *_controlnet("depth-small", DEPTH_SMALL),
        *_DEPTH_ANNOTATOR,
    ),  # about 0.74 GB
    "none": (),
}
DEFAULT_CONTROL = "full"
