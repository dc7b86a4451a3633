"""What every benchmark shares: the machine it ran on, medians, and the JSON record."""

from __future__ import annotations

import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def commit() -> str:
    """The commit the code measured is at ("+changes" when the tree differs from it)."""
    import subprocess

    def git(*args: str) -> str:
        root = RESULTS.parent.parent  # the repository: the paths below are relative to it
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=root)
        return done.stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "sdxl", "bench", ":!bench/results")
    return head + ("+changes" if changed else "")


def write(name: str | Path, record: dict) -> Path:
    """`record` with the machine, time and commit, as bench/results/<name>.json (or at `name`
    when it is a path)."""
    path = name if isinstance(name, Path) else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M")
    record = {"machine": machine(), "when": when, "commit": commit(), **record}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS)."""
    return _status("VmRSS")


def rss_peak_bytes() -> int:
    """This process's peak resident memory since start or the last reset (VmHWM)."""
    return _status("VmHWM")


def reset_rss_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def weights_or_tiny(weights: Path | None, folder: Path | None = None) -> Path:
    """`weights`, or the tiny model built now under `folder` (a temporary folder)."""
    if weights is not None:
        return weights
    from sdxl import logs
    from sdxl.builders.tiny import build_tiny_weights

    logs.quiet_libraries()
    return build_tiny_weights((folder or Path(tempfile.mkdtemp())) / "weights")


def loaded_engine(weights: Path):
    """The product's engine over `weights`, with the settings from the environment, loaded."""
    from sdxl.engine import Engine, EngineSettings
    from sdxl.settings.tree import RuntimeGroup

    engine = Engine(RuntimeGroup.read({"SDXL_WEIGHTS_DIR": str(weights)}).build(), EngineSettings())
    engine.load()
    return engine


def generation(size: int, steps: int, **extra):
    """The benchmarks' txt2img request: size x size, K_EULER, a fixed seed, no refiner, no
    watermark or safety checker (bench/controlnet.py, bench/ip_adapter.py)."""
    from sdxl.inputs.request import Request

    return Request(
        prompt="A studio portrait photo of a cat",
        width=size,
        height=size,
        scheduler="K_EULER",
        num_inference_steps=steps,
        seed=1,
        refine="no_refiner",
        apply_watermark=False,
        disable_safety_checker=True,
        **extra,
    )


def safetensors_entries(path: Path) -> list[dict]:
    """The tensors' entries (dtype, shape, data_offsets) of one safetensors file's header."""
    with Path(path).open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return [entry for key, entry in header.items() if key != "__metadata__"]
