"""The static audit of the sm_90 machine code (scripts/static_audit.py), without a GPU: every CUDA kernel of the
built extension and every Triton kernel x autotune config keeps what its design promises (no spills, shared
memory and registers that fit, its key instructions). The negative tests feed the same checks synthetic tool
output and expectations that must fail, so a check that cannot fail is caught too."""
import collections
import json
import os
import struct
import subprocess
import sys

import pytest

from dlkernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
try:
    import static_audit as audit
finally:
    sys.path.pop(0)

# Untracked (like benchmark-results/ of the benchmarks): the committed table is the full audit's,
# benchmarks/results/static-sm90.csv, written by `python3 scripts/static_audit.py`.
CI_CSV = os.path.join(ROOT, "benchmark-results", "static-sm90-ci.csv")


def _cuda_extension():
    """The loaded extension's file when it was built with CUDA; skips a CPU-only build unless CI requires CUDA."""
    required = os.environ.get("DLKERNELS_REQUIRE_CUDA_BUILD") == "1"
    built = _ext.build_info().get("with_cuda", False)
    if required:
        assert built, "DLKERNELS_REQUIRE_CUDA_BUILD=1 but dlkernels._C was built without CUDA"
    if not built:
        pytest.skip("CPU-only build: no CUDA kernels to audit")
    return _ext._C.__file__


@pytest.fixture(scope="module")
def cuda_rows():
    so = _cuda_extension()
    if "9.0" not in (_ext.build_info().get("cuda_archs") or ""):
        pytest.fail(f"the CUDA build does not target sm_90 (cuda_archs={_ext.build_info().get('cuda_archs')!r}); "
                    "build with TORCH_CUDA_ARCH_LIST=9.0")
    return audit.audit_cuda(so)  # raises when the .so holds no sm_90 cubin


def test_cuda_kernels_keep_their_expectations(cuda_rows):
    print(audit.format_table(cuda_rows))
    kernels = {r.kernel for r in cuda_rows if r.module}
    assert kernels >= {e.kernel for e in audit.CUDA_EXPECTATIONS}, "some expected kernels are not in the binary"
    failures = [f"{r.module} {r.kernel}<{r.dtype},{r.config}>: {'; '.join(r.problems)}" for r in cuda_rows if not r.ok]
    assert not failures, "\n".join(failures)


def test_every_cuda_kernel_has_its_launch_bounds_or_an_expected_block_size(cuda_rows):
    for r in cuda_rows:
        if r.module:
            assert r.threads > 0 and r.registers > 0, r
            assert 0 < r.occupancy <= 1, r


@pytest.fixture(scope="module")
def triton_audit(tmp_path_factory):
    """The ci scope of the audit, run in a fresh process: Triton compiles only with the interpreter off, and
    this process has it on (conftest)."""
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("audit") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "static_audit.py"), "--skip-cuda", "--scope", "ci",
           "--csv", CI_CSV, "--json", str(out), "--quiet", "--jobs", str(min(4, os.cpu_count() or 1))]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    print(result.stdout)
    assert out.exists(), result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads(out.read_text()), result


def test_triton_kernels_compile_for_sm90_within_their_expectations(triton_audit):
    data, result = triton_audit
    rows = data["rows"]
    failures = [f"{r['kernel']} {r['launch']} {r['config']} {r['dtype']}: {'; '.join(r['problems'])}"
                for r in rows if r["problems"]]
    assert not failures, "\n".join(failures)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_triton_audit_covers_every_kernel_and_config(triton_audit):
    data, _ = triton_audit
    compiled = collections.defaultdict(set)
    for r in data["rows"]:
        compiled[(r["kernel"], r["dtype"])].add(r["config"])
    assert {k for k, _ in compiled} == set(audit.TRITON_EXPECTATIONS)
    for kernel, by_dtype in data["configs"].items():
        for dtype, labels in by_dtype.items():
            if dtype in audit.CI_ALL_CONFIGS:
                assert compiled[(kernel, dtype)] == set(labels), (kernel, dtype)
            else:
                assert any(label.endswith(" default") for label in compiled[(kernel, dtype)]), (kernel, dtype)


# ---------------------------------------------------------------------------------------------------------
# The checks can fail: synthetic tool output and expectations


