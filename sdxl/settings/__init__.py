"""Settings read from the environment once, at start, with one parser for every kind of value.

The parsers of each kind (numbers, sizes, choices, flags) and the settings objects the layers
below the engine are handed (`Runtime`, `Caps`, `FetchSettings`). The variables themselves are
declared once, in the settings tree (`sdxl.settings.tree`), which reads them with these parsers;
a value that cannot be used is a `SettingsError` naming the variable and what to write instead,
so that a server refuses to start rather than misbehave.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sdxl.config import (
    MAX_IMAGES,
    MAX_PIXELS,
    MAX_PROMPT_CHARS,
    MAX_SIDE,
    MIN_SIDE,
    SIZE_MULTIPLE,
)
from sdxl.numbers import ASCII_BLANKS, number_from_text

Env = Mapping[str, str]


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and the fix."""


def parse_size(text: str) -> int:
    """'20G', '512M', '64K', '1.5G' or plain bytes -> bytes (positive)."""
    text = text.strip(ASCII_BLANKS).upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = number_from_text(text[:-1] if scale > 1 else text)
    if number is None or int(number * scale) <= 0:
        raise ValueError(f"{text!r} is not a positive size such as 10G")
    return int(number * scale)


def _parser(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """int and float read with the one number grammar (sdxl.numbers), never Python's own."""
    if parse is int or parse is float:
        integer = parse is int

        def strict(text: str):
            value = number_from_text(text, integer)
            if value is None:
                raise ValueError(text)
            return value

        return strict
    return parse


def env_number(
    env: Env,
    name: str,
    parse: Callable[[str], Any],
    minimum,
    default,
    maximum=None,
    hint: str = "",
):
    """The number in `env[name]` (`default` when unset or blank): finite, from `minimum` to
    `maximum`. `parse` is int, float or parse_size. SettingsError names the variable and the fix."""
    raw = env.get(name, "").strip(ASCII_BLANKS)
    if not raw:
        return default
    try:
        value = _parser(parse)(raw)
    except (ValueError, OverflowError):
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        kind = {int: "a whole number", parse_size: "a size"}.get(parse, "a number")
        shown = "unset" if default is None else default
        bounds = f"of at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        hint = "; sizes may end in K, M or G" if parse is parse_size else hint and f"; {hint}"
        raise SettingsError(
            f"{name}={raw!r} is not valid; use {kind} {bounds} (default {shown}{hint})"
        )
    return value


def env_choice(env: Env, name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip() or default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} is not valid; use one of {', '.join(choices)}")
    return raw


def env_flag(env: Env, name: str) -> bool:
    """A yes/no setting: 1, true or yes is on; unset, 0, false or no is off."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name}={raw!r} is not valid; use 1 (on) or 0 (off)")


@dataclass(frozen=True)
class LocalFiles:
    """Which files on this machine `replicate_weights` may name (a path or a file:// URL).

    Only files inside the operator's folders (SDXL_LOCAL_WEIGHTS_DIRS, separated by
    os.pathsep; none by default), so that a request cannot make the server read one of its own
    files. `python -m sdxl predict` adds the folder of the file its user names to its own
    server's; the Cog predictor adds the private folder it writes `cog predict`'s data URIs to.
    """

    dirs: tuple[Path, ...] = ()

    def allows(self, path: str | Path) -> bool:
        """Whether `path` may be read: inside one of `dirs` once symbolic links and `..` are
        resolved."""
        real = Path(os.path.realpath(path))
        roots = [Path(os.path.realpath(d)) for d in self.dirs]
        return any(real == root or root in real.parents for root in roots)


@dataclass(frozen=True)
class Caps:
    """Limits an operator sets below the schema's bounds, for every API of the process. Which
    input each one limits is said once, in the input table (`sdxl.config.InputSpec.cap`)."""

    max_steps: int = 500  # SDXL_MAX_STEPS: num_inference_steps, and refine_steps when it runs
    max_pixels: int = MAX_PIXELS  # SDXL_MAX_PIXELS: width x height (images are scaled to it)
    max_outputs: int = MAX_IMAGES  # SDXL_MAX_OUTPUTS: images per request (OpenAI's n up to 10)
    max_prompt_chars: int = MAX_PROMPT_CHARS  # SDXL_MAX_PROMPT_CHARS: each prompt field
    local_files: LocalFiles = LocalFiles()  # SDXL_LOCAL_WEIGHTS_DIRS: files replicate_weights names

    VARIABLES: ClassVar[dict[str, str]] = {
        "max_steps": "SDXL_MAX_STEPS",
        "max_pixels": "SDXL_MAX_PIXELS",
        "max_outputs": "SDXL_MAX_OUTPUTS",
        "max_prompt_chars": "SDXL_MAX_PROMPT_CHARS",
    }


DEVICES = ("auto", "cuda", "cpu")
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")
SWITCHES = ("auto", "1", "0")  # auto: on where it helps (the CUDA fast path), 1: on, 0: off


@dataclass(frozen=True)
class Runtime:
    """How the models are loaded and run, read from the environment once at setup()."""

    weights_dir: Path  # SDXL_WEIGHTS_DIR
    dtype: str  # SDXL_DTYPE, one of DTYPES; auto: float16 on CUDA, bfloat16 on a CPU that has
    # it natively (AVX512-BF16 or AMX), float32 on other CPUs
    device: str = "auto"  # SDXL_DEVICE: auto (CUDA where there is a GPU), cuda or cpu
    channels_last: str = "auto"  # SDXL_CHANNELS_LAST: UNets and VAE in channels-last layout
    fuse_qkv: str = "auto"  # SDXL_FUSE_QKV: one projection for Q, K, V (unfused under a LoRA)
    warmup: str = "auto"  # SDXL_WARMUP: one small generation in setup (kernels, cuDNN plans)
    tf32: str = "auto"  # SDXL_TF32: TF32 matrix products for what still runs in float32
    compile: bool = False  # SDXL_COMPILE=1: torch.compile the UNets and the VAE decoder
    compile_shapes: tuple[tuple[int, int], ...] = ((1024, 1024),)  # SDXL_COMPILE_SHAPES
    # SDXL_COMPILE_BACKEND: inductor; eager or aot_eager trace the same graphs without code
    # generation (to check that nothing recompiles, in seconds)
    compile_backend: str = "inductor"
    vae_tile_above: int = 2560 * 1024  # SDXL_VAE_TILE_ABOVE: pixels beyond which decode tiles
    compile_cache: Path | None = None  # SDXL_COMPILE_CACHE (None: weights_dir/inductor-cache)

    def switch(self, name: str, cuda: bool) -> bool:
        value = getattr(self, name)
        return cuda if value == "auto" else value == "1"


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """ "1024x1024,1152x896" -> ((1024, 1024), (1152, 896)), each a valid size."""
    shapes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        width, x, height = part.lower().partition("x")
        if not (
            x and width.isascii() and width.isdigit() and height.isascii() and height.isdigit()
        ):
            raise SettingsError(f"SDXL_COMPILE_SHAPES has {part!r}; write sizes as 1024x1024")
        w, h = int(width), int(height)
        if (
            w % SIZE_MULTIPLE
            or h % SIZE_MULTIPLE
            or not MIN_SIDE <= min(w, h) <= max(w, h) <= MAX_SIDE
        ):
            raise SettingsError(
                f"SDXL_COMPILE_SHAPES has {part!r}; sides are multiples of {SIZE_MULTIPLE} "
                f"from {MIN_SIDE} to {MAX_SIDE}"
            )
        shapes.append((w, h))
    return tuple(shapes)


@dataclass(frozen=True)
class FetchSettings:
    """What the server may fetch for a request (trained weights, image URLs, webhooks), and
    where downloads are cached."""

    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "sdxl-cog")
    # SDXL_CACHE_DIR: where downloads are cached
    max_total_bytes: int = 20 << 30  # SDXL_CACHE_MAX_SIZE: the download cache, all files
    max_file_bytes: int = 12 << 30  # SDXL_FETCH_MAX_SIZE: one download
    connect_timeout: float = 15.0  # SDXL_FETCH_CONNECT_TIMEOUT, seconds
    read_timeout: float = 60.0  # SDXL_FETCH_READ_TIMEOUT: seconds without a byte
    deadline: float = 1800.0  # SDXL_FETCH_DEADLINE: seconds for one whole download
    max_redirects: int = 5
    local_dirs: tuple[Path, ...] = ()  # SDXL_LOCAL_WEIGHTS_DIRS: folders local paths may name
    public_only: bool = True  # refuse private, loopback, link-local... (SDXL_ALLOW_PRIVATE_URLS)

    @property
    def local_files(self) -> LocalFiles:
        return LocalFiles(dirs=self.local_dirs)
