"""Static audit of the sm_90 (Hopper) machine code, without a GPU.

    python3 scripts/static_audit.py                the full audit; writes benchmarks/results/static-sm90.csv
    python3 scripts/static_audit.py --scope ci     the selection tests/test_static_audit.py runs (see SCOPES)
    python3 scripts/static_audit.py --so PATH      audit another build of the extension
    options: --csv PATH, --json PATH, --jobs N, --dtypes a,b, --kernels name,..., --skip-cuda, --skip-triton

CUDA: the sm_90 cubins inside dlkernels/_C*.so are extracted with cuobjdump and read per kernel: registers,
static shared memory, local memory and stack (`cuobjdump -res-usage`), launch bounds (the EIATTR_MAX_THREADS /
EIATTR_REQNTID records of the cubin's .nv.info sections), and the SASS (`nvdisasm`): spill stores and loads
(STL/LDL) and the key instructions (tensor cores HMMA/HGMMA, async copies LDGSTS/UTMALDG, LDSM, 128-bit global
loads and stores).
Each kernel is held to its entry in CUDA_EXPECTATIONS; a kernel without an entry, or an entry that matches
no kernel, is a failure, so no kernel passes unaudited.

Triton: every kernel of dlkernels.triton_ops is compiled ahead of time for sm_90 (triton.compile with
GPUTarget("cuda", 90, 32) runs without a GPU) for each autotune config and dtype, with the specialisation a
real launch gets: the launches are captured from the ops' own host code run on meta tensors (LAUNCH_CASES)
and specialised by Triton's own binder. Each compiled kernel must fit in 227 KB of shared memory, not
spill, fit on an SM, and keep its entry in TRITON_EXPECTATIONS (tensor-core dots, async-copy pipelines).

Theoretical occupancy is CUDA's occupancy calculation for sm_90 (registers allocated per warp in units of
256 in each of the 4 warp partitions, 1 KB of shared memory reserved per block, the largest carveout).
The table goes to the CSV and the terminal; the exit status is 1 when any expectation fails.

The tools: cuobjdump and nvdisasm from a CUDA toolkit (CUDA_HOME, /usr/local/cuda), else from NVIDIA's PyPI
packages (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm: site-packages/nvidia/cu*/bin, in the test extras),
else from PATH or Triton's own copy. c++filt (binutils) demangles the kernel names.
"""
import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import glob
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import site
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_CSV = os.path.join(ROOT, "benchmarks", "results", "static-sm90.csv")

# ---------------------------------------------------------------------------------------------------------
# sm_90 (H100/H200) limits, as CUDA's occupancy calculator uses them

SM90 = dict(
    regs_per_sm=65536,
    reg_alloc_unit=256,  # registers are allocated per warp in units of 256
    warp_partitions=4,  # each of the 4 schedulers holds a quarter of the register file
    max_regs_per_thread=255,
    max_threads_per_sm=2048,
    max_warps_per_sm=64,
    max_blocks_per_sm=32,
    max_threads_per_block=1024,
    shared_per_sm=228 * 1024,
    shared_reserved_per_block=1024,
    shared_alloc_unit=128,
    max_shared_per_block=227 * 1024,
)


@dataclasses.dataclass
class Occupancy:
    blocks: int  # resident blocks per SM
    warps: int  # resident warps per SM
    fraction: float  # warps / 64
    limiter: str  # what bounds the blocks: "threads", "registers", "shared", "blocks", or why none fits


