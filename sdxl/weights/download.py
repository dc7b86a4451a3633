"""Fetch the real SDXL weights into our layout: verified, idempotent and resumable.

Each file is downloaded to DIR/.download/ (a partial `.incomplete` file there is resumed with an
HTTP Range request), checked against the hash the hub reports, then moved into place with
`os.replace`, so a partial file never sits at its final path. DIR/.download-record.json keeps
size, mtime and digest of each verified file, so a re-run only rehashes files that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdxl.config import BASE_DIR, DEFAULT_WEIGHTS_DIR, REFINER_DIR, UPSCALERS_DIR
from sdxl.weights.control_files import (
    CONTROL_BRANCH_PINNED,
    CONTROL_CHOICES,
    CONTROL_PINNED,
    DEFAULT_CONTROL,
)
from sdxl.weights.hub import DownloadError, HfHub, Hub, HubUnreachable, RemoteFile
from sdxl.weights.ip_adapter_files import (
    DEFAULT_IP_ADAPTER,
    IP_ADAPTER_BRANCH_PINNED,
    IP_ADAPTER_CHOICES,
    IP_ADAPTER_PINNED,
)

__all__ = ["DownloadError", "HfHub", "Hub", "HubUnreachable", "RemoteFile"]

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
SDXL_VAE_FP16_FIX = "madebyollin/sdxl-vae-fp16-fix"
SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"
BLIP = "Salesforce/blip-image-captioning-large"  # the trainer's automatic captions
CLIPSEG = "CIDAS/clipseg-rd64-refined"  # the trainer's masks for mask_target_prompts
ULTRASHARP = "Kim2091/UltraSharp"  # the hires fix's 4x-UltraSharp, from its author
REAL_ESRGAN = "Comfy-Org/Real-ESRGAN_repackaged"  # xinntao's RealESRGAN_x4plus as safetensors

# Each repository at a fixed commit, so that an upstream change never alters what a build
# loads (the files are verified against the Hub's hashes at that commit). The Hub cannot be
# reached where this was written; the commits are the ones public code and docs pin:
PINNED = {
    # main, "fix-readme (#109)": Baseten's model-cache docs (docs.baseten.co/development/
    # model/model-cache) pin it with "*.fp16.safetensors"; so do fetch scripts and many
    # huggingface_hub snapshot paths (models--stabilityai--...base-1.0/snapshots/4621659...).
    SDXL_BASE: "462165984030d82259a11f4367a4eed129e94a7b",
    # main, "Update README.md" (parent 93b080b, same weights): Baseten's model-cache docs.
    SDXL_REFINER: "5d4cfe854c9a9a87939ff3653551c2b3c99a4356",
    # Baseten's model-cache docs and SDXL fetch scripts pin it for the safetensors VAE.
    SDXL_VAE_FP16_FIX: "207b116dae70ace3637169f1ddd2434b91b3a8cd",
    # The checker's main (cb41f3a) has only pytorch_model.bin, a pickle: model.safetensors is
    # on refs/pr/41 ("fp16 safetensors", Jun 30 2023), which replicate/cog-stable-diffusion
    # (version.py: SAFETY_REVISION = "refs/pr/41") loads; this is that branch's commit.
    SAFETY_CHECKER: "1664e306d2258485321cbbd8083074c9474d4e41",
    # The snapshot public code loads BLIP large from (models--Salesforce--blip-image-captioning-
    # large/snapshots/353689b..., with tokenizer.json and the safetensors weights).
    BLIP: "353689b859fcf0523410b1806dace5fb46ecdf41",
    # The snapshot public code loads CLIPSeg's processor from (models--CIDAS--clipseg-rd64-
    # refined/snapshots/999e032...).
    CLIPSEG: "999e0328d9e10b484360c477313983f9afdd7050",
    # The commit a public install note links 4x-UltraSharp.safetensors at (huggingface.co/
    # Kim2091/UltraSharp/blob/920fe21.../4x-UltraSharp.safetensors, 66,864,028 bytes).
    ULTRASHARP: "920fe218c211f831b43cb30327f203e2b59f5dab",
    # No public code or doc names a commit of this repository: every reference fetches main
    # (.../resolve/main/RealESRGAN_x4plus.safetensors, 66,857,836 bytes, sha256 37f9a931c215
    # f040aa6d50f711f2cb115f713c46df1d0d6469a8bd7bfe9a60bb, as several public manifests record).
    # Pin the commit once the Hub can be reached: `huggingface-cli download` prints it.
    REAL_ESRGAN: "main",
    **CONTROL_PINNED,  # the ControlNets and the depth annotator: sdxl.weights.control_files
    **IP_ADAPTER_PINNED,  # h94's IP-Adapters and their encoder: sdxl.weights.ip_adapter_files
}
# Repositories pinned to a branch because no commit could be found (see the comments above);
# every other entry is fetched at a commit.
BRANCH_PINNED = frozenset({REAL_ESRGAN, *CONTROL_BRANCH_PINNED, *IP_ADAPTER_BRANCH_PINNED})
RECORD_NAME = ".download-record.json"
STAGING_NAME = ".download"
_CHUNK = 16 << 20


@dataclass(frozen=True)
class WeightFile:
    """One manifest entry: `remote` in `repo_id` at `revision` is saved as DIR/`local`."""

    repo_id: str
    remote: str
    local: str
    revision: str

    @property
    def source(self) -> str:
        return f"{self.repo_id}@{self.revision}:{self.remote}"


def _into(folder: str, repo_id: str, *remotes: str) -> tuple[WeightFile, ...]:
    """Entries kept at their remote path under `folder`, with `.fp16` dropped from the name,
    at the repository's pinned commit."""
    fp16 = ".fp16.safetensors"
    return tuple(
        WeightFile(repo_id, r, f"{folder}/{r.replace(fp16, '.safetensors')}", PINNED[repo_id])
        for r in remotes
    )


_TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")

# Everything the predictor loads but the control models and IP-Adapters, and nothing else.
CORE_MANIFEST: tuple[WeightFile, ...] = (
    *_into(
        BASE_DIR,
        SDXL_BASE,
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16.safetensors",
        *(f"tokenizer/{name}" for name in _TOKENIZER),
        *(f"tokenizer_2/{name}" for name in _TOKENIZER),
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ),
    *_into(
        f"{BASE_DIR}/vae", SDXL_VAE_FP16_FIX, "config.json", "diffusion_pytorch_model.safetensors"
    ),
    *_into(
        REFINER_DIR,
        SDXL_REFINER,
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ),
    # The Stable Diffusion safety checker; its model.safetensors (fp16, 608 MB) sits beside a
    # pickle pytorch_model.bin, which is never fetched.
    *_into(
        "safety_checker",
        SAFETY_CHECKER,
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ),
    # The trainer's helpers (about 2.5 GB): BLIP large's captions and CLIPSeg's masks, as the
    # reference trainer uses them. Its upscaler (Swin2SR) has no commit pinned here: put a
    # safetensors copy in train/swin2sr/ to use it; without it small images are resized.
    *_into(
        "train/blip",
        BLIP,
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ),
    *_into(
        "train/clipseg",
        CLIPSEG,
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
    ),
    # The SDXL offset-noise LoRA (kohya format, about 50 MB): the REST API's lora_name="offset".
    WeightFile(
        SDXL_BASE,
        "sd_xl_offset_example-lora_1.0.safetensors",
        "loras/offset.safetensors",
        PINNED[SDXL_BASE],
    ),
    # The hires fix's ESRGAN upscalers (RRDBNet, 4x, float32, about 67 MB each), as
    # upscalers/<name>.safetensors: the names of sdxl.config.MODEL_UPSCALERS.
    WeightFile(
        ULTRASHARP,
        "4x-UltraSharp.safetensors",
        f"{UPSCALERS_DIR}/4x-UltraSharp.safetensors",
        PINNED[ULTRASHARP],
    ),
    WeightFile(
        REAL_ESRGAN,
        "RealESRGAN_x4plus.safetensors",
        f"{UPSCALERS_DIR}/RealESRGAN_x4plus.safetensors",
        PINNED[REAL_ESRGAN],
    ),
)


def _pinned(rows: tuple[tuple[str, str, str], ...]) -> tuple[WeightFile, ...]:
    return tuple(WeightFile(repo, remote, local, PINNED[repo]) for repo, remote, local in rows)


