"""The engine's own figures on a GPU (bench/device.sh runs it): compile that never recompiles,
memory after an out-of-memory error, and how long the lock stands idle between jobs.

1. compile: the UNets and the VAE decoder compiled for --size (SDXL_COMPILE=1's path, warmed up
   on the GPU thread), then a job with each scheduler, a prompt past 77 tokens, a batch of two
   and another size: torch._dynamo's graph count after each (no new graph is the promise), how
   many UNet/VAE calls went eager, and the seconds per job;
2. out of memory: the process is capped (torch.cuda.set_per_process_memory_fraction) a little
   above what the models hold, a job far larger than that runs out of memory, and the memory
   allocated before it, after it, and what the next job at --size needs are recorded;
3. the lock: --jobs jobs at --size submitted at once (watermark and safety checker on): for each,
   how long the lock stood idle while it was ready, and how long its images took to finish on
   the CPU after the lock was released (the time the GPU would have idled before).

    python bench/engine_gpu.py --weights DIR [--size 1024] [--steps 30] [--mode max-autotune]

Writes --out (default bench/results/engine-gpu.json). On a CPU it runs too (a dry run: use the
tiny weights, --size 256 and --backend eager).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import write

from sdxl.config import SCHEDULERS

LONG_PROMPT = ", ".join(["a detailed studio portrait photo of a cat wearing a tiny hat"] * 10)


def engine_for(weights: Path, size: int, compile_mode: str | None, backend: str | None):
    from sdxl.engine import Engine, EngineSettings
    from sdxl.model.compiled import Compiled
    from sdxl.model.loading import load_models
    from sdxl.settings.tree import RuntimeGroup

    runtime = RuntimeGroup.read({"SDXL_WEIGHTS_DIR": str(weights)}).build()
    models = load_models(runtime)
    if backend is not None:  # the path SDXL_COMPILE=1 takes, with this mode and backend
        models.compiled = Compiled(models, ((size, size),), mode=compile_mode, backend=backend)
        models.warmup_shapes = ((size, size),)
    engine = Engine(runtime, EngineSettings(), models=models)
    started = time.perf_counter()
    engine.load()  # the warm-up (and the compile) on the GPU thread
    return engine, time.perf_counter() - started


def request(size: int, steps: int, **kw):
    from sdxl.inputs.request import Request

    base = dict(prompt="A studio portrait photo of a cat", width=size, height=size, seed=1)
    return Request(**{**base, "num_inference_steps": steps, **kw})


def graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def compile_rows(engine, size: int, steps: int) -> list[dict]:
    cases = [(name, {"scheduler": name}) for name in SCHEDULERS]
    cases += [
        ("long prompt", {"prompt": LONG_PROMPT}),
        ("batch of 2", {"num_outputs": 2}),
        ("another size", {"width": size - 128}),
        ("ensemble refiner", {"refine": "expert_ensemble_refiner"}),
    ]
    compiled, rows = engine.models.compiled, []
    for name, changes in cases:
        before, eager = graphs(), compiled.eager_calls
        started = time.perf_counter()
        few = name in ("LCM", "TCD")  # few-step schedulers take at most 50 steps; 8 here
        engine.run(request(size, min(steps, 8) if few else steps, **changes))
        rows.append(
            {
                "case": name,
                "new_graphs": graphs() - before,
                "eager_calls": compiled.eager_calls - eager,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        print(rows[-1], flush=True)
    return rows


def out_of_memory(engine, size: int, steps: int) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    device = engine.models.device
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated(device)
    total = torch.cuda.get_device_properties(device).total_memory
    cap = held + (8 << 30)  # room for a 1024x1024 job, not for a batch of four at 2048x2048
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        job = engine.submit(request(2048, 4, num_outputs=4, refine="expert_ensemble_refiner"))
        job.wait()
        torch.cuda.synchronize()
        after = torch.cuda.memory_allocated(device)
        reserved = torch.cuda.memory_reserved(device)
        follow = engine.submit(request(size, steps))
        follow.wait()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {
        "cap_bytes": cap,
        "allocated_before": held,
        "oom_job_status": job.status,
        "oom_job_kind": job.outcome.kind,
        "allocated_after_oom": after,
        "left_behind_bytes": after - held,  # what the failed job still holds: 0 is the promise
        "reserved_after_oom": reserved,
        "next_job_status": follow.status,
        "next_job_peak_bytes": follow.peak_device_bytes,
    }


def lock_idle(engine, size: int, steps: int, jobs: int) -> dict:
    finished: dict[str, float] = {}
    submitted = []
    for seed in range(jobs):
        job = engine.submit(request(size, steps, seed=seed, apply_watermark=True))
        job.future.add_done_callback(lambda _, j=job: finished.setdefault(j.id, time.monotonic()))
        submitted.append(job)
    for job in submitted:
        job.wait()
    rows = [
        {
            "job": job.id,
            "lock_idle_s": job.lock_idle_s,
            "gpu_s": job.gpu_ended_at - job.gpu_started_at,
            "finish_after_lock_s": finished[job.id] - job.gpu_ended_at,
            "peak_bytes": job.peak_device_bytes,
        }
        for job in submitted
    ]
    idle = [r["lock_idle_s"] for r in rows[1:] if r["lock_idle_s"] is not None]
    return {
        "jobs": rows,
        "median_lock_idle_s": statistics.median(idle) if idle else None,
        "median_finish_after_lock_s": statistics.median(r["finish_after_lock_s"] for r in rows),
        "median_gpu_s": statistics.median(r["gpu_s"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--mode", default=None, help="torch.compile mode (max-autotune on CUDA)")
    parser.add_argument("--backend", default="inductor", help="inductor, or eager for a dry run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    engine, setup = engine_for(args.weights, args.size, args.mode, args.backend)
    try:
        record = {
            "size": args.size,
            "steps": args.steps,
            "backend": args.backend,
            "mode": args.mode or ("max-autotune" if torch.cuda.is_available() else "default"),
            "setup_with_compile_s": round(setup, 1),
            "graphs_after_warm_up": graphs(),
            "compile": compile_rows(engine, args.size, args.steps),
            "out_of_memory": out_of_memory(engine, args.size, args.steps),
            "lock": lock_idle(engine, args.size, args.steps, args.jobs),
        }
    finally:
        engine.close()
    record["new_graphs_after_warm_up"] = sum(row["new_graphs"] for row in record["compile"])
    write(args.out or "engine-gpu", record)


if __name__ == "__main__":
    main()
