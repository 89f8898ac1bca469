"""Mutation proof of the emulated CUDA tests: applies single faults to a copy of the CUDA sources, builds the
emulator from each (only the changed translation units recompile), runs the emulated tests against it, and
reports which test caught each mutant. Every mutant must be caught.

    python3 scripts/cuda_mutants.py [--only NAME ...] [--out benchmarks/results/cuda-mutants.csv]

(--only updates those mutants' rows of an existing table.)

It needs the built extension dlkernels._C in the source tree (the tests import dlkernels) and takes a few
minutes per mutant on 2 cores. The copy lives in a temporary folder; the source tree is not touched.
"""
import argparse
import csv
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file under csrc, exact text, replacement, what it breaks)
MUTANTS = [
    ("fallback-gemm-drop-barrier-after-staging", "cuda/linear_act_cuda.cu",
     "    __syncthreads();\n\n#pragma unroll\n    for (int kk = 0;", "\n#pragma unroll\n    for (int kk = 0;",
     "the GEMM main loop reads the tile before every thread has staged it"),
    ("fallback-gemm-drop-barrier-after-compute", "cuda/linear_act_cuda.cu",
     "      }\n    }\n    __syncthreads();\n  }\n", "      }\n    }\n  }\n",
     "the next tile overwrites shared memory that other threads still read"),
    ("fallback-gemm-bounds-off-by-one", "cuda/linear_act_cuda.cu",
     "As[kl][ml] = (gm < M && gk < K)", "As[kl][ml] = (gm < M && gk <= K)",
     "the A tile reads one column past K"),
    ("fallback-gemm-wrong-shared-index", "cuda/linear_act_cuda.cu",
     "av[i] = As[kk][ty + i * kThreadsM];", "av[i] = As[kk][ty + i * kThreadsM + 1];",
     "the micro-tile reads the wrong row of the staged A tile"),
    ("reduce-wrong-shared-index", "cuda/cuda_utils.cuh",
     "if (tid < s) smem[tid] += smem[tid + s];", "if (tid < s) smem[tid] += smem[tid + s - (s > 1)];",
     "the block reduction adds the wrong partial sums"),
    ("reduce-drop-barrier", "cuda/cuda_utils.cuh",
     "    if (tid < s) smem[tid] += smem[tid + s];\n    __syncthreads();",
     "    if (tid < s) smem[tid] += smem[tid + s];",
     "the block reduction reads partial sums before they are written"),
    ("conv-bounds-off-by-one", "cuda/conv2d_kernels.cuh",
     "if (ih < 0 || ih >= g.H) continue;\n      for (int64_t s = 0; s < g.KW; ++s) {\n        const int64_t iw = "
     "iw0 + s * g.dw;\n        if (iw < 0 || iw >= g.W) continue;",
     "if (ih < 0 || ih >= g.H) continue;\n      for (int64_t s = 0; s < g.KW; ++s) {\n        const int64_t iw = "
     "iw0 + s * g.dw;\n        if (iw < 0 || iw > g.W) continue;",
     "the forward reads one column past the input's right edge (padding)"),
    ("pool-write-past-end", "cuda/max_pool2d_kernels.cuh",
     "for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {\n"
     "    int64_t n, c, oh, ow;",
     "for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i <= total; i += step) {\n"
     "    int64_t n, c, oh, ow;",
     "the forward writes one element past the output"),
    ("core-drop-mainloop-barrier", "cuda/gemm_core.cuh",
     "      ptx::cp_async_wait<TileT::kStages - 2>();\n      __syncthreads();",
     "      ptx::cp_async_wait<TileT::kStages - 2>();",
     "the tensor-core main loop overwrites a stage other warps still read"),
    ("core-drop-cp-async-wait", "cuda/gemm_core.cuh",
     "      ptx::cp_async_wait<TileT::kStages - 2>();\n", "",
     "the tensor-core main loop multiplies a k-tile before its copies land"),
    ("core-swap-b-fragments", "cuda/gemm_core.cuh",
     "    f0[1] = x[1];\n    f1[0] = x[2];", "    f0[1] = x[2];\n    f1[0] = x[1];",
     "two B fragment registers of the tensor-core GEMM swapped"),
    ("core-k-bound-off-by-one", "cuda/gemm_core.cuh",
     "const bool ok = go < extent && gk < k_end;", "const bool ok = go < extent && gk <= k_end;",
     "the dense tiles load the chunk that starts at the end of the reduction"),
    ("core-no-swizzle", "cuda/gemm_core.cuh",
     "(((col / kVec) ^ (row & 7)) * kVec)", "((col / kVec) * kVec)",
     "shared memory without the XOR swizzle: right values, bank conflicts"),
    ("core-drop-epilogue-barrier", "cuda/gemm_core.cuh",
     "      }\n    }\n    __syncthreads();\n  }\n\n  // The epilogue's second half",
     "      }\n    }\n  }\n\n  // The epilogue's second half",
     "the epilogue copies the tile out before every warp has written it"),
    ("conv-igemm-off-stride-grid", "cuda/conv2d_kernels.cuh",
     "if (th < 0 || tw < 0 || th % p.sh != 0 || tw % p.sw != 0) return nullptr;",
     "if (th < 0 || tw < 0) return nullptr;",
     "the transposed grad_input gather takes taps that fall between the stride grid's positions"),
    ("conv-igemm-gather-bound", "cuda/conv2d_kernels.cuh",
     "if (ih >= p.SH || iw >= p.SW) return nullptr;", "if (ih > p.SH || iw >= p.SW) return nullptr;",
     "the im2col gather reads one row past the source's bottom edge (padding)"),
    ("conv-grad-weight-split-stride", "cuda/conv2d_kernels.cuh",
     "v += src[static_cast<int64_t>(sp) * Kg * kred];", "v += src[static_cast<int64_t>(sp) * kred];",
     "the weight gradient's reduction reads the wrong split's partial sums"),
    ("pool-vec-drop-nan", "cuda/max_pool2d_kernels.cuh",
     "if (val > maxval[l] || val != val) {", "if (val > maxval[l]) {",
     "the 16-byte channels_last forward lets NaN lose to later values"),
    ("block-pool-window-past-edge", "cuda/conv2d_maxpool_kernels.cuh",
     "dw1 = min64(b.kw, b.conv.OW - w0);", "dw1 = min64(b.kw, b.conv.OW - w0 + 1);",
     "the block's pooling window reads one column past the conv output's right edge (ceil_mode, padding)"),
    ("block-route-drop-act-grad", "cuda/conv2d_maxpool_kernels.cuh",
     "acc += static_cast<acc_t>(grad_out[o]) * ActivationFn<A>::grad(from, p);",
     "acc += static_cast<acc_t>(grad_out[o]);",
     "the block's backward routes grad_out to the maxima without the activation's derivative"),
    ("mma-swap-fragment-registers", "cuda/ptx_probe_cuda.cu",
     "for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i];", "for (int i = 0; i < 4; ++i) ra[i ^ 1] = a[lane * 4 + i];",
     "the A fragment's registers 0/1 and 2/3 are swapped"),
    ("cp-async-drop-wait", "cuda/ptx_probe_cuda.cu",
     "  } else if (mode == 0) {\n    ptx::cp_async_wait<0>();\n  }", "  }",
     "shared memory is read before the copies land"),
    ("ldmatrix-model-trans", "cuda_emu/ptx_emu.cpp",
     "lo = rows[m][2 * (l % 4)][l / 4];", "lo = rows[m][l / 4][2 * (l % 4)];",
     "the emulator's own model: .trans returns the untransposed element"),
]

