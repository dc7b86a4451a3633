"""The device's memory, as the engine reads and frees it (CUDA; the CPU has nothing to do)."""

from __future__ import annotations

import gc

import torch


def free_device_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back, after whatever held tensors let go of them:
    Python's cycles first (a traceback's frames hold a failed job's activations), then the
    CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def start_peak(device: torch.device) -> None:
    """Count the device's peak memory from now (one job's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    """The most memory allocated on the device since `start_peak` (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device)