# The control models of each `--control` choice (sdxl.weights.control_files), pinned.
CONTROL_MANIFESTS: dict[str, tuple[WeightFile, ...]] = {
    choice: _pinned(rows) for choice, rows in CONTROL_CHOICES.items()
}
# The IP-Adapters of each `--ip-adapter` choice (sdxl.weights.ip_adapter_files), pinned.
IP_ADAPTER_MANIFESTS: dict[str, tuple[WeightFile, ...]] = {
    choice: _pinned(rows) for choice, rows in IP_ADAPTER_CHOICES.items()
}
# What `weights download` fetches by default: everything, with the full-size control models.
MANIFEST = (
    CORE_MANIFEST + CONTROL_MANIFESTS[DEFAULT_CONTROL] + IP_ADAPTER_MANIFESTS[DEFAULT_IP_ADAPTER]
)


def manifest_for(
    control: str = DEFAULT_CONTROL, ip_adapter: str = DEFAULT_IP_ADAPTER
) -> tuple[WeightFile, ...]:
    """The files `weights download --control CONTROL --ip-adapter IP_ADAPTER` fetches; a clear
    error for a bad choice."""
    if control not in CONTROL_MANIFESTS:
        raise DownloadError(
            f"--control {control!r} is not a choice: use one of {', '.join(CONTROL_MANIFESTS)} "
            "(full: canny, depth and the union model; small: the small canny and depth; none)"
        )
    if ip_adapter not in IP_ADAPTER_MANIFESTS:
        raise DownloadError(
            f"--ip-adapter {ip_adapter!r} is not a choice: use one of "
            f"{', '.join(IP_ADAPTER_MANIFESTS)} (all: h94's three SDXL ViT-H adapters and their "
            "image encoder; none)"
        )
    return CORE_MANIFEST + CONTROL_MANIFESTS[control] + IP_ADAPTER_MANIFESTS[ip_adapter]


# Files the product loads when they are there, which `weights download` does not fetch: the
# trainer's upscaler (caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr ships pickles only, so no
# snapshot can be pinned and verified as safetensors; convert it yourself to use it).
USER_SUPPLIED = (
    "train/swin2sr/config.json",
    "train/swin2sr/model.safetensors",
    "train/swin2sr/preprocessor_config.json",
)


def file_digest(path: Path, kind: str) -> str:
    """Digest of a file's content as 'kind:hex'; kind 'sha1' is the git blob sha1."""
    size = path.stat().st_size
    if kind == "size":
        return f"size:{size}"
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{kind}:{h.hexdigest()}"