TESTS = ["tests/test_linear_act.py", "tests/test_conv2d.py", "tests/test_max_pool2d.py", "tests/test_conv2d_maxpool.py",
         "tests/test_conv2d_maxpool_cuda.py", "tests/test_ptx.py", "tests/test_cuda_emu.py"]


def build_emulator(src_root, build_dir):
    """Builds dlkernels._cuda_emu from src_root/csrc into src_root/dlkernels (ninja: changed files only)."""
    code = f"""
import glob, os, shutil, sysconfig, torch
from torch.utils import cpp_extension
root = {src_root!r}
sources = sorted(glob.glob(os.path.join(root, "csrc", "cuda_emu", "*.cpp")))
flags = ["-O1", "-Wno-unknown-pragmas", "-DDLKERNELS_CUDA_EMU"]
module = cpp_extension.load("_cuda_emu", sources, extra_include_paths=[os.path.join(root, "csrc")],
                            extra_cflags=flags, build_directory={build_dir!r})
shutil.copy(module.__file__, os.path.join(root, "dlkernels", "_cuda_emu" + sysconfig.get_config_var("EXT_SUFFIX")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=build_dir)
    return done.returncode == 0, done.stdout + done.stderr


def run_tests(src_root):
    env = {**os.environ, "DLKERNELS_REQUIRE_CUDA_BUILD": "0", "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k", "emu", *TESTS],
                          capture_output=True, text=True, cwd=src_root, env=env)
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M) + re.findall(r"^ERROR (\S+)", done.stdout, re.M)
    return done.returncode, failed, done.stdout[-3000:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to run (default: all)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cuda-mutants.csv"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m[0] in args.only]
    tmp = tempfile.mkdtemp(prefix="dlkernels-mutants-")
    src_root = os.path.join(tmp, "src")
    build_dir = os.path.join(tmp, "build")
    os.makedirs(build_dir)
    shutil.copytree(ROOT, src_root, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                   "benchmark-results", "_cuda_emu*.so"))
    assert glob.glob(os.path.join(src_root, "dlkernels", "_C*.so")), "build dlkernels._C first"
    rows = []
    try:
        ok, log = build_emulator(src_root, build_dir)
        assert ok, "the unmutated emulator does not build:\n" + log[-3000:]
        code, failed, out = run_tests(src_root)
        assert code == 0, "the emulated tests fail without any mutant:\n" + out
        for name, path, old, new, what in mutants:
            file = os.path.join(src_root, "csrc", path)
            original = open(file).read()
            assert original.count(old) == 1, f"mutant {name}: the text to change is not found once in {path}"
            open(file, "w").write(original.replace(old, new))
            start = time.time()
            try:
                ok, log = build_emulator(src_root, build_dir)
                if not ok:
                    result, by = "build failed", log.strip().splitlines()[-1][:200]
                else:
                    code, failed, out = run_tests(src_root)
                    result = "caught" if code != 0 else "SURVIVED"
                    by = failed[0] if failed else ("" if code == 0 else out.strip().splitlines()[-1])
            finally:
                open(file, "w").write(original)
            rows.append({"mutant": name, "file": f"csrc/{path}", "fault": what, "result": result, "caught_by": by,
                         "seconds": round(time.time() - start)})
            print(f"{name:34s} {result:9s} {by}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if args.only and os.path.exists(args.out):  # a partial run updates its rows of the table
        ran = {r["mutant"] for r in rows}
        with open(args.out, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r["mutant"] not in ran]
        order = [m[0] for m in MUTANTS]
        rows = sorted(kept + rows, key=lambda r: order.index(r["mutant"]) if r["mutant"] in order else len(order))
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    survived = [r["mutant"] for r in rows if r["result"] != "caught"]
    print(f"{len(rows) - len(survived)} of {len(rows)} mutants caught; results in {args.out}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
