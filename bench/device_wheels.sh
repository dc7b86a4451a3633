#!/usr/bin/env bash
# The wheels bench/device.sh installs on the GPU machine, fetched here (it has no network):
# what its image lacks of requirements.txt, at the versions pinned there, for its Python (3.12;
# PYTHON_VERSION=3.11 for a dry run on this machine's Python). Into .whl/ (git ignores it),
# which the device tool carries (64 MiB in all; this is about 27 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${PYTHON_VERSION:-3.12}
pin() { grep -h -E "^$1==" requirements.txt requirements-nodeps.txt; }
# diffusers, transformers and peft as pinned; PyWavelets for the watermark; DeepCache for
# cache_interval; open_clip_torch for CLIP's vocabulary (weights random-full); regex as
# transformers requires (the image's is older).
wanted=("$(pin diffusers)" "$(pin transformers)" "$(pin peft)" "$(pin PyWavelets)"
        "$(pin DeepCache)" "$(pin open_clip_torch)" "regex==2026.11.19")
rm -rf .whl && mkdir .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
  --implementation cp "${platforms[@]}" -d .whl "${wanted[@]}"
du -sh .whl
