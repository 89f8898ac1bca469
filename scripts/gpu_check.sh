#!/usr/bin/env bash
# The one command that validates dlkernels on a GPU machine (H100/H200): builds the extension there, runs
# the whole test suite (CUDA tests included, CUDA build required), and prints a short summary last.
# Logs and results go under $OUT (default ./gpu-check-out); the device tool returns at most 8 files, so
# keep it to machine.txt, build/tests/bench logs and bench.{csv,json,png}. Must finish well inside
# 8 minutes. Afterwards copy $OUT/bench.* to benchmarks/results/<device-slug>/ and commit them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} DLKERNELS_CUDA=1
export DLKERNELS_REQUIRE_CUDA_BUILD=1
PYTHON=${PYTHON:-python3}
status=()

step() {  # step NAME TIMEOUT CMD...: runs CMD with a time limit, logs to $OUT/NAME.log, records the result
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  status+=("$(printf '%-10s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$OUT/$name.log")")")
  return $rc
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} >"$OUT/machine.txt" 2>&1

if step build 240 bash -c "'$PYTHON' -m pip install --no-build-isolation --no-deps -e . && '$PYTHON' -m dlkernels info"; then
  # One default config per Triton kernel here (tuning every test shape would take minutes); the benchmark
  # below autotunes, which also checks that every Hopper config compiles.
  # House rules, packaging and the CPU ISA levels are CPU-machine checks that CI runs; the GPU machine has
  # neither the linters nor the time for them.
  step tests 240 env DLKERNELS_TRITON_AUTOTUNE=0 "$PYTHON" -m pytest -q --maxfail=25 -rfE \
    --ignore=tests/test_lint.py --ignore=tests/test_packaging.py --ignore=tests/test_cpu_isa.py
  # The roofline benchmark on the GPU (bf16, quick case list); stops starting new cases after 150 s.
  step bench 240 "$PYTHON" -m benchmarks --quick --device cuda --max-seconds 150 --out "$OUT" --name bench
fi

echo "== dlkernels gpu_check ($(cat "$OUT/machine.txt" | sed -n 3p))"
cat "$OUT/machine.txt"
printf '%s\n' "${status[@]}"