def _load_record(path: Path) -> dict[str, dict]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _save_record(path: Path, record: dict[str, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _stamp(path: Path, entry: WeightFile, digest: str | None) -> dict:
    st = path.stat()
    return dict(source=entry.source, size=st.st_size, mtime_ns=st.st_mtime_ns, digest=digest)


def _unchanged(path: Path, entry: WeightFile, stamp: dict) -> bool:
    """True when the record's stamp vouches for `path` as it is now: same size and mtime."""
    return path.is_file() and _stamp(path, entry, stamp.get("digest")) == stamp


def _remote_info(hub: Hub, manifest: Sequence[WeightFile]) -> dict[WeightFile, RemoteFile]:
    """Ask the hub about every entry, one call per repo and revision, before fetching anything."""
    groups: dict[tuple[str, str], list[WeightFile]] = {}
    for entry in manifest:
        groups.setdefault((entry.repo_id, entry.revision), []).append(entry)
    remote: dict[WeightFile, RemoteFile] = {}
    for (repo_id, revision), entries in groups.items():
        found = hub.info(repo_id, revision, [e.remote for e in entries])
        for entry in entries:
            if entry.remote not in found:
                raise DownloadError(
                    f"{entry.remote} was not found in {repo_id} at revision {revision!r} "
                    "(HTTP 404); nothing was downloaded. Check MANIFEST in sdxl/weights/download.py"
                )
            remote[entry] = found[entry.remote]
    return remote


def _present(path: Path, entry: WeightFile, remote: RemoteFile, record: dict[str, dict]) -> bool:
    """True if `path` already holds the hub's file; hashes it only if the record can't vouch."""
    if not path.is_file() or path.stat().st_size != remote.size:
        return False
    stamp = record.get(entry.local, {})
    if stamp.get("digest") == remote.digest and _unchanged(path, entry, stamp):
        return True
    if file_digest(path, remote.digest.split(":")[0]) != remote.digest:
        return False
    record[entry.local] = _stamp(path, entry, remote.digest)
    return True


def _fetch(root: Path, entry: WeightFile, remote: RemoteFile, hub: Hub) -> None:
    """Fetch one entry into staging, verify it, then move it into place."""
    staged = hub.fetch(
        entry.repo_id, entry.revision, entry.remote, root / STAGING_NAME / entry.repo_id
    )
    kind = remote.digest.split(":")[0]
    got = file_digest(staged, kind) if staged.stat().st_size == remote.size else "a size mismatch"
    if got != remote.digest:
        staged.unlink(missing_ok=True)  # a corrupt partial must not be resumed either
        raise DownloadError(
            f"{entry.local}: the file fetched from {entry.repo_id}/{entry.remote} does not match "
            f"the hub (expected {remote.digest}, got {got}); it was deleted, re-run to fetch again"
        )
    (root / entry.local).parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, root / entry.local)


def _unreachable(err: HubUnreachable, root: Path, fetched: int) -> DownloadError:
    done = "nothing was downloaded" if fetched == 0 else f"{fetched} file(s) were fetched first"
    return DownloadError(
        f"cannot reach the Hugging Face Hub at {err.endpoint} ({err.reason}); {done}. "
        f"Run this where the hub is reachable (re-runs resume), or copy the weights into {root} "
        f"in the layout of sdxl/weights/download.py ({BASE_DIR}/, {REFINER_DIR}/), or run "
        f"`python -m sdxl weights tiny {root}` for a tiny test model"
    )


def download_weights(
    root: Path,
    hub: Hub | None = None,
    manifest: Sequence[WeightFile] = MANIFEST,
    log: Callable[[str], object] = print,
) -> list[Path]:
    """Make `root` hold every manifest file, verified; return their paths in manifest order.

    With the hub unreachable, succeeds only if the record vouches for every file as it is.
    """
    root = Path(root)
    hub = HfHub() if hub is None else hub
    record_path = root / RECORD_NAME
    record = _load_record(record_path)
    fetched = 0
    try:
        remote = _remote_info(hub, manifest)
        root.mkdir(parents=True, exist_ok=True)
        for entry in manifest:
            path = root / entry.local
            if _present(path, entry, remote[entry], record):
                log(f"already present {entry.local}")
            else:
                if path.exists():
                    log(f"{entry.local} does not match {entry.source}; fetching it again")
                _fetch(root, entry, remote[entry], hub)
                record[entry.local] = _stamp(path, entry, remote[entry].digest)
                fetched += 1
                log(f"fetched {entry.local} ({remote[entry].size:,} bytes) from {entry.repo_id}")
            _save_record(record_path, record)
    except HubUnreachable as err:
        vouched = [_unchanged(root / e.local, e, record.get(e.local, {})) for e in manifest]
        if fetched > 0 or not all(vouched):
            raise _unreachable(err, root, fetched) from err
        log(f"hub unreachable ({err.reason}); all {len(manifest)} files were verified before")
    shutil.rmtree(root / STAGING_NAME, ignore_errors=True)
    return [root / entry.local for entry in manifest]


def main(
    argv_root: str | None = None,
    control: str = DEFAULT_CONTROL,
    ip_adapter: str = DEFAULT_IP_ADAPTER,
) -> int:
    """`python -m sdxl weights download [DIR] [--control full|small|none] [--ip-adapter
    all|none]`: DIR defaults to $SDXL_WEIGHTS_DIR or 'weights'."""
    default = os.environ.get("SDXL_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR)
    root = Path(default if argv_root is None else argv_root)
    try:
        paths = download_weights(root, manifest=manifest_for(control, ip_adapter))
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: writing under {root} failed ({err}); re-run to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; re-run to resume the download into {root}", file=sys.stderr)
        return 130
    print(f"weights ready in {root} ({len(paths)} files)")
    return 0