def occupancy(threads: int, registers: int, shared: int) -> Occupancy:
    """Theoretical occupancy on sm_90 of a kernel launched with `threads` per block, using `registers` per
    thread and `shared` bytes of shared memory per block (static + dynamic)."""
    lim = SM90
    if threads <= 0 or threads > lim["max_threads_per_block"]:
        return Occupancy(0, 0, 0.0, f"{threads} threads per block")
    warps = math.ceil(threads / 32)
    by = {"threads": lim["max_warps_per_sm"] // warps, "blocks": lim["max_blocks_per_sm"]}
    # Registers: per warp, rounded up to the allocation unit; each warp partition holds a quarter of the
    # file, and a block's warps are spread over the partitions (the calculator's per-block check rounds the
    # block's warps up to a multiple of the partitions).
    regs = max(registers, 1)
    if regs > lim["max_regs_per_thread"]:
        return Occupancy(0, 0, 0.0, f"{registers} registers per thread")
    per_warp = math.ceil(regs * 32 / lim["reg_alloc_unit"]) * lim["reg_alloc_unit"]
    parts = lim["warp_partitions"]
    if per_warp * math.ceil(warps / parts) * parts > lim["regs_per_sm"]:
        return Occupancy(0, 0, 0.0, f"{registers} registers x {threads} threads")
    by["registers"] = (lim["regs_per_sm"] // parts // per_warp) * parts // warps
    # Shared memory: what the block asks for plus the 1 KB the system reserves per block.
    if shared > lim["max_shared_per_block"]:
        return Occupancy(0, 0, 0.0, f"{shared} bytes of shared memory")
    unit = lim["shared_alloc_unit"]
    per_block = math.ceil((shared + lim["shared_reserved_per_block"]) / unit) * unit
    by["shared"] = lim["shared_per_sm"] // per_block
    limiter = min(by, key=lambda k: (by[k], k != "threads"))
    blocks = by[limiter]
    return Occupancy(blocks, blocks * warps, blocks * warps / lim["max_warps_per_sm"], limiter)


# ---------------------------------------------------------------------------------------------------------
# Tools


def _tool_dirs():
    """Folders that may hold cuobjdump / nvdisasm, in order of preference."""
    sys.path.insert(0, HERE)
    try:
        import cuda_toolkit
    finally:
        sys.path.pop(0)
    for home in cuda_toolkit._system_candidates():
        yield os.path.join(home, "bin")
    folders = list(site.getsitepackages()) + [site.getusersitepackages()] + list(sys.path)
    for folder in dict.fromkeys(f for f in folders if f and os.path.isdir(f)):
        yield from sorted(glob.glob(os.path.join(folder, "nvidia", "cu*", "bin")), reverse=True)
    yield from os.environ.get("PATH", "").split(os.pathsep)
    try:
        import triton

        yield os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    except ImportError:
        pass


def find_tool(name: str) -> Optional[str]:
    """The path of a CUDA binary tool (cuobjdump, nvdisasm), or None. DLKERNELS_<NAME> overrides."""
    override = os.environ.get(f"DLKERNELS_{name.upper()}")
    if override:
        return override
    for folder in _tool_dirs():
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _run(cmd, cwd=None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


class Tools:
    """cuobjdump (required), nvdisasm (cuobjdump -sass stands in without it) and c++filt."""

    def __init__(self):
        self.cuobjdump = find_tool("cuobjdump")
        self.nvdisasm = find_tool("nvdisasm")
        self.cxxfilt = shutil.which("c++filt")
        if not self.cuobjdump:
            raise RuntimeError("cuobjdump not found: install the test extras (pip install nvidia-cuda-cuobjdump "
                               "nvidia-cuda-nvdisasm) or set CUDA_HOME to a CUDA toolkit")

    def resources(self, cubin):
        return parse_res_usage(_run([self.cuobjdump, "-res-usage", cubin]))

    def launch_bounds(self, cubin):
        with open(cubin, "rb") as f:
            return parse_launch_bounds(f.read())

    def sass(self, cubin):
        if self.nvdisasm:
            return parse_sass(_run([self.nvdisasm, "-c", cubin]))
        return parse_sass(_run([self.cuobjdump, "-sass", cubin]))

    def demangle(self, names):
        names = list(names)
        if not names:
            return {}
        if not self.cxxfilt:
            raise RuntimeError("c++filt (binutils) is needed to read the kernel names")
        out = subprocess.run([self.cxxfilt], input="\n".join(names) + "\n", capture_output=True, text=True,
                             check=True, timeout=120).stdout.splitlines()
        return dict(zip(names, out))


# ---------------------------------------------------------------------------------------------------------
# Parsers of the tools' output (plain text in, dicts out; the negative tests feed them synthetic text)


@dataclasses.dataclass
class Resources:
    registers: int = 0
    stack: int = 0
    shared: int = 0  # static shared memory, bytes (ptxas counts the 1 KB reserved window when it is used)
    local: int = 0


def parse_res_usage(text: str) -> Dict[str, Resources]:
    """`cuobjdump -res-usage`: {mangled name: Resources}."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+?):?\s*$", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", line)
        if m and current:
            out[current] = Resources(*map(int, m.groups()))
            current = None
    return out


# The .nv.info attributes that carry a kernel's block size: three 32-bit values (x, y, z).
EIATTR_MAX_THREADS = 0x05  # __launch_bounds__ (PTX .maxntid)
EIATTR_REQNTID = 0x10  # PTX .reqntid
EIFMT_SVAL = 0x04  # a record with a 16-bit size and that many bytes; the other formats take 4 bytes in all


def elf_sections(data: bytes) -> Dict[str, bytes]:
    """{name: contents} of the sections of a 64-bit little-endian ELF image (a cubin), as views into `data`
    (no copies: a cubin's code sections run to tens of MB)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    view, out = memoryview(data), {}
    for name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_at + name)
        out[data[names_at + name:end].decode()] = view[offset:offset + size]
    return out


def parse_launch_bounds(cubin: bytes) -> Dict[str, Tuple[int, int, int]]:
    """{mangled name: (x, y, z)} from the EIATTR_MAX_THREADS (__launch_bounds__, .maxntid) or EIATTR_REQNTID
    (.reqntid) record of each kernel's .nv.info.<name> section, read from the cubin itself (cuobjdump -elf
    prints the same records, among hundreds of MB of other sections); kernels without bounds are absent."""
    out = {}
    for section, body in elf_sections(cubin).items():
        if not section.startswith(".nv.info."):
            continue
        at = 0
        while at + 4 <= len(body):
            fmt, attr, size = body[at], body[at + 1], struct.unpack_from("<H", body, at + 2)[0]
            if fmt == EIFMT_SVAL:
                if attr in (EIATTR_MAX_THREADS, EIATTR_REQNTID) and size >= 12:
                    out[section[len(".nv.info."):]] = struct.unpack_from("<III", body, at + 4)
                at += 4 + size
            else:
                at += 4
    return out


# One SASS instruction: /*0510*/  @!P0 STL.64 [R1], R14 ;   (nvdisasm and cuobjdump -sass print the same)
_SASS_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")
_SASS_FUNCTION = re.compile(r"^(?:\.text\.(\S+):|\s*Function\s*:\s*(\S+))\s*$")


def parse_sass(text: str) -> Dict[str, collections.Counter]:
    """SASS of `nvdisasm -c` or `cuobjdump -sass`: {mangled name: Counter of opcodes with modifiers}."""
    out, current = {}, None
    for line in text.splitlines():
        m = _SASS_FUNCTION.match(line)
        if m:
            current = m.group(1) or m.group(2)
            out.setdefault(current, collections.Counter())
            continue
        m = _SASS_INSTRUCTION.match(line)
        if m and current:
            out[current][m.group(1)] += 1
    return out


def _opcode_is(base, modifier=None):
    def test(opcode):
        parts = opcode.split(".")
        return parts[0] == base and (modifier is None or modifier in parts[1:])

    return test


# The instructions a design may require or forbid, by name: each a test on an opcode with its modifiers.
KEY_INSTRUCTIONS = {
    "HGMMA": _opcode_is("HGMMA"),  # warpgroup MMA (wgmma.mma_async), Hopper tensor cores
    "HMMA": _opcode_is("HMMA"),  # warp MMA (mma.sync) on 16-bit or tf32 inputs
    "DMMA": _opcode_is("DMMA"),  # float64 tensor cores
    "LDGSTS": _opcode_is("LDGSTS"),  # cp.async: global -> shared without registers
    "UTMALDG": _opcode_is("UTMALDG"),  # TMA tile load (cp.async.bulk.tensor)
    "LDSM": _opcode_is("LDSM"),  # ldmatrix
    "LDG.128": _opcode_is("LDG", "128"),  # 128-bit global load
    "STG.128": _opcode_is("STG", "128"),  # 128-bit global store
    "LDS.128": _opcode_is("LDS", "128"),
    "STS.128": _opcode_is("STS", "128"),
    "STL": _opcode_is("STL"),  # local-memory store: a register spill (or a local array)
    "LDL": _opcode_is("LDL"),  # local-memory load: its refill
}


def key_instructions(opcodes: collections.Counter) -> Dict[str, int]:
    """{key instruction name: count} of the key instructions present in a function's opcodes."""
    found = {}
    for name, test in KEY_INSTRUCTIONS.items():
        n = sum(count for opcode, count in opcodes.items() if test(opcode))
        if n:
            found[name] = n
    return found


# ---------------------------------------------------------------------------------------------------------
# Rows of the table


@dataclasses.dataclass
class Row:
    part: str  # "cuda" or "triton"
    module: str  # the cubin (CUDA) or the op module (Triton)
    kernel: str
    launch: str  # Triton: which launch of the op's host code (forward, grad_input, ...)
    config: str  # CUDA: the template arguments besides the dtype; Triton: the autotune config
    dtype: str
    threads: int = 0
    registers: int = 0
    shared: int = 0  # bytes per block: static + dynamic
    local: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    blocks_per_sm: int = 0
    occupancy: float = 0.0
    limiter: str = ""
    instructions: Dict[str, int] = dataclasses.field(default_factory=dict)
    problems: List[str] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def fill(self, threads, res: Resources, opcodes, dynamic_shared=0):
        """Resources, spills, key instructions and occupancy from the tools' output."""
        keys = key_instructions(opcodes)
        self.threads, self.registers, self.local, self.stack = threads, res.registers, res.local, res.stack
        self.shared = res.shared + dynamic_shared
        self.spill_stores, self.spill_loads = keys.get("STL", 0), keys.get("LDL", 0)
        self.instructions = {k: v for k, v in keys.items() if k not in ("STL", "LDL")}
        occ = occupancy(threads, res.registers, self.shared)
        self.blocks_per_sm, self.occupancy, self.limiter = occ.blocks, occ.fraction, occ.limiter

    def check_common(self, allow_spills=False):
        """What every kernel promises: it fits on an SM and does not spill."""
        if self.shared > SM90["max_shared_per_block"]:
            self.problems.append(f"{self.shared} bytes of shared memory per block, more than sm_90's "
                                 f"{SM90['max_shared_per_block']} (227 KB)")
        if self.blocks_per_sm == 0:
            self.problems.append(f"no block fits on an SM ({self.limiter})")
        spills = self.spill_stores + self.spill_loads
        if allow_spills and (spills or self.local):
            self.notes.append("known spills (known_spills of its expectation)")
        if not allow_spills and (spills or self.local):
            self.problems.append(f"spills: {self.spill_stores} STL, {self.spill_loads} LDL, {self.local} bytes of "
                                 f"local memory, {self.stack} bytes of stack")

    def check_instructions(self, required=(), forbidden=()):
        for group in required:
            names = group if isinstance(group, tuple) else (group,)
            if not any(self.instructions.get(n) for n in names):
                self.problems.append(f"lacks {' or '.join(names)}")
        for name in forbidden:
            if self.instructions.get(name):
                self.problems.append(f"uses {name} ({self.instructions[name]}x)")

    def csv_row(self):
        return {
            "part": self.part, "module": self.module, "kernel": self.kernel, "launch": self.launch,
            "config": self.config, "dtype": self.dtype, "threads": self.threads, "registers": self.registers,
            "shared_bytes": self.shared, "local_bytes": self.local, "stack_bytes": self.stack,
            "spill_stores": self.spill_stores, "spill_loads": self.spill_loads,
            "blocks_per_sm": self.blocks_per_sm, "occupancy": f"{self.occupancy:.3f}", "limiter": self.limiter,
            "key_instructions": " ".join(f"{k}:{v}" for k, v in self.instructions.items()),
            "status": "ok" if self.ok else "FAIL", "problems": "; ".join(self.problems), "notes": "; ".join(self.notes),
        }


CSV_FIELDS = list(Row("", "", "", "", "", "").csv_row())

# ---------------------------------------------------------------------------------------------------------
# CUDA: what each kernel of csrc/cuda promises


@dataclasses.dataclass(frozen=True)
class CudaExpectation:
    kernel: str  # the kernel's name (the identifier in the demangled symbol)
    threads: int  # threads per block the host code launches it with
    max_registers: int  # per thread
    max_shared: int  # static shared memory per block, bytes
    dtypes: Optional[Tuple[str, ...]] = None  # the instantiations the entry covers (None: all)
    required: Tuple = ()  # key instructions (KEY_INSTRUCTIONS names; a tuple inside means any of them)
    forbidden: Tuple = ()
    # A spill that is known, reported and not fixed yet (why): the entry's kernels may spill, and the entry
    # fails once none does, so that it is tightened when the spill is gone.
    known_spills: str = ""
    # The dynamic shared memory the host code launches it with, from its template arguments (config, dtype),
    # for the occupancy; None: none.
    dynamic_shared: Optional[object] = None

    def matches(self, kernel, dtype):
        return kernel == self.kernel and (self.dtypes is None or dtype in self.dtypes)


NOT_FLOAT64 = ("float32", "float16", "bfloat16")


def gemm_core_shared(config, dtype):
    """Dynamic shared memory of a gemm_core.cuh kernel (Core::kSmemBytes): Stages k-tiles of 128-byte rows of
    A (BM rows) and B (BN rows), or the epilogue's BM x (BN + one 16-byte chunk) tile if larger."""
    m = re.search(r"Tile<(\d+), (\d+), (\d+), (\d+), (\d+)>", config)
    if not m:
        return 0
    bm, bn, _, _, stages = (int(v) for v in m.groups())
    elem = 2 if dtype in ("float16", "bfloat16") else 4
    return max(stages * (bm + bn) * 128, bm * (bn + 16 // elem) * elem)

# Today's kernels are simple CUDA-core kernels: no tensor cores, no async copies, no vector loads; what they
# promise is no spills, a register budget per design, and shared memory only where they stage data. The
# tensor-core kernels add entries that require HMMA/HGMMA, LDGSTS/UTMALDG and LDSM; vectorised bandwidth
# kernels require LDG.128 / STG.128.
CUDA_EXPECTATIONS = (
    # linear_act_cuda.cu: 64x64 tile, 16x16 threads with a 4x4 micro-tile of accumulators, K slices of 16
    # staged in shared memory as opmath values. At most 128 registers keeps 2 blocks of 256 per SM.
    CudaExpectation("gemm_bias_act_kernel", threads=256, max_registers=128, max_shared=24 * 1024,
                    dtypes=NOT_FLOAT64),
    CudaExpectation("gemm_bias_act_kernel", threads=256, max_registers=128, max_shared=24 * 1024,
                    dtypes=("float64",),
                    known_spills="ptxas spills 1-2 registers (STL/LDL, 8 bytes of stack, a refill inside the K "
                                 "loop) in the float64 instantiations of every activation but gelu; float64 "
                                 "is the gradcheck dtype, not a speed path; fixing it means editing "
                                 "csrc/cuda/linear_act_cuda.cu"),
    # conv2d_kernels.cuh, direct kernels (float64, float32 without TF32, depthwise): one output (or
    # input-gradient) element per thread in a grid-stride loop; grad_weight reduces one weight element per block.
    CudaExpectation("conv2d_direct_forward_kernel", threads=256, max_registers=128, max_shared=0),
    CudaExpectation("conv2d_direct_grad_input_kernel", threads=256, max_registers=128, max_shared=0),
    CudaExpectation("conv2d_direct_grad_weight_kernel", threads=256, max_registers=128, max_shared=4 * 1024),
    # conv2d_kernels.cuh, the implicit GEMMs on gemm_core.cuh (4 warps per CTA, as linear_act's): the im2col
    # gather of A and the dense B staged with cp.async (LDGSTS), K-major fragments from ldmatrix, mma.sync.
    CudaExpectation("conv2d_forward_kernel", threads=128, max_registers=255, max_shared=0,
                    required=("HMMA", "LDGSTS", "LDSM"), dynamic_shared=gemm_core_shared),
    CudaExpectation("conv2d_grad_input_kernel", threads=128, max_registers=255, max_shared=0,
                    required=("HMMA", "LDGSTS", "LDSM"), dynamic_shared=gemm_core_shared),
    # The weight gradient: both operands MN-major (ldmatrix.trans for 16-bit, shared loads for TF32); its
    # element gathers of 16-bit types are plain loads (cp.async has no 2-byte form), so only its 16-byte and
    # float32 instantiations hold LDGSTS.
    CudaExpectation("conv2d_grad_weight_kernel", threads=128, max_registers=255, max_shared=0,
                    dtypes=("float16", "bfloat16"), required=("HMMA", "LDSM"), dynamic_shared=gemm_core_shared),
    CudaExpectation("conv2d_grad_weight_kernel", threads=128, max_registers=255, max_shared=0,
                    dtypes=("float32",), required=("HMMA", "LDGSTS"), dynamic_shared=gemm_core_shared),
    CudaExpectation("conv2d_grad_weight_reduce_kernel", threads=256, max_registers=64, max_shared=0),
    # conv2d_maxpool_kernels.cuh: the fused block's forward is conv2d's implicit GEMM (the same core, the same
    # gathers) whose epilogue pools in shared memory; the direct forward computes a window's conv values per
    # thread (conv2d's direct kernel, one window at a time); the backward's routing kernel is a gather over
    # the windows of each conv position (a bandwidth kernel, as max_pool2d's backward).
    CudaExpectation("conv2d_maxpool_forward_kernel", threads=128, max_registers=255, max_shared=0,
                    required=("HMMA", "LDGSTS", "LDSM"), dynamic_shared=gemm_core_shared),
    CudaExpectation("conv2d_maxpool_direct_forward_kernel", threads=256, max_registers=128, max_shared=0),
    # Its 70-80 registers (three blocks of 256 per SM) are the int64 coordinates and offsets of a conv position
    # and of each window that may hold it; max_pool2d's backward gathers over one tensor and fits in 64.
    CudaExpectation("conv2d_maxpool_route_kernel", threads=256, max_registers=80, max_shared=0),
    # max_pool2d_kernels.cuh: bandwidth kernels, one output (input) element per thread. At most 64 registers
    # keeps 4 blocks of 256 (half the SM's warps) in flight to cover memory latency.
    CudaExpectation("max_pool2d_forward_kernel", threads=256, max_registers=64, max_shared=0),
    CudaExpectation("max_pool2d_backward_kernel", threads=256, max_registers=64, max_shared=0),
    # The 16-byte kernels: each thread keeps one running max (and index) per lane, so up to 8 lanes of
    # float + int64 state; 128 registers still keep 2 blocks of 256 per SM.
    CudaExpectation("max_pool2d_forward_nhwc_vec_kernel", threads=256, max_registers=128, max_shared=0,
                    required=("LDG.128", "STG.128")),
    CudaExpectation("max_pool2d_forward_nchw_vec_kernel", threads=256, max_registers=128, max_shared=0,
                    required=("STG.128",)),
    CudaExpectation("max_pool2d_backward_nhwc_vec_kernel", threads=256, max_registers=128, max_shared=0,
                    required=("LDG.128", "STG.128")),
    # linear_act_cuda.cu's tensor-core GEMMs on gemm_core.cuh: 4 warps per CTA (warp tiles of 64x64, 32x32 or
    # 16x32 accumulators), mma.sync on 16-bit or TF32 operands, 16-byte cp.async staging, ldmatrix fragments;
    # TF32 operands stored MN-major (both of grad_weight's) come from shared loads instead. 255 registers at
    # 128 threads still fit two CTAs per SM, which the 96 KB of shared memory of the large tile allows too.
    CudaExpectation("linear_act_forward_kernel", threads=128, max_registers=255, max_shared=0,
                    dtypes=("float16", "bfloat16"), required=("HMMA", "LDGSTS", "LDSM"),
                    dynamic_shared=gemm_core_shared),
    CudaExpectation("linear_act_forward_kernel", threads=128, max_registers=255, max_shared=0,
                    dtypes=("float32",), required=("HMMA", "LDGSTS", "LDSM"), dynamic_shared=gemm_core_shared,
                    known_spills="in the 64x64 tile with sigmoid, tanh or mish, ptxas keeps one 4-byte value on "
                                 "the stack across the main loop (one STL before it, one LDL in the epilogue, "
                                 "80 registers in use): outside the loop, so it costs nothing per k-tile"),
    CudaExpectation("linear_act_grad_input_kernel", threads=128, max_registers=255, max_shared=0,
                    required=("HMMA", "LDGSTS", "LDSM"), dynamic_shared=gemm_core_shared),
    CudaExpectation("linear_act_grad_weight_kernel", threads=128, max_registers=255, max_shared=0,
                    dtypes=("float16", "bfloat16"), required=("HMMA", "LDGSTS", "LDSM"),
                    dynamic_shared=gemm_core_shared),
    CudaExpectation("linear_act_grad_weight_kernel", threads=128, max_registers=255, max_shared=0,
                    dtypes=("float32",), required=("HMMA", "LDGSTS"), dynamic_shared=gemm_core_shared),
    # gemm_core.cuh: the split-K reduction, an elementwise grid-stride kernel.
    CudaExpectation("split_k_reduce_kernel", threads=256, max_registers=64, max_shared=0),
    # ptx_probe_cuda.cu: one-warp kernels that run each PTX wrapper once (tests/test_ptx.py); each must
    # contain the instruction it probes.
    CudaExpectation("ldmatrix_probe_kernel", threads=32, max_registers=64, max_shared=0, required=("LDSM",)),
    CudaExpectation("mma_probe_kernel", threads=32, max_registers=64, max_shared=0, required=("HMMA",)),
    CudaExpectation("cp_async_probe_kernel", threads=32, max_registers=64, max_shared=0, required=("LDGSTS",)),
    CudaExpectation("warp_probe_kernel", threads=32, max_registers=64, max_shared=0),
    CudaExpectation("to_tf32_probe_kernel", threads=256, max_registers=64, max_shared=0),
    # cuda_utils.cuh (instantiated by every .cu file): elementwise activation gradient and the per-channel
    # block reduction (kThreads accumulators in shared memory).
    CudaExpectation("activation_grad_kernel", threads=256, max_registers=64, max_shared=0),
    CudaExpectation("channel_sum_kernel", threads=256, max_registers=64, max_shared=4 * 1024),
)

# C++ types of the kernels' first template argument -> dtype names.
_CXX_DTYPES = {"float": "float32", "double": "float64", "c10::Half": "float16", "c10::BFloat16": "bfloat16"}


def _split_top(text, sep=","):
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def split_kernel_name(demangled: str, activations=None) -> Tuple[str, str, str]:
    """(kernel, dtype, config) of a demangled symbol such as
    `void ns::(anonymous namespace)::gemm_bias_act_kernel<float, (dlkernels::Activation)1>(float const*, ...)`:
    ("gemm_bias_act_kernel", "float32", "act=relu"). `activations` names the Activation enumerators."""
    text = demangled.replace("(anonymous namespace)", "anon")
    text = re.sub(r"^void\s+", "", text)
    cut = min((i for i in (text.find("<"), text.find("(")) if i >= 0), default=len(text))
    kernel = text[:cut].split("::")[-1]
    args = []
    if cut < len(text) and text[cut] == "<":
        depth = 0
        for i in range(cut, len(text)):
            depth += {"<": 1, ">": -1}.get(text[i], 0)
            if depth == 0:
                args = _split_top(text[cut + 1:i])
                break
    dtype = ""
    if args and args[0] in _CXX_DTYPES:
        dtype = _CXX_DTYPES[args.pop(0)]
    config = []
    for arg in args:
        m = re.fullmatch(r"\(dlkernels::Activation\)(\d+)", arg)
        if m:
            index = int(m.group(1))
            arg = "act=" + (activations[index] if activations and index < len(activations) else str(index))
        config.append(arg)
    return kernel, dtype, ",".join(config)


def _activation_names():
    try:
        from dlkernels.contract import ACTIVATIONS  # the order of csrc/common/activation.h's enum

        return list(ACTIVATIONS)
    except ImportError:
        return None


def find_extension() -> Optional[str]:
    """dlkernels/_C*.so of this checkout, else of the installed package (without importing it)."""
    candidates = sorted(glob.glob(os.path.join(ROOT, "dlkernels", "_C*.so")))
    if not candidates:
        import importlib.util

        spec = importlib.util.find_spec("dlkernels")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates += sorted(glob.glob(os.path.join(folder, "_C*.so")))
    return candidates[0] if candidates else None


def list_cubins(tools: Tools, so: str) -> List[Tuple[str, str]]:
    """[(name, arch)] of the ELF (cubin) images embedded in `so`, e.g. ("linear_act_cuda.sm_90.cubin", "sm_90")."""
    out = []
    for line in _run([tools.cuobjdump, "--list-elf", so]).splitlines():
        m = re.search(r"ELF file\s+\d+:\s*(\S+)", line)
        if m:
            arch = re.search(r"\.(sm_\d+[a-z]?)\.", m.group(1))
            out.append((m.group(1), arch.group(1) if arch else ""))
    return out


def audit_cuda(so: str, tools: Optional[Tools] = None, expectations=CUDA_EXPECTATIONS, jobs: int = 2) -> List[Row]:
    """One row per kernel of every sm_90 cubin in `so`, checked against `expectations`. Raises when `so`
    holds no sm_90 code."""
    tools = tools or Tools()
    cubins = [name for name, arch in list_cubins(tools, so) if arch == "sm_90"]
    if not cubins:
        raise RuntimeError(f"{so} holds no sm_90 code (cuobjdump --list-elf lists no *.sm_90.cubin)")
    with tempfile.TemporaryDirectory(prefix="dlkernels-audit-") as tmp:
        _run([tools.cuobjdump, "-xelf", "all", os.path.abspath(so)], cwd=tmp)

        def read(name):
            path = os.path.join(tmp, name)
            return name, tools.resources(path), tools.launch_bounds(path), tools.sass(path)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            images = list(pool.map(read, cubins))
    names = tools.demangle(sorted({f for _, res, _, _ in images for f in res}))
    activations = _activation_names()
    parsed = []
    for cubin, res, bounds, sass in images:
        module = cubin.split(".")[0]
        for symbol, resources in sorted(res.items(), key=lambda kv: names[kv[0]]):
            kernel, dtype, config = split_kernel_name(names[symbol], activations)
            parsed.append((module, symbol, kernel, dtype, config, resources, bounds.get(symbol), sass.get(symbol)))
    return check_cuda(parsed, expectations)


def check_cuda(parsed, expectations=CUDA_EXPECTATIONS) -> List[Row]:
    """Rows for parsed kernels [(module, symbol, kernel, dtype, config, Resources, launch bounds or None,
    opcodes or None)] checked against `expectations`. An entry that matches no kernel adds a failing row."""
    rows, used, spilled = [], collections.Counter(), collections.Counter()
    # Shared memory a module reserves for every one of its blocks (sm_90 modules that use the asynchronous
    # copy and matrix-load instructions report 1 KB for each kernel, none of it declared by the kernel): the
    # smallest of its kernels' figures. It counts for occupancy, not against a kernel's own budget.
    reserved = collections.defaultdict(lambda: 1 << 30)
    for module, _, _, _, _, res, _, _ in parsed:
        reserved[module] = min(reserved[module], res.shared)
    for module, symbol, kernel, dtype, config, res, bounds, opcodes in parsed:
        row = Row("cuda", module, kernel, "", config, dtype)
        entries = [e for e in expectations if e.matches(kernel, dtype)]
        bound_threads = math.prod(bounds) if bounds else None
        threads = bound_threads or (entries[0].threads if len(entries) == 1 else 0)
        dynamic = entries[0].dynamic_shared(config, dtype) if len(entries) == 1 and entries[0].dynamic_shared else 0
        row.fill(threads, res, opcodes or collections.Counter(), dynamic_shared=dynamic)
        if opcodes is None:
            row.problems.append(f"no SASS found for {symbol}")
        if len(entries) != 1:
            row.problems.append("no entry in CUDA_EXPECTATIONS" if not entries else
                                f"{len(entries)} entries of CUDA_EXPECTATIONS match")
            row.check_common()
            rows.append(row)
            continue
        entry = entries[0]
        used[entry] += 1
        if row.spill_stores + row.spill_loads + row.local:
            spilled[entry] += 1
        row.check_common(allow_spills=bool(entry.known_spills))
        if bound_threads is not None and bound_threads < entry.threads:
            row.problems.append(f"launched with {entry.threads} threads but its launch bounds allow {bound_threads}")
        if row.registers > entry.max_registers:
            row.problems.append(f"{row.registers} registers per thread, more than its budget of {entry.max_registers}")
        if res.shared - reserved[module] > entry.max_shared:
            row.problems.append(f"{res.shared - reserved[module]} bytes of static shared memory, more than its "
                                f"{entry.max_shared}")
        row.check_instructions(entry.required, entry.forbidden)
        rows.append(row)
    for entry in expectations:
        if not used[entry]:
            rows.append(Row("cuda", "", entry.kernel, "", "", ",".join(entry.dtypes or ()),
                            problems=["CUDA_EXPECTATIONS entry matches no kernel in the binary"]))
        elif entry.known_spills and not spilled[entry]:
            rows.append(Row("cuda", "", entry.kernel, "", "", ",".join(entry.dtypes or ()),
                            problems=["known_spills is set but none of its kernels spills any more: clear it"]))
    return rows


# ---------------------------------------------------------------------------------------------------------
# Triton: what each kernel promises, and the launches it is compiled for


@dataclasses.dataclass(frozen=True)
class TritonExpectation:
    # The kernel's dots run on tensor cores whenever their inputs allow (16-bit, or float32 with TF32):
    # wgmma (HGMMA) for tiles of 64 rows or more per warpgroup, mma.sync (HMMA) below that.
    tensor_cores: bool = False
    # Its main loop is a software pipeline of async copies (LDGSTS / UTMALDG) when num_stages > 1.
    pipelined: bool = False
    # {dtype: why} spills that are known, reported and not fixed yet: rows of that dtype may spill, and a
    # full audit fails once none does, so that the entry is tightened when they are gone.
    known_spills: Tuple[Tuple[str, str], ...] = ()


_FP64 = ("float64", "float64 is the gradcheck dtype (tiny shapes), not a speed path: the conv FMA dots at the default "
                   "config (what 8-byte inputs take) and the pooling gather at BLOCK=1024 with 8 warps spill a few "
                   "registers")
_CONV_FMA = ("float32-ieee", "with TF32 off the FMA dot holds the per-row int64 addresses of the implicit GEMM next "
                             "to its operands and ptxas spills a few registers in most configs (K slices of 16 or a "
                             "register cap of 255 do not remove them); torch's default for convolutions is TF32, "
                             "which does not spill. Fixing it means restructuring the kernel's address math")
TRITON_EXPECTATIONS = {
    "_linear_act_gemm_kernel": TritonExpectation(tensor_cores=True, pipelined=True),
    # The conv reductions (nested loops over kh, kw and channel slices) are pipelined with cp.async too.
    "_conv2d_forward_kernel": TritonExpectation(tensor_cores=True, pipelined=True, known_spills=(_CONV_FMA, _FP64)),
    "_conv2d_grad_input_kernel": TritonExpectation(tensor_cores=True, pipelined=True,
                                                   known_spills=(_CONV_FMA, _FP64)),
    "_conv2d_grad_weight_kernel": TritonExpectation(tensor_cores=True, pipelined=True, known_spills=(_CONV_FMA,)),
    # Memory-bound gathers: no dot, no staging.
    "_max_pool2d_forward_kernel": TritonExpectation(),
    "_max_pool2d_grad_input_kernel": TritonExpectation(known_spills=(_FP64,)),
}

# The dtypes the Triton kernels are compiled for. float32 runs with torch's default TF32 flags: off for
# matmuls (linear_act: exact products, the FMA path of tl.dot), on for cuDNN (conv2d: TF32 tensor cores);
# float32-ieee has both off, float32-tf32 both on (torch.backends.cuda.matmul / cudnn.allow_tf32).
TRITON_DTYPES = ("float32", "float32-ieee", "float32-tf32", "bfloat16", "float16", "float64")
# full: every launch x config x dtype. ci: every config of each kernel's first launch in float32 (the largest
# tiles in bytes, with torch's default flags) and bfloat16 (the tensor-core path); the other launches, float16
# (bfloat16's sizes and instructions) and float64 at the default config.
SCOPES = ("full", "ci")
CI_DTYPES = ("float32", "bfloat16", "float16", "float64")
CI_ALL_CONFIGS = ("float32", "bfloat16")


def _torch_dtype(name):
    import torch

    return getattr(torch, name.split("-")[0])


def _meta(*shape, dtype, channels_last=False):
    import torch

    t = torch.empty(*shape, dtype=dtype, device="meta")
    return t.to(memory_format=torch.channels_last) if channels_last else t


def _linear_step(dtype):
    """A Linear+ReLU training step (M=512 rows, 1024 -> 1024): forward, grad_input (dz formed on load from
    the saved output), grad_weight with grad_bias."""
    from dlkernels.triton_ops import linear_act as m

    x, w, b = _meta(512, 1024, dtype=dtype), _meta(1024, 1024, dtype=dtype), _meta(1024, dtype=dtype)
    y = m.linear_act_forward._init_fn(x, w, b, "relu", 0.0, 0.0)
    m.linear_act_backward._init_fn(y, x, w, b, y, "relu", 0.0, 0.0, [True, True, True])


def _conv_step(dtype):
    """A Conv2d+ReLU training step of a ResNet stage (32x64x56x56, 64 3x3 filters, padding 1), channels_last
    (the layout tensor-core convolutions run in)."""
    from dlkernels.triton_ops import conv2d as m

    x = _meta(32, 64, 56, 56, dtype=dtype, channels_last=True)
    w = _meta(64, 64, 3, 3, dtype=dtype, channels_last=True)
    b = _meta(64, dtype=dtype)
    y = m.conv2d_forward._init_fn(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", 0.0, 0.0)
    m.conv2d_backward._init_fn(y, x, w, b, y, [1, 1], [1, 1], [1, 1], 1, "relu", 0.0, 0.0, [True, True, True])


def _pool_step(dtype):
    """A MaxPool2d 3x3 / stride 2 / padding 1 training step (32x64x112x112, NCHW): forward with indices, and
    its backward."""
    from dlkernels.triton_ops import max_pool2d as m

    x = _meta(32, 64, 112, 112, dtype=dtype)
    window = ([3, 3], [2, 2], [1, 1], [1, 1], False)
    y, indices = m.max_pool2d_with_indices_forward._init_fn(x, *window)
    m.max_pool2d_backward._init_fn(y, x, indices, *window)


# (op module, the step, the name of each launch it makes, in order)
LAUNCH_CASES = (
    ("linear_act", _linear_step, ("forward", "grad_input", "grad_weight")),
    ("conv2d", _conv_step, ("forward", "grad_input", "grad_weight")),
    ("max_pool2d", _pool_step, ("forward", "grad_input")),
)
# Host code that decides by the tensors' device: it is shown CUDA tensors' device, as on the GPU.
DEVICE_DEPENDENT_HOST_CODE = (("conv2d", "_split_p"),)


class _ArgStandIn:
    """What Triton's binder sees of a tensor argument: its dtype and its address (allocations are 256-byte
    aligned on CUDA, so a view's alignment is that of its offset)."""

    def __init__(self, tensor):
        self.dtype = tensor.dtype
        self._ptr = 256 * 1024 + tensor.storage_offset() * tensor.element_size()

    def data_ptr(self):
        return self._ptr


@dataclasses.dataclass
class Launch:
    module: str
    kernel: str  # attribute name of the kernel in its module
    role: str
    args: tuple
    kwargs: dict


def _triton_modules():
    import importlib

    return {name: importlib.import_module(f"dlkernels.triton_ops.{name}") for name, _, _ in LAUNCH_CASES}


def triton_kernels():
    """{(module, attribute): kernel object} of every Triton kernel in the op modules: the autotuned ones and
    any plain @triton.jit function named *_kernel."""
    import triton
    from triton.runtime.autotuner import Autotuner

    found = {}
    for module_name, module in _triton_modules().items():
        for attr, obj in vars(module).items():
            if isinstance(obj, Autotuner) or (isinstance(obj, triton.runtime.JITFunction) and attr.endswith("_kernel")):
                found[(module_name, attr)] = obj
    return found


def capture_launches(dtype_name: str) -> List[Launch]:
    """Runs every LAUNCH_CASES step on meta tensors of `dtype_name` with the kernels' launches intercepted."""
    import torch

    dtype = _torch_dtype(dtype_name)
    modules = _triton_modules()
    kernels = triton_kernels()
    launches: List[Launch] = []
    saved = []

    class _Cuda:
        def __init__(self, tensor):
            self._tensor = tensor
            self.device = torch.device("cuda")

        def __getattr__(self, name):
            return getattr(self._tensor, name)

    try:
        for (module_name, attr), kernel in kernels.items():
            def record(*args, _key=(module_name, attr), **kwargs):
                kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
                args = tuple(_ArgStandIn(a) if isinstance(a, torch.Tensor) else a for a in args)
                launches.append(Launch(_key[0], _key[1], "", args, kwargs))

            saved.append((kernel, "run", kernel.__dict__.get("run")))
            kernel.run = record
        for module_name, function in DEVICE_DEPENDENT_HOST_CODE:
            module = modules[module_name]
            original = getattr(module, function)
            saved.append((module, function, original))
            setattr(module, function, lambda x, *a, _f=original: _f(_Cuda(x), *a))
        # Flags that torch holds behind __getattr__ are set and restored by hand.
        flags = {torch.backends.cuda.matmul: False, torch.backends.cudnn: True}  # torch's defaults
        for flag in flags:
            saved.append((flag, "allow_tf32", flag.allow_tf32))
            flag.allow_tf32 = {"-ieee": False, "-tf32": True}.get(dtype_name[len("float32"):], flags[flag])
        for module_name, step, roles in LAUNCH_CASES:
            first = len(launches)
            step(dtype)
            made = launches[first:]
            if len(made) != len(roles):
                raise RuntimeError(f"the {module_name} step made {len(made)} launches, LAUNCH_CASES names {roles}")
            for launch, role in zip(made, roles):
                launch.role = role
    finally:
        for obj, name, value in reversed(saved):
            if value is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, value)
    return launches


def _config_key(cfg):
    if cfg is None:
        return None
    return (tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages, getattr(cfg, "num_ctas", 1),
            getattr(cfg, "maxnreg", None))


def launch_configs(launch: Launch):
    """[(config or None, is_default)] that the autotuner may run for this launch: the kernel's config list as
    its own pruning leaves it for these arguments (configs per element size), and its module's DEFAULT_CONFIG
    (what runs with DLKERNELS_TRITON_AUTOTUNE=0)."""
    from triton.runtime.autotuner import Autotuner

    kernel = triton_kernels()[(launch.module, launch.kernel)]
    if not isinstance(kernel, Autotuner):
        return [(None, True)]
    configs = list(kernel.configs)
    if kernel.early_config_prune:
        configs = kernel.early_config_prune(configs, dict(zip(kernel.arg_names, launch.args)), **launch.kwargs)
    default = getattr(_triton_modules()[launch.module], "DEFAULT_CONFIG", None)
    out, seen = [], set()
    for cfg in configs + ([default] if default is not None else []):
        if _config_key(cfg) not in seen:
            seen.add(_config_key(cfg))
            out.append((cfg, _config_key(cfg) == _config_key(default)))
    return out


def config_label(cfg, is_default):
    if cfg is None:
        return "launch"
    names = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K", "GROUP_M": "G", "BLOCK": "B"}
    parts = [f"{names.get(k, k)}{v}" for k, v in cfg.kwargs.items()]
    parts += [f"w{cfg.num_warps}", f"s{cfg.num_stages}"]
    if getattr(cfg, "maxnreg", None):
        parts.append(f"r{cfg.maxnreg}")
    return " ".join(parts) + (" default" if is_default else "")


@dataclasses.dataclass(frozen=True)
class TritonJob:
    dtype: str
    launch_index: int
    config_index: int


def triton_jobs(scope: str, dtypes=TRITON_DTYPES, kernels=None) -> List[Tuple[TritonJob, Launch, str, bool]]:
    """The compiles of a scope: [(job, launch, config label, is default)]; `kernels` keeps only the kernels
    whose names contain one of its strings."""
    jobs, first_launch = [], {}
    for dtype in dtypes:
        for li, launch in enumerate(capture_launches(dtype)):
            key = (launch.module, launch.kernel)
            if kernels and not any(k in launch.kernel for k in kernels):
                continue
            primary = first_launch.setdefault(key, launch.role) == launch.role
            for ci, (cfg, is_default) in enumerate(launch_configs(launch)):
                if scope == "full":
                    wanted = True
                else:
                    wanted = is_default or (primary and dtype in CI_ALL_CONFIGS)
                if wanted:
                    jobs.append((TritonJob(dtype, li, ci), launch, config_label(cfg, is_default), is_default))
    return jobs


_WORKER = {}


def _worker_init():
    """This checkout's dlkernels (not another installed copy), with the Triton interpreter off and the autotuned
    config lists."""
    if os.path.isdir(os.path.join(ROOT, "dlkernels")) and sys.path[:1] != [ROOT]:
        sys.path.insert(0, ROOT)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["DLKERNELS_TRITON_AUTOTUNE"] = "1"


def compile_job(job: TritonJob) -> dict:
    """Compiles one launch x config x dtype for sm_90 and reads its machine code. Runs in a worker process."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import create_function_from_signature

    if job.dtype not in _WORKER:
        _WORKER[job.dtype] = capture_launches(job.dtype)
    launch = _WORKER[job.dtype][job.launch_index]
    kernel = triton_kernels()[(launch.module, launch.kernel)]
    cfg, _ = launch_configs(launch)[job.config_index]
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    # What JITFunction.run does on a launch: bind, specialise (ints equal to 1 become constexprs, 16-aligned
    # pointers and 16-divisible ints get tt.divisibility), then compile for the target.
    kwargs = dict(launch.kwargs, **(cfg.all_kwargs() if cfg is not None else {}))
    kwargs.setdefault("debug", False)
    if not hasattr(fn, "_pack_args"):
        raise RuntimeError(f"Triton {triton.__version__} lacks JITFunction._pack_args, which the audit uses to "
                           "specialise a launch as JITFunction.run does (written against Triton 3.8)")
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    result = {"constexprs": {fn.arg_names[k[0]]: repr(v) for k, v in constexprs.items() if len(k) == 1}}
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    except Exception as error:  # a config that does not compile is a finding, reported in its row
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        result["error"] = f"does not compile for sm_90: {type(error).__name__}: {first_line}"
        return result
    if "tools" not in _WORKER:
        _WORKER["tools"] = Tools()
    tools = _WORKER["tools"]
    with tempfile.TemporaryDirectory(prefix="dlkernels-audit-") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        res = tools.resources(path)
        sass = tools.sass(path)
        bounds = tools.launch_bounds(path)
    name = compiled.metadata.name
    if name not in res or name not in sass:
        result["error"] = f"cuobjdump/nvdisasm show no function {name} in the compiled cubin"
        return result
    result.update(
        name=name, resources=dataclasses.asdict(res[name]), opcodes=dict(sass[name]),
        bounds=bounds.get(name), num_warps=compiled.metadata.num_warps, num_stages=options.num_stages,
        dynamic_shared=compiled.metadata.shared, wgmma_ptx="wgmma.mma_async" in compiled.asm["ptx"],
    )
    return result


def check_triton(job: TritonJob, launch: Launch, label: str, result: dict,
                 expectations=TRITON_EXPECTATIONS) -> Row:
    row = Row("triton", launch.module, launch.kernel, launch.role, label, job.dtype)
    if "error" in result:
        row.problems.append(result["error"])
        return row
    threads = result["num_warps"] * 32
    row.fill(threads, Resources(**result["resources"]), collections.Counter(result["opcodes"]),
             dynamic_shared=result["dynamic_shared"])
    entry = expectations.get(launch.kernel)
    row.check_common(allow_spills=entry is not None and job.dtype in dict(entry.known_spills))
    if entry is None:
        row.problems.append("no entry in TRITON_EXPECTATIONS")
        return row
    constexprs = result["constexprs"]
    has_dot = constexprs.get("DOT", "True") == "True"
    tensor_core_inputs = job.dtype in ("bfloat16", "float16") or constexprs.get("PRECISION") == "'tf32'"
    if entry.tensor_cores and has_dot and tensor_core_inputs:
        rows_per_warpgroup = int(constexprs.get("BLOCK_M", "0"))
        if rows_per_warpgroup >= 64 and result["num_warps"] % 4 == 0:
            row.check_instructions(required=("HGMMA",))
            if not result["wgmma_ptx"]:
                row.problems.append("no wgmma.mma_async in the PTX")
        else:
            row.check_instructions(required=(("HMMA", "HGMMA"),))
    if entry.pipelined and has_dot and result["num_stages"] > 1:
        row.check_instructions(required=(("LDGSTS", "UTMALDG"),))
    return row


def audit_triton(scope: str = "full", dtypes=TRITON_DTYPES, jobs: int = 2, progress=None, kernels=None) -> List[Row]:
    """Compiles the scope's Triton kernels for sm_90 in `jobs` worker processes and checks them. Must run
    in a process where the Triton interpreter is off (TRITON_INTERPRET unset before triton was imported)."""
    _worker_init()
    from dlkernels.triton_ops import INTERPRET

    if INTERPRET:
        raise RuntimeError("the Triton interpreter is on in this process (TRITON_INTERPRET=1 was set when triton "
                           "was imported): compile in a fresh process (python3 scripts/static_audit.py)")
    planned = triton_jobs(scope, dtypes, kernels)
    rows: List[Optional[Row]] = [None] * len(planned)
    context = multiprocessing.get_context("spawn")
    started = time.time()
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context,
                                                initializer=_worker_init) as pool:
        futures = {pool.submit(compile_job, job): i for i, (job, _, _, _) in enumerate(planned)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            i = futures[future]
            job, launch, label, _ = planned[i]
            rows[i] = check_triton(job, launch, label, future.result())
            if progress:
                progress(f"[{done}/{len(planned)} {time.time() - started:.0f}s] {launch.kernel} {launch.role} "
                         f"{label} {job.dtype}: {'ok' if rows[i].ok else 'FAIL'}")
    rows = [r for r in rows if r is not None]
    launched = {(r.module, r.kernel) for r in rows}
    for module_name, attr in triton_kernels():
        if not kernels and (module_name, attr) not in launched:
            rows.append(Row("triton", module_name, attr, "", "", "",
                            problems=["no LAUNCH_CASES step launches this kernel: it is not audited"]))
    for name, entry in TRITON_EXPECTATIONS.items():
        if name not in {k for _, k in triton_kernels()}:
            rows.append(Row("triton", "", name, "", "", "",
                            problems=["TRITON_EXPECTATIONS entry matches no kernel"]))
        for dtype, _ in entry.known_spills:
            mine = [r for r in rows if r.kernel == name and r.dtype == dtype]
            # Only a full audit compiles every config, so only it can tell that the spills are gone.
            if scope == "full" and mine and not any(r.spill_stores + r.spill_loads + r.local for r in mine):
                rows.append(Row("triton", "", name, "", "", dtype, problems=[
                    f"known_spills names {dtype} but no {dtype} config of the kernel spills any more: clear it"]))
    return rows


# ---------------------------------------------------------------------------------------------------------
# Output


def write_csv(rows: List[Row], path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.csv_row())


def _range(values):
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def format_table(rows: List[Row]) -> str:
    """The table for the terminal: the Triton rows one by one; the CUDA rows grouped per cubin, kernel and
    dtype (ranges over the other template arguments; the CSV has each instantiation); the failures in full."""
    out = io.StringIO()
    cuda = [r for r in rows if r.part == "cuda" and r.module]
    if cuda:
        out.write("CUDA kernels (sm_90 cubins of the extension; ranges over the instantiations)\n")
        out.write(f"{'kernel':<30} {'cubin':<16} {'inst':>4} {'dtype':<9} {'thr':>4} {'regs':>6} {'shared':>11} "
                  f"{'spills':>6} {'occ':>8}  key instructions / status\n")
        groups = collections.OrderedDict()
        rank = {d: i for i, d in enumerate(("float32", "float16", "bfloat16", "float64"))}
        for r in sorted(cuda, key=lambda r: (r.module, r.kernel, rank.get(r.dtype, 9))):
            groups.setdefault((r.module, r.kernel, r.dtype), []).append(r)
        for (module, kernel, dtype), group in groups.items():
            keys = sorted({k for r in group for k in r.instructions})
            failed = sum(not r.ok for r in group)
            known = sum(bool(r.notes) for r in group)
            status = f"{failed} FAIL" if failed else f"ok ({known} known spills)" if known else "ok"
            occ = _range([round(100 * r.occupancy) for r in group])
            out.write(f"{kernel:<30} {module:<16} {len(group):>4} {dtype:<9} {_range([r.threads for r in group]):>4} "
                      f"{_range([r.registers for r in group]):>6} {_range([r.shared for r in group]):>11} "
                      f"{_range([r.spill_stores + r.spill_loads for r in group]):>6} {occ + '%':>8}  "
                      f"{' '.join(keys) or '-'} {status}\n")
    header = f"{'kernel':<30} {'launch':<11} {'config':<30} {'dtype':<12} {'thr':>4} {'regs':>4} {'shared':>6} " \
             f"{'spills':>6} {'occ':>4}  key instructions / status"
    triton_rows = [r for r in rows if r.part == "triton" and r.config]
    if triton_rows:
        out.write("\nTriton kernels (compiled for sm_90)\n" + header + "\n")
        for r in triton_rows:
            keys = " ".join(f"{k}:{v}" for k, v in r.instructions.items())
            out.write(f"{r.kernel:<30} {r.launch:<11} {r.config:<30} {r.dtype:<12} {r.threads:>4} {r.registers:>4} "
                      f"{r.shared:>6} {r.spill_stores + r.spill_loads:>6} {round(100 * r.occupancy):>3}%  "
                      f"{keys or '-'} {'FAIL' if not r.ok else 'ok (known spills)' if r.notes else 'ok'}\n")
    failures = [r for r in rows if not r.ok]
    out.write(f"\n{len(rows)} rows, {len(failures)} failing\n")
    for r in failures:
        what = " ".join(x for x in (r.part, r.module, r.kernel, r.launch, r.config, r.dtype) if x)
        out.write(f"FAIL {what}: {'; '.join(r.problems)}\n")
    return out.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--so", help="the extension to audit (default: dlkernels/_C*.so)")
    parser.add_argument("--scope", choices=SCOPES, default="full", help="which Triton compiles (default: full)")
    parser.add_argument("--dtypes", help=f"Triton dtypes, comma-separated (default: {','.join(TRITON_DTYPES)}; "
                                         f"with --scope ci: {','.join(CI_DTYPES)})")
    parser.add_argument("--csv", default=DEFAULT_CSV, help="where the table goes (default: %(default)s)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--kernels", help="only the Triton kernels whose names contain one of these (comma-separated)")
    parser.add_argument("--skip-cuda", action="store_true")
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    # Triton compiles only with the interpreter off, and the config lists are the autotuned ones.
    _worker_init()
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))

    rows: List[Row] = []
    configs = collections.defaultdict(lambda: collections.defaultdict(list))
    if not args.skip_cuda:
        so = args.so or find_extension()
        if not so:
            print("no dlkernels/_C*.so found: build the extension or pass --so", file=sys.stderr)
            return 2
        rows += audit_cuda(so, jobs=args.jobs)
    if not args.skip_triton:
        dtypes = tuple(d for d in (args.dtypes or "").split(",") if d) or (
            CI_DTYPES if args.scope == "ci" else TRITON_DTYPES)
        kernels = tuple(k for k in (args.kernels or "").split(",") if k)
        rows += audit_triton(args.scope, dtypes, jobs=args.jobs, progress=progress, kernels=kernels)
        for job, launch, label, _ in triton_jobs("full", dtypes, kernels):
            if label not in configs[launch.kernel][job.dtype]:
                configs[launch.kernel][job.dtype].append(label)
    write_csv(rows, args.csv)
    if args.json:
        with open(args.json, "w") as f:
            # configs: every config each Triton kernel may run with, per dtype (what a full audit compiles)
            json.dump({"rows": [dataclasses.asdict(r) for r in rows], "configs": configs}, f, indent=1)
    print(format_table(rows))
    print(f"table: {args.csv}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
