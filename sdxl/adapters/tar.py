"""Open a Replicate SDXL trainer tar (`replicate_weights`) without trusting any of it.

The trainer (replicate/cog-sdxl) writes a flat tar of:
- `lora.safetensors`: UNet attention LoRA with the old attention-processor key names
  (`<block>...attn1.processor.to_q_lora.down.weight`), or
- `unet.safetensors`: a full fine-tune (the trained UNet parameters, norms left out),
- `embeddings.pti`: safetensors despite its name, `text_encoders_0` and `text_encoders_1`,
  one row per new token `<s0>`, `<s1>`, ... for each text encoder,
- `special_params.json`: e.g. {"TOK": "<s0><s1>"}, replaced in the prompt.

Members are never extracted with tarfile's own extract: each member is checked (no absolute
paths, no `..`, no links, devices or FIFOs, bounded count and sizes) and only the known files
are copied out, byte-counted, into a folder the caller owns. Only safetensors are loaded;
a pickle (torch.save) file is refused with a clear message and never opened as one.
"""

from __future__ import annotations

import json
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch

from sdxl.errors import InputError

LORA_FILE = "lora.safetensors"
UNET_FILE = "unet.safetensors"
EMBEDDINGS_FILE = "embeddings.pti"
PARAMS_FILE = "special_params.json"

# Per known member: the most bytes it may have.
MEMBER_LIMITS = {
    LORA_FILE: 2 << 30,
    UNET_FILE: 12 << 30,
    EMBEDDINGS_FILE: 64 << 20,
    PARAMS_FILE: 64 << 10,
}
MAX_MEMBERS = 64
MAX_TOTAL_BYTES = 16 << 30  # all members together, known or not (bounds decompression too)
MAX_TOKENS = 64
MAX_SPECIAL_PARAMS = 32
MAX_PARAM_KEY = 64
MAX_PARAM_VALUE = 512
EMBEDDING_KEYS = ("text_encoders_0", "text_encoders_1")
_MAX_HEADER = 100 << 20  # safetensors' own bound on its JSON header
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TrainedWeightsError(InputError):
    """Trained weights that cannot be used; the message names the input and the file."""


@dataclass
class TrainedWeights:
    """What a trainer tar holds, validated; `unet_file` lives in the caller's folder."""

    source: str
    lora: dict[str, torch.Tensor] | None = None
    unet_file: Path | None = None
    embeddings: tuple[torch.Tensor, ...] = ()  # per text encoder: [tokens, hidden]
    special_params: dict[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        rows = self.embeddings[0].shape[0] if self.embeddings else 0
        return [f"<s{i}>" for i in range(rows)]


# ---- safetensors, and nothing else -------------------------------------------------------
def sniff(path: Path) -> str:
    """'safetensors', 'pickle', 'tar' or 'unknown', from the first bytes only."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if _safetensors_header_ok(head, size):
        return "safetensors"
    if _looks_pickled(head):
        return "pickle"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError, EOFError):
        pass
    return "unknown"


def _safetensors_header_ok(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _MAX_HEADER and n + 8 <= size and head[8:9] == b"{"


def _looks_pickled(head: bytes) -> bool:
    # A raw pickle starts with PROTO (0x80); torch.save writes a zip (PK).
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def load_safetensors(path: Path, label: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file on the CPU; anything else is a TrainedWeightsError."""
    check_safetensors(path, label)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError and friends: malformed despite the header
        raise TrainedWeightsError(f"{label} is not a valid safetensors file ({err})") from None


def check_safetensors(path: Path, label: str) -> None:
    with open(path, "rb") as f:
        head = f.read(16)
    if _safetensors_header_ok(head, path.stat().st_size):
        return
    if _looks_pickled(head):
        raise TrainedWeightsError(
            f"{label} is a pickle (torch.save) file; pickles are never loaded, for safety. "
            "Convert it to safetensors (safetensors.torch.save_file) and try again"
        )
    raise TrainedWeightsError(f"{label} is not a safetensors file")


def safetensors_shapes(path: Path, label: str) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes from the header, without loading any tensor."""
    check_safetensors(path, label)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out = {}
            keys = f.keys()
            for key in keys:
                sl = f.get_slice(key)
                out[key] = (_dtype(sl.get_dtype()), tuple(sl.get_shape()))
            return out
    except Exception as err:
        raise TrainedWeightsError(f"{label} is not a valid safetensors file ({err})") from None


def _dtype(name: str) -> torch.dtype | None:
    return {
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "F64": torch.float64,
    }.get(name)


# ---- the tar -----------------------------------------------------------------------------
def read_trained_tar(path: Path, workdir: Path, input_name: str = "replicate_weights"):
    """Validate `path` as a trainer tar and load what it holds; files land in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    found = _extract_known(Path(path), workdir, input_name)
    if LORA_FILE in found and UNET_FILE in found:
        raise TrainedWeightsError(
            f"{input_name}: the tar has both {LORA_FILE} and {UNET_FILE}; a trainer tar has one"
        )
    weights = TrainedWeights(source=input_name)
    if LORA_FILE in found:
        weights.lora = load_safetensors(found[LORA_FILE], f"{input_name}: {LORA_FILE}")
        check_tensors(weights.lora, f"{input_name}: {LORA_FILE}")
        if not weights.lora:
            raise TrainedWeightsError(f"{input_name}: {LORA_FILE} holds no tensors")
    if UNET_FILE in found:
        safetensors_shapes(found[UNET_FILE], f"{input_name}: {UNET_FILE}")
        weights.unet_file = found[UNET_FILE]
    if EMBEDDINGS_FILE in found:
        weights.embeddings = _embeddings(found[EMBEDDINGS_FILE], f"{input_name}: {EMBEDDINGS_FILE}")
    if PARAMS_FILE in found:
        weights.special_params = _special_params(found[PARAMS_FILE], input_name)
    if weights.lora is None and weights.unet_file is None and not weights.embeddings:
        raise TrainedWeightsError(
            f"{input_name}: the tar holds none of {LORA_FILE}, {UNET_FILE}, {EMBEDDINGS_FILE}; "
            "is it a tar from the Replicate SDXL trainer?"
        )
    return weights


def _extract_known(path: Path, workdir: Path, input_name: str) -> dict[str, Path]:
    try:
        tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by the `with tar` below)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise TrainedWeightsError(f"{input_name} is not a readable tar file ({err})") from None
    found: dict[str, Path] = {}
    total = 0
    count = 0
    try:
        with tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                count += 1
                if count > MAX_MEMBERS:
                    raise TrainedWeightsError(
                        f"{input_name}: the tar has more than {MAX_MEMBERS} members; refused"
                    )
                name = _checked_name(member, input_name)
                total += max(member.size, 0)
                if total > MAX_TOTAL_BYTES:
                    raise TrainedWeightsError(
                        f"{input_name}: the tar's members add up to more than "
                        f"{MAX_TOTAL_BYTES} bytes; refused"
                    )
                if member.isdir() or name not in MEMBER_LIMITS:
                    continue
                if name in found:
                    raise TrainedWeightsError(f"{input_name}: the tar has {name} twice; refused")
                if member.size > MEMBER_LIMITS[name]:
                    raise TrainedWeightsError(
                        f"{input_name}: {name} is {member.size} bytes; the limit is "
                        f"{MEMBER_LIMITS[name]}"
                    )
                found[name] = _copy_member(tar, member, workdir / name, input_name, name)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise TrainedWeightsError(f"{input_name}: the tar is damaged ({err})") from None
    return found


