"""Serving: one synchronous request through each API of a real server, end to end (POST to
last byte), against bare diffusers doing the same work in this process.

The server is `python -m sdxl api` on loopback, over the tiny weights (built now with
`python -m sdxl weights tiny`), in float32 on the CPU with the tests' switches (no fused QKV,
channels-last, TF32 or warm-up: what diffusers' own pipelines compute), and the same number of
intra-op threads as the bare side. Each API gets the same work: the prompt, size, steps,
scheduler (Euler), guidance and seed, no refiner, the safety checker and the watermark off
(DataCrunch's body has no watermark switch: its figure includes the watermark, timed apart
as `watermark_s`), one PNG back in base64. The bare side: diffusers' StableDiffusionXLPipeline
loaded from the same folder, PIL's PNG at the product's compression level, base64. Rounds are
interleaved (the order turns each round), medians compared; the first image of each API is
checked against the bare one (`same_pixels`: the same work, not just the same time).

    python bench/serving.py                    # 512x512, 8 steps, 5 rounds
    python bench/serving.py --steps 2,8,32     # how the excess grows with the steps
    git worktree add /tmp/before <commit>      # then, in the same rounds, the code before:
    python bench/serving.py --baseline /tmp/before

Target: each API / bare <= 1.05 at 8 steps. Writes bench/results/serving-tiny.json (with
`--label before`, serving-tiny-before.json).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch
from common import median, write
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key"
GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
PROMPT = "A studio portrait photo of a cat"
SEED = 7
GUIDANCE = 7.5
SERVER_ENV = {  # tests/support/helpers.py's: diffusers' own arithmetic
    "SDXL_DTYPE": "float32",
    "SDXL_DEVICE": "cpu",
    "SDXL_CHANNELS_LAST": "0",
    "SDXL_FUSE_QKV": "0",
    "SDXL_TF32": "0",
    "SDXL_WARMUP": "0",
    "HF_HUB_OFFLINE": "1",
}
START_TIMEOUT_S = 300


# ---- the bare side --------------------------------------------------------------------------
class Bare:
    """diffusers' pipeline over the same weights, called as its own documentation calls it."""

    def __init__(self, weights: Path):
        import diffusers

        self.pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            weights / "base", torch_dtype=torch.float32, add_watermarker=False
        ).to("cpu")
        self.pipe.set_progress_bar_config(disable=True)
        config = self.pipe.scheduler.config
        self.pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(config)
        self.spacing = config.get("timestep_spacing", "leading")

    def __call__(self, size: int, steps: int) -> str:
        from sdxl.images.outputs import PNG_COMPRESS_LEVEL

        image = self.pipe(
            prompt=PROMPT,
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
        return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- the APIs -------------------------------------------------------------------------------
def _picture(size: int) -> dict:
    """What every API's body says alike: the prompt, the size, the seed."""
    return {"prompt": PROMPT, "negative_prompt": "", "width": size, "height": size, "seed": SEED}


def _euler(steps: int) -> dict:
    """The Replicate and DataCrunch names of the same steps, guidance and scheduler."""
    return {"num_inference_steps": steps, "guidance_scale": GUIDANCE, "scheduler": "K_EULER"}


def replicate(base: str, size: int, steps: int, spacing: str) -> str:
    inputs = {**_picture(size), **_euler(steps), "refine": "no_refiner", "output_format": "png"}
    inputs.update(apply_watermark=False, disable_safety_checker=True)
    body = {"version": GUIDE_VERSION, "input": inputs}
    answer = _post(base + "/v1/predictions", body, {"Prefer": "wait=60"})
    assert answer["status"] == "succeeded", answer
    return answer["output"][0].partition(",")[2]  # a data URI without SDXL_PUBLIC_URL


def a1111(base: str, size: int, steps: int, spacing: str) -> str:
    body = {**_picture(size), "steps": steps, "cfg_scale": GUIDANCE, "sampler_name": "Euler"}
    body.update(apply_watermark=False, disable_safety_checker=True)
    return _post(base + "/sdapi/v1/txt2img", body)["images"][0]


def datacrunch(base: str, size: int, steps: int, spacing: str) -> str:
    body = {**_picture(size), **_euler(steps), "timestep_spacing": spacing}
    body.update(safety_filter=False, output_format="png")
    return _post(base + "/v1/images/stable-diffusion-xl/generate", body)["images"][0]


APIS = {"replicate": replicate, "a1111": a1111, "datacrunch": datacrunch}


def _post(url: str, body: dict, headers: dict | None = None) -> dict:
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    response = requests.post(url, json=body, headers=headers, timeout=600)
    assert response.status_code in (200, 201), (url, response.status_code, response.text[:500])
    return response.json()  # the whole body read: the last byte is in


# ---- the server ------------------------------------------------------------------------------
def tiny_weights(folder: Path) -> Path:
    root = folder / "weights"
    command = [sys.executable, "-m", "sdxl", "weights", "tiny", str(root)]
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return root


def start_server(weights: Path, folder: Path, threads: int, tree: Path = REPO):
    """`python -m sdxl api` run from `tree` (a checkout), ready; (process, base URL)."""
    from sdxl.net.ports import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDXL_")}
    env.update(SERVER_ENV, SDXL_WEIGHTS_DIR=str(weights), SDXL_API_KEYS=KEY)
    env.update(SDXL_STATE_DIR=str(folder / f"state-{port}"), OMP_NUM_THREADS=str(threads))
    log_path = folder / f"server-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (open while the server runs)
    command = [sys.executable, "-m", "sdxl", "api", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server in {tree} exited:\n{log_path.read_text()}")
        try:
            if requests.get(base + "/health", timeout=5).json()["status"] == "ready":
                return proc, base
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server in {tree} was not ready in {START_TIMEOUT_S} s")


def pixels(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return np.asarray(image.convert("RGB"))


def same_pixels(name: str, api: str, bare: str) -> bool:
    """Whether the API's image is the bare one (DataCrunch's: the bare one watermarked)."""
    expected = pixels(bare)
    if name == "datacrunch":
        from sdxl.generate.watermark import apply_watermark

        (marked,) = apply_watermark([Image.fromarray(expected)])
        expected = np.asarray(marked.convert("RGB"))
    return bool(np.array_equal(pixels(api), expected))


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(bare: Bare, servers: dict[str, str], size: int, steps: int, rounds: int) -> dict:
    """Interleaved rounds of bare and each API of each server, the order turned each round."""
    sides = {("", "bare"): lambda: bare(size, steps)}
    for server, base in servers.items():
        for name, f in APIS.items():
            sides[server, name] = lambda f=f, base=base: f(base, size, steps, bare.spacing)
    keys = list(sides)
    first = {key: fn() for key, fn in sides.items()}  # warm, and the pixels compared
    seconds: dict[tuple, list[float]] = {key: [] for key in keys}
    for turn in range(rounds):
        for key in keys[turn % len(keys) :] + keys[: turn % len(keys)]:
            seconds[key].append(timed(sides[key]))
    bare_s = median(seconds["", "bare"])
    record: dict = {"bare_s": bare_s, "bare_runs_s": seconds["", "bare"]}
    for server in servers:
        apis = record.setdefault(server or "apis", {})
        for name in APIS:
            api_s = median(seconds[server, name])
            apis[name] = {
                "seconds": api_s,
                "runs_s": seconds[server, name],
                "ratio": api_s / bare_s,
                "excess_s": api_s - bare_s,
                "excess_per_step_s": (api_s - bare_s) / steps,
                "same_pixels": same_pixels(name, first[server, name], first["", "bare"]),
            }
    return record


def watermark_seconds(size: int) -> float:
    from sdxl.generate.watermark import apply_watermark

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8))
    return median([timed(lambda: apply_watermark([image])) for _ in range(5)])


def report(steps: int, found: dict, server: str) -> None:
    apis = found[server]
    cells = " ".join(f"{apis[n]['seconds']:12.3f} {apis[n]['ratio']:6.3f}" for n in APIS)
    print(f"{steps:5d} {found['bare_s']:7.3f} {cells}  {server}")
    for name, api in apis.items():
        if not api["same_pixels"]:
            print(f"      {name}: its image differs from the bare one (not the same work)")
    excess = ", ".join(
        f"{n} {a['excess_s'] * 1000:+.0f} ms ({a['excess_per_step_s'] * 1000:+.1f} ms/step)"
        for n, a in apis.items()
    )
    print(f"      excess: {excess}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", default="8", help="comma-separated step counts (8)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="intra-op threads on each side (default: torch's, one a core, as a server runs; "
        "1 is steadier on a busy shared machine but hides what OpenMP's pools cost)",
    )
    parser.add_argument("--weights", type=Path, help="tiny weights already built (default: now)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of the code before a change (git worktree add): its server too, in "
        "the same rounds, under 'baseline' in the record",
    )
    parser.add_argument("--label", help="the record's name suffix: serving-tiny-<label>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="sdxl-serving-"))
    weights = args.weights or tiny_weights(folder)
    from sdxl import logs

    logs.quiet_libraries()
    bare = Bare(weights)
    trees = {"apis": REPO} | ({"baseline": args.baseline} if args.baseline else {})
    started = {
        server: start_server(weights, folder, args.threads, t) for server, t in trees.items()
    }
    record: dict = {"weights": "tiny", "size": args.size, "rounds": args.rounds}
    record |= {"threads": args.threads, "dtype": "float32", "scheduler": "K_EULER"}
    record |= {"guidance": GUIDANCE, "by_steps": {}}
    if args.baseline:
        head = ["git", "-C", str(args.baseline), "rev-parse", "HEAD"]
        record["baseline_commit"] = subprocess.run(head, capture_output=True, text=True).stdout
        record["baseline_commit"] = record["baseline_commit"].strip()
    try:
        print(
            f"{'steps':>5} {'bare s':>7} " + " ".join(f"{n + ' s':>12} {'ratio':>6}" for n in APIS)
        )
        for steps in [int(s) for s in args.steps.split(",")]:
            servers = {("" if s == "apis" else s): base for s, (_, base) in started.items()}
            found = measure(bare, servers, args.size, steps, args.rounds)
            record["by_steps"][str(steps)] = found
            for server in trees:
                report(steps, found, server)
        record["server_threads"] = {
            server: len(os.listdir(f"/proc/{proc.pid}/task"))
            for server, (proc, _) in started.items()
        }
    finally:
        for proc, _ in started.values():
            proc.kill()
            proc.wait(timeout=30)
    record["watermark_s"] = watermark_seconds(args.size)
    print(
        f"server threads {record['server_threads']}; intra-op threads {args.threads} each side; "
        f"watermark {record['watermark_s'] * 1000:.0f} ms at {args.size}x{args.size} "
        "(DataCrunch has no switch for it)"
    )
    write("serving-tiny" + (f"-{args.label}" if args.label else ""), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