RES_USAGE = """
Fatbin elf code:
================
arch = sm_90
Resource usage:
 Common:
  GLOBAL:0
 Function _Z10toy_kernelPf:
  REG:40 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z11fast_kernelPf:
  REG:232 STACK:0 SHARED:49152 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

def _elf(sections):
    """A 64-bit little-endian ELF image holding `sections` ({name: bytes}), laid out as a cubin is: the data,
    the section names, then the section headers (the first one null)."""
    names = b"\0" + b"".join(name.encode() + b"\0" for name in [*sections, ".shstrtab"])
    body, entries, name_at = b"", [], 1
    for name, data in [*sections.items(), (".shstrtab", names)]:
        entries.append((name_at, 64 + len(body), len(data)))
        name_at += len(name) + 1
        body += data
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 190, 1, 0, 0, 64 + len(body), 0, 64, 0, 0, 64, len(entries) + 1, len(entries))
    table = bytes(64) + b"".join(struct.pack("<IIQQQQIIQQ", n, 0x70000000, 0, 0, off, size, 0, 0, 4, 0)
                                 for n, off, size in entries)
    return header + body + table


def _record(fmt, attr, value=b""):
    """One .nv.info record: format, attribute, then a 16-bit value or (EIFMT_SVAL) a size and its bytes."""
    if fmt == audit.EIFMT_SVAL:
        return bytes([fmt, attr]) + struct.pack("<H", len(value)) + value
    return bytes([fmt, attr]) + value.ljust(2, b"\0")


# The .nv.info records around a kernel's launch bounds, as nvcc writes them: the register count (HVAL), the
# barriers (BVAL), the parameters (SVAL), then EIATTR_MAX_THREADS (SVAL, x y z). The toy kernel has none.
CUBIN = _elf({
    ".text._Z10toy_kernelPf": bytes(16),
    ".nv.info._Z10toy_kernelPf": _record(0x03, 0x1b, b"\xff\x00") + _record(0x04, 0x17, bytes(12)),
    ".nv.info._Z11fast_kernelPf": (_record(0x03, 0x1b, b"\xff\x00") + _record(0x02, 0x4c, b"\x01")
                                   + _record(0x04, 0x17, bytes(12))
                                   + _record(0x04, 0x05, struct.pack("<III", 128, 1, 1))
                                   + _record(0x04, 0x1c, bytes(4))),
    ".nv.info": _record(0x04, 0x2f, bytes(8)),
})


def test_launch_bounds_come_from_the_nv_info_records():
    # EIATTR_MAX_THREADS among the other records: test_parsers_read_the_tools_output.
    reqntid = _elf({".nv.info._Z1kv": _record(0x04, 0x10, struct.pack("<III", 64, 2, 1))})
    assert audit.parse_launch_bounds(reqntid) == {"_Z1kv": (64, 2, 1)}
    assert audit.elf_sections(CUBIN)[".text._Z10toy_kernelPf"] == bytes(16)
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        audit.parse_launch_bounds(b"Fatbin elf code:")


SASS = """
\t.target\tsm_90
.text._Z10toy_kernelPf:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R14 ;
        /*0020*/              @!P0 LDL R69, [R1] ;
        /*0030*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0040*/                   EXIT ;
.text._Z11fast_kernelPf:
        /*0000*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR6][R4.64] ;
        /*0010*/                   LDSM.16.M88.4 R8, [R3] ;
        /*0020*/                   HMMA.16816.F32.BF16 R12, R8, R10, R12 ;
        /*0030*/               @P1 STG.E.128 desc[UR4][R2.64], R12 ;
        /*0040*/                   EXIT ;
