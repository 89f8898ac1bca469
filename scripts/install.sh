#!/usr/bin/env bash
# Installs dlkernels with everything it needs (torch, test and benchmark extras) into the current Python
# environment and builds the extension, with the CUDA kernels when torch is a CUDA build. When no CUDA
# toolkit matches torch's CUDA version, NVIDIA's compiler is installed from PyPI (scripts/cuda_toolkit.py).
#
#   PYTHON=python3          the interpreter to install into
#   TORCH_SPEC=...          the torch to install (default: the CUDA 13.0 build torch==2.14.1)
#   DLKERNELS_CUDA=auto|1|0 see setup.py; TORCH_CUDA_ARCH_LIST defaults to 9.0 (Hopper)
#   DLKERNELS_CUDA_EMU=1|0  the CPU emulator of the CUDA kernels, which the tests run (default 1)
#   EXTRAS=test,bench       the optional dependencies to install
#
# The compiler's full output goes to build/install.log; the terminal shows each step and the compile's
# progress, and the end of the log if the build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
EXTRAS=${EXTRAS:-test,bench}
LOG=build/install.log
mkdir -p build
step() { printf '\n== %s\n' "$*"; }

step "1/4 torch and the build tools ($TORCH_SPEC) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
# torch first: the extension is built against the installed torch (no build isolation).
# shellcheck disable=SC2086
"$PYTHON" -m pip install --progress-bar off $TORCH_SPEC "setuptools>=77" wheel ninja packaging numpy

step "2/4 the CUDA compiler"
if [ "${DLKERNELS_CUDA:-auto}" != "0" ]; then
  toolkit=$("$PYTHON" scripts/cuda_toolkit.py ensure)
  [ -n "$toolkit" ] && export CUDA_HOME="$toolkit"
else
  echo "skipped (DLKERNELS_CUDA=0)"
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export DLKERNELS_CUDA_EMU=${DLKERNELS_CUDA_EMU:-1}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

step "3/4 dlkernels and its extension (the compile takes a few minutes; full output in $LOG)"
# pip -v shows the build's output; keep the step lines and ninja's progress ([3/12] file), log the rest.
"$PYTHON" -m pip install -v --progress-bar off --no-build-isolation -e ".[$EXTRAS]" >"$LOG" 2>&1 </dev/null &
pid=$!
tail -n +1 -f "$LOG" --pid "$pid" 2>/dev/null \
  | sed -un -e 's/^ *dlkernels build: /  /p' \
            -e 's/^ *\[\([0-9]*\/[0-9]*\)\] .* -c \(-c \)\{0,1\}\([^ ]*\) .*/  [\1] compile \3/p' \
            -e 's/^ *\[\([0-9]*\/[0-9]*\)\] .*-o \([^ ]*\.so\).*/  [\1] link \2/p' \
            -e 's/^ *Successfully installed \(.*\)/  installed \1/p'
if ! wait "$pid"; then
  echo "the build failed; the end of $LOG:" >&2
  tail -n 60 "$LOG" >&2
  exit 1
fi

step "4/4 what was built"
"$PYTHON" -m dlkernels info
