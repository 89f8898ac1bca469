#!/usr/bin/env bash
# Installs dlkernels with everything it needs (torch, test and benchmark extras) into the current Python
# environment and builds the extension, with the CUDA kernels when torch is a CUDA build and nvcc exists.
#
#   PYTHON=python3          the interpreter to install into
#   TORCH_SPEC=...          the torch to install (default: the CUDA 13.0 build torch==2.14.1)
#   DLKERNELS_CUDA=auto|1|0 see setup.py; TORCH_CUDA_ARCH_LIST defaults to 9.0 (Hopper), CUDA_HOME to /usr/local/cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

# torch first: the extension is built against the installed torch (no build isolation).
# shellcheck disable=SC2086
"$PYTHON" -m pip install --quiet $TORCH_SPEC setuptools wheel ninja packaging numpy
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$PYTHON" -m pip install --quiet --no-build-isolation -e ".[test,bench]"
"$PYTHON" -m dlkernels info