"""


def _parsed(names):
    res, bounds, sass = audit.parse_res_usage(RES_USAGE), audit.parse_launch_bounds(CUBIN), audit.parse_sass(SASS)
    return [("toy", symbol, kernel, "float32", "", res[symbol], bounds.get(symbol), sass.get(symbol))
            for symbol, kernel in names.items()]


NAMES = {"_Z10toy_kernelPf": "toy_kernel", "_Z11fast_kernelPf": "fast_kernel"}


def test_parsers_read_the_tools_output():
    res = audit.parse_res_usage(RES_USAGE)
    assert res["_Z10toy_kernelPf"] == audit.Resources(registers=40, stack=16, shared=0, local=0)
    assert res["_Z11fast_kernelPf"].shared == 49152
    assert audit.parse_launch_bounds(CUBIN) == {"_Z11fast_kernelPf": (128, 1, 1)}
    sass = audit.parse_sass(SASS)
    assert audit.key_instructions(sass["_Z10toy_kernelPf"]) == {"LDG.128": 1, "STL": 1, "LDL": 1}
    assert audit.key_instructions(sass["_Z11fast_kernelPf"]) == {
        "HMMA": 1, "LDGSTS": 1, "LDSM": 1, "STG.128": 1}
    # cuobjdump -sass names functions its own way.
    listing = "\t\tFunction : _Z3fooPf\n        /*0000*/   HGMMA.64x256x16.F32.BF16 R24, gdesc[UR8], R24 ;\n"
    assert audit.key_instructions(audit.parse_sass(listing)["_Z3fooPf"]) == {"HGMMA": 1}


def test_a_spill_fails_and_a_clean_kernel_passes():
    entries = (audit.CudaExpectation("toy_kernel", threads=256, max_registers=64, max_shared=0),
               audit.CudaExpectation("fast_kernel", threads=128, max_registers=255, max_shared=48 * 1024,
                                     required=("HMMA", "LDGSTS", "LDSM", "STG.128")))
    rows = {r.kernel: r for r in audit.check_cuda(_parsed(NAMES), entries)}
    assert not rows["toy_kernel"].ok and "spills: 1 STL, 1 LDL" in rows["toy_kernel"].problems[0]
    assert rows["toy_kernel"].threads == 256  # no launch bounds: the expectation's block size
    assert rows["fast_kernel"].ok, rows["fast_kernel"].problems
    assert rows["fast_kernel"].threads == 128  # from EIATTR_MAX_THREADS
    assert rows["fast_kernel"].blocks_per_sm == 2  # 232 registers x 4 warps: 2 blocks by registers


def test_known_spills_pass_until_they_are_gone():
    entry = audit.CudaExpectation("toy_kernel", threads=256, max_registers=64, max_shared=0, known_spills="why")
    assert all(r.ok for r in audit.check_cuda(_parsed({"_Z10toy_kernelPf": "toy_kernel"}), (entry,)))
    clean = audit.CudaExpectation("fast_kernel", threads=128, max_registers=255, max_shared=48 * 1024,
                                  known_spills="why")
    rows = audit.check_cuda(_parsed({"_Z11fast_kernelPf": "fast_kernel"}), (clean,))
    assert any("none of its kernels spills" in p for r in rows for p in r.problems)


def test_unmet_expectations_fail():
    entries = (
        # tensor-core promises the kernel does not keep, and too few registers and shared memory for it
        audit.CudaExpectation("fast_kernel", threads=256, max_registers=128, max_shared=16 * 1024,
                              required=("HGMMA", ("UTMALDG", "LDS.128")), forbidden=("LDSM",)),
        # an entry that matches no kernel
        audit.CudaExpectation("gone_kernel", threads=256, max_registers=64, max_shared=0),
    )
    rows = audit.check_cuda(_parsed(NAMES), entries)
    by_kernel = {r.kernel: r for r in rows}
    problems = " | ".join(by_kernel["fast_kernel"].problems)
    for expected in ("launched with 256 threads but its launch bounds allow 128", "232 registers per thread",
                     "49152 bytes of static shared memory", "lacks HGMMA", "lacks UTMALDG or LDS.128",
                     "uses LDSM"):
        assert expected in problems, problems
    assert by_kernel["toy_kernel"].problems[0] == "no entry in CUDA_EXPECTATIONS"
    assert by_kernel["gone_kernel"].problems == ["CUDA_EXPECTATIONS entry matches no kernel in the binary"]
    ambiguous = audit.check_cuda(_parsed({"_Z10toy_kernelPf": "toy_kernel"}), (entries[0], entries[0].__class__(
        "toy_kernel", threads=1, max_registers=1, max_shared=0), audit.CudaExpectation(
        "toy_kernel", threads=1, max_registers=1, max_shared=0, dtypes=("float32",))))
    assert "2 entries of CUDA_EXPECTATIONS match" in ambiguous[0].problems[0]


def test_triton_checks_fail_on_spills_shared_memory_and_missing_wgmma():
    launch = audit.Launch("linear_act", "_linear_act_gemm_kernel", "forward", (), {})
    job = audit.TritonJob("bfloat16", 0, 0)
    good = dict(constexprs={"BLOCK_M": "128", "DOT": "True", "PRECISION": "'ieee'"}, num_warps=8, num_stages=3,
                resources=dataclass_dict(registers=168), dynamic_shared=147456, wgmma_ptx=True,
                opcodes={"HGMMA.64x256x16.F32.BF16": 4, "LDGSTS.E.BYPASS.128": 36, "LDSM.16.M88.4": 16})
    assert audit.check_triton(job, launch, "cfg", good).ok
    bad = dict(good, dynamic_shared=240 * 1024, wgmma_ptx=False,
               opcodes={"HMMA.16816.F32.BF16": 8, "STL": 3, "LDL": 2})
    problems = " | ".join(audit.check_triton(job, launch, "cfg", bad).problems)
    for expected in ("more than sm_90's 232448", "no block fits", "spills: 3 STL, 2 LDL", "lacks HGMMA",
                     "no wgmma.mma_async", "lacks LDGSTS or UTMALDG"):
        assert expected in problems, problems
    # Small tiles may use mma.sync; float32 with exact products needs no tensor cores.
    small = dict(good, constexprs={"BLOCK_M": "16", "DOT": "True", "PRECISION": "'ieee'"},
                 opcodes={"HMMA.16816.F32.BF16": 8, "LDGSTS.E.BYPASS.128": 4})
    assert audit.check_triton(job, launch, "cfg", small).ok
    fp32 = dict(good, opcodes={"FFMA": 512, "LDGSTS.E.BYPASS.128": 4})
    assert audit.check_triton(audit.TritonJob("float32", 0, 0), launch, "cfg", fp32).ok
    assert not audit.check_triton(job, launch, "cfg", dict(error="CompilationError: boom")).ok


def dataclass_dict(**fields):
    import dataclasses

    return dataclasses.asdict(audit.Resources(**fields))


@pytest.mark.parametrize("threads, registers, shared, blocks, fraction, limiter", [
    (256, 64, 0, 4, 0.5, "registers"),  # 64 registers: 8 warps per partition
    (1024, 32, 0, 2, 1.0, "threads"),
    (1024, 33, 0, 1, 0.5, "registers"),  # 33 rounds up to 40 per thread: 12 warps per partition
    (256, 32, 48 * 1024, 4, 0.5, "shared"),  # 49 KB with the reserved 1 KB: 4 in 228 KB
    (128, 255, 0, 2, 0.125, "registers"),
    (64, 16, 0, 32, 1.0, "threads"),
    (32, 16, 0, 32, 0.5, "blocks"),
    (128, 32, 228 * 1024, 0, 0.0, "233472 bytes of shared memory"),
])
def test_occupancy_matches_cudas_calculation(threads, registers, shared, blocks, fraction, limiter):
    occ = audit.occupancy(threads, registers, shared)
    assert (occ.blocks, occ.fraction, occ.limiter) == (blocks, fraction, limiter)


def test_demangled_names_split_into_kernel_dtype_and_config():
    split = audit.split_kernel_name
    assert split("void dlkernels::cuda::(anonymous namespace)::gemm_bias_act_kernel<c10::BFloat16, "
                 "(dlkernels::Activation)1>(c10::BFloat16 const*, long)", ["none", "relu"]) == (
        "gemm_bias_act_kernel", "bfloat16", "act=relu")
    assert split("void dlkernels::cuda::channel_sum_kernel<double>(double const*, double*, long, long, long)") == (
        "channel_sum_kernel", "float64", "")
    assert split("void dlkernels::cuda::(anonymous namespace)::max_pool2d_forward_kernel<float, true, false>"
                 "(float const*, float*, long*, dlkernels::PoolShape, long)") == (
        "max_pool2d_forward_kernel", "float32", "true,false")