def _checked_name(member: tarfile.TarInfo, input_name: str) -> str:
    raw = member.name
    shown = repr(raw[:200])

    def refuse(why: str) -> TrainedWeightsError:
        return TrainedWeightsError(f"{input_name}: tar member {shown} {why}; the tar is refused")

    if "\x00" in raw or "\\" in raw:
        raise refuse("has a NUL or backslash in its name")
    if raw.startswith("/"):
        raise refuse("has an absolute path")
    parts = PurePosixPath(raw).parts
    if ".." in parts:
        raise refuse("has '..' in its path")
    if member.issym() or member.islnk():
        raise refuse("is a link")
    if member.ischr() or member.isblk():
        raise refuse("is a device")
    if member.isfifo():
        raise refuse("is a FIFO")
    if not (member.isreg() or member.isdir()) or member.issparse():
        raise refuse("is not a regular file or folder")
    if member.size < 0:
        raise refuse("has a negative size")
    clean = [p for p in parts if p not in (".", "")]
    return "/".join(clean)


def _copy_member(tar, member, dest: Path, input_name: str, name: str) -> Path:
    src = tar.extractfile(member)
    if src is None:
        raise TrainedWeightsError(f"{input_name}: {name} could not be read from the tar")
    limit = MEMBER_LIMITS[name]
    written = 0
    with src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise TrainedWeightsError(f"{input_name}: {name} is larger than {limit} bytes")
            out.write(chunk)
    if written != member.size:
        raise TrainedWeightsError(f"{input_name}: {name} is truncated in the tar")
    return dest


def check_tensors(tensors: dict[str, torch.Tensor], label: str) -> None:
    for key, t in tensors.items():
        if t.dtype not in _FLOATS:
            raise TrainedWeightsError(f"{label}: tensor {key[:120]!r} is {t.dtype}, not float")
        if not torch.isfinite(t).all():
            raise TrainedWeightsError(f"{label}: tensor {key[:120]!r} has NaN or infinite values")


def _embeddings(path: Path, label: str) -> tuple[torch.Tensor, ...]:
    tensors = load_safetensors(path, label)
    if set(tensors) != set(EMBEDDING_KEYS):
        keys = ", ".join(sorted(k[:60] for k in tensors)[:8])
        raise TrainedWeightsError(
            f"{label} must hold exactly {', '.join(EMBEDDING_KEYS)}; it holds: {keys or 'nothing'}"
        )
    check_tensors(tensors, label)
    out = tuple(tensors[k] for k in EMBEDDING_KEYS)
    rows = {t.shape[0] if t.dim() == 2 else -1 for t in out}
    if len(rows) != 1 or not 1 <= next(iter(rows)) <= MAX_TOKENS:
        shapes = ", ".join(str(tuple(t.shape)) for t in out)
        raise TrainedWeightsError(
            f"{label}: both text encoders need the same number of token rows (1..{MAX_TOKENS}), "
            f"got shapes {shapes}"
        )
    return out


def _special_params(path: Path, input_name: str) -> dict[str, str]:
    label = f"{input_name}: {PARAMS_FILE}"
    try:
        params = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise TrainedWeightsError(f"{label} is not valid JSON ({err})") from None
    if not isinstance(params, dict) or len(params) > MAX_SPECIAL_PARAMS:
        raise TrainedWeightsError(
            f"{label} must be a JSON object of at most {MAX_SPECIAL_PARAMS} string pairs"
        )
    for key, value in params.items():
        if not (isinstance(value, str) and 0 < len(key) <= MAX_PARAM_KEY):
            raise TrainedWeightsError(
                f"{label}: {key[:80]!r} must be a non-empty string of at most {MAX_PARAM_KEY} "
                "characters with a string value"
            )
        if len(value) > MAX_PARAM_VALUE:
            raise TrainedWeightsError(
                f"{label}: the value of {key!r} is longer than {MAX_PARAM_VALUE} characters"
            )
    return params
