#!/usr/bin/env bash
# The GPU check in one command, for a CUDA machine with its own torch, none of this project's
# other packages and no network (the device tool's H200); about 6 minutes there:
#   1. installs the wheels carried in .whl/ (bench/device_wheels.sh fetches them, with network);
#   2. builds the full-size random-weight SDXL (python -m sdxl weights random-full);
#   3. runs the GPU test tier and the pixel tests on the GPU (SDXL_TEST_DEVICE=cuda: the
#      product and diffusers' own pipelines, both in float32 on the GPU);
#   4. runs bench/gpu.py's eager (plain float16) and fast-path rows at 30 steps (the fast
#      path's with the fast modes', the hires fix's, ControlNet's and IP-Adapter's rows; the
#      random ControlNets and IP-Adapters are written into the weights folder first where it
#      has none);
#   5. runs bench/engine_gpu.py at 1024x1024: graphs per scheduler after the compile's warm-up
#      (mode reduce-overhead: CUDA graph trees, as max-autotune has, in less compile time),
#      memory after an out-of-memory error, the lock's idle time per job;
#   6. trains end to end with the reference trainer's defaults (1000 steps, batch 4, 768x768,
#      LoRA rank 32) on ten 1024x1024 photos: `python -m sdxl train`, timed (the reference
#      takes 10-15 minutes on an A40 or L40S; the goal here is under 4);
#   7. writes $OUT/device.json: the commit, the GPU, the tests' counts and largest pixel
#      differences, and the benchmarks' rows.
# Without CUDA, steps 3 to 6 are skipped and the rest runs (a dry run on a CPU machine).
#
#   OUT=/tmp/out bench/device.sh      (the device tool sets OUT; default bench/results/device)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
weights=${WEIGHTS:-/tmp/sdxl-random-full}
step() { echo "== $(date +%T) $*"; }

step "1. packages"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/sdxl-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/sdxl-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$py" -c "import diffusers, transformers, peft, pywt, cv2, pytest" || exit 1
cuda=$("$py" -c "import torch; print(int(torch.cuda.is_available()))")

step "2. full-size random weights in $weights"
if [ ! -f "$weights/refiner/model_index.json" ]; then
  "$py" -m sdxl weights random-full "$weights" || exit 1
fi

tests_status=skipped
bench_status=skipped
engine_status=skipped
train_status=skipped
if [ "$cuda" = 1 ]; then
  step "3. the GPU tier and the pixel tests on the GPU"
  rm -f "$OUT/pixels.txt" "$OUT/gpu-tests.json"
  SDXL_TEST_DEVICE=cuda SDXL_PIXEL_REPORT="$OUT/pixels.txt" SDXL_GPU_REPORT="$OUT/gpu-tests.json" \
    "$py" -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" \
    tests/test_gpu.py tests/test_matches_diffusers.py tests/test_presets.py \
    tests/test_engine.py tests/test_engine_threads.py tests/test_compile.py \
    tests/test_lora_generate.py tests/test_train.py 2>&1 | tee "$OUT/tests.log"
  tests_status=$([ "${PIPESTATUS[0]}" = 0 ] && echo passed || echo failed)

  step "4. bench/gpu.py: eager and fast path, 30 steps"
  "$py" bench/gpu.py --weights "$weights" --configs plain,fast --steps 30 --repeats 3 \
    --out "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log"
  bench_status=$([ "${PIPESTATUS[0]}" = 0 ] && echo done || echo failed)

  step "5. bench/engine_gpu.py: compile per scheduler, memory after an OOM, the lock's idle time"
  "$py" bench/engine_gpu.py --weights "$weights" --size 1024 --steps 30 --mode reduce-overhead \
    --out "$OUT/engine-gpu.json" 2>&1 | tee "$OUT/engine.log"
  engine_status=$([ "${PIPESTATUS[0]}" = 0 ] && echo done || echo failed)

  step "6. a training with the reference's defaults, end to end"
  PYTHONPATH=tests${PYTHONPATH:+:$PYTHONPATH} "$py" -c "
from pathlib import Path
from support.archives import image_bytes, write_zip
photos = {f'photo-{i}.png': image_bytes(i, 1024) for i in range(10)}
write_zip(Path('/tmp/sdxl-photos.zip'), photos)" || exit 1
  started=$SECONDS
  SDXL_WEIGHTS_DIR="$weights" "$py" -m sdxl train -i input_images=@/tmp/sdxl-photos.zip \
    -i seed=1 -o /tmp/sdxl-train 2>&1 | tee "$OUT/train.log" | tail -c 2000
  train_status=$([ "${PIPESTATUS[0]}" = 0 ] && echo done || echo failed)
  train_seconds=$((SECONDS - started))
else
  step "3-6. no CUDA here: the GPU tier, the pixel tests on the GPU and the benchmarks skipped"
fi

step "7. $OUT/device.json"
TESTS=$tests_status BENCH=$bench_status ENGINE=$engine_status TRAIN=$train_status \
TRAIN_SECONDS=${train_seconds:-} "$py" - "$OUT" <<'PY'
import json, os, re, subprocess, sys, time
from pathlib import Path

out = Path(sys.argv[1])
import torch

def read(name):
    path = out / name
    return path.read_text() if path.exists() else ""

found = re.findall(r"(\d+) (passed|failed|skipped|errors?)", read("tests.log"))
counts = {word: int(number) for number, word in found}
pixels = [int(n) for n in read("pixels.txt").split()]
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
record = {
    "when": time.strftime("%Y-%m-%d %H:%M"),
    "commit": commit.strip() or None,
    "cuda": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__,
    "tests": {"status": os.environ["TESTS"], **counts},
    "pixel_tests_largest_difference": max(pixels) if pixels else None,
    "pixel_comparisons": len(pixels),
    "gpu_tier": json.loads(read("gpu-tests.json") or "null"),
    "bench": {"status": os.environ["BENCH"], **json.loads(read("gpu.json") or "{}")},
    "engine": {"status": os.environ["ENGINE"], **json.loads(read("engine-gpu.json") or "{}")},
    "train_reference_defaults": {
        "status": os.environ["TRAIN"],
        "seconds": int(os.environ["TRAIN_SECONDS"]) if os.environ["TRAIN_SECONDS"] else None,
        "steps": 1000, "batch": 4, "resolution": 768, "lora_rank": 32, "images": 10,
    },
}
(out / "device.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
PY
