#!/usr/bin/env bash
# Fetch the wheels the GPU check carries to a GPU machine that has no network (issue 20 item 5):
# only what generation needs on top of the machine's own torch and transformers. Run here (PyPI
# reachable), then carry the folder (34 MiB; with the repository's 16 MiB under the 64 MiB a call may carry):
#
#   bash scripts/gpu_check_wheels.sh [DIR]          # default DIR: gpu_check_wheels (git-ignored)
#
# - diffusers 0.42.1 (needs huggingface-hub >= 1.32) and 0.39.0 (the fallback for an older hub);
#   scripts/gpu_check_env.py picks the newest one the machine's packages satisfy;
# - gsplat 1.5.3 as a pure-Python wheel with its CUDA sources (JIT-built on the GPU machine; PyPI
#   has only the source archive, and building it there would need setuptools and the network);
# - plyfile, and the small dependencies of these that a torch + transformers image may lack
#   (jaxtyping, wadler-lindig, rich and its markdown/pygments, ninja for the JIT build,
#   importlib-metadata, zipp, imageio, pytest for the cuda-marked render test, and Pillow for
#   Python 3.11 and 3.12, 7 MiB each). Nothing from Ray, pyarrow or the metrics.
# PY: a Python with pip, setuptools and torch (gsplat's setup.py imports torch), e.g. .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-gpu_check_wheels}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$DIR"
get() { "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR" "$@"; }
get diffusers==0.39.0
get plyfile==1.0.3  # numpy 1.x fallback (1.1.5 needs numpy >= 2)
get diffusers==0.42.1 plyfile==1.1.5 safetensors==0.8.0 jaxtyping==0.3.11 wadler-lindig==0.1.8 \
    rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 ninja==1.13.2 \
    importlib-metadata==8.7.0 zipp==4.1.2 imageio==2.38.2 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
# diffusers imports requests (huggingface-hub 1.x/2.x and transformers 5 no longer bring it)
get requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1 idna==3.20
get --platform any --python-version 3 --implementation py --abi none charset-normalizer==3.0.1  # pure
for v in 3.11 3.12; do  # diffusers and the renderer's PNG writer need Pillow (binary: per Python)
    get --only-binary=:all: --python-version "$v" --platform manylinux_2_28_x86_64 pillow==13.0.0
done
if ! ls "$DIR"/gsplat-1.5.3-*.whl >/dev/null 2>&1; then
    BUILD_NO_CUDA=1 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" gsplat==1.5.3
fi
du -sh "$DIR"
ls -1 "$DIR"
