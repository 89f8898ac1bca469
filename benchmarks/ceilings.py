"""The roofline's ceilings: measured on this machine at the start of a run, and a datasheet table beside them.

All numbers are stored in SI base units: bytes per second and FLOP per second (1 TB/s = 1e12 bytes/s,
1 TFLOP/s = 1e12 FLOP/s, decimal, as the datasheets use them). Only display code converts.
"""
import os

import torch

from dlkernels.autotune import cpu_model

from . import timing

TERA = 1e12
GIGA = 1e9

# Dense (no structured sparsity) peaks from the vendors' datasheets. "float32" is the plain FP32 (SIMT /
# vector) rate; "tf32" is float32 matmul with TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32);
# "float64" on the GPUs is the FP64 tensor-core rate.
DATASHEET = {
    "NVIDIA H100 SXM5": {
        "memory_bandwidth": 3.35 * TERA,  # HBM3, 80 GB
        "flops": {"float64": 67 * TERA, "float32": 67 * TERA, "tf32": 494.7 * TERA,
                  "bfloat16": 989.4 * TERA, "float16": 989.4 * TERA, "float8": 1978.9 * TERA},
        "source": "NVIDIA H100 Tensor Core GPU datasheet (SXM5), dense",
    },
    "NVIDIA H100 PCIe": {
        "memory_bandwidth": 2.0 * TERA,  # HBM2e, 80 GB
        "flops": {"float64": 51.2 * TERA, "float32": 51.2 * TERA, "tf32": 378 * TERA,
                  "bfloat16": 756 * TERA, "float16": 756 * TERA, "float8": 1513 * TERA},
        "source": "NVIDIA H100 Tensor Core GPU datasheet (PCIe), dense",
    },
    "NVIDIA H100 NVL": {
        "memory_bandwidth": 3.9 * TERA,  # HBM3, 94 GB
        "flops": {"float64": 60 * TERA, "float32": 60 * TERA, "tf32": 417.5 * TERA,
                  "bfloat16": 835.5 * TERA, "float16": 835.5 * TERA, "float8": 1670.5 * TERA},
        "source": "NVIDIA H100 Tensor Core GPU datasheet (NVL), dense",
    },
    "NVIDIA H200 SXM": {
        "memory_bandwidth": 4.8 * TERA,  # HBM3e, 141 GB
        "flops": {"float64": 67 * TERA, "float32": 67 * TERA, "tf32": 494.7 * TERA,
                  "bfloat16": 989.4 * TERA, "float16": 989.4 * TERA, "float8": 1978.9 * TERA},
        "source": "NVIDIA H200 Tensor Core GPU datasheet (SXM), dense",
    },
}

# CPU class of the development machines: AMD EPYC 9004 "Genoa" (Zen 4, AVX-512 executed on two 256-bit FMA
# pipes). Peaks per core per cycle: FP64 2 pipes x 4 lanes x 2 (FMA) = 16, FP32 32, BF16 (AVX512_BF16 dot
# products) 64. The socket's memory is 12 channels of DDR5-4800: 12 x 4800e6 x 8 bytes = 460.8 GB/s, shared
# by all its cores (a 2-core virtual machine sees a small share of it).
ZEN4 = {
    "flops_per_cycle_per_core": {"float64": 16, "float32": 32, "bfloat16": 64},
    "max_boost_hz": 3.7 * GIGA,  # EPYC 9654
    "socket_memory_bandwidth": 12 * 4800e6 * 8,
    "source": "AMD EPYC 9004 (Zen 4) core: 2x256-bit FMA pipes; 12-channel DDR5-4800 socket",
}


def zen4_peaks(cores, clock_hz=None):
    """Datasheet-style peaks of `cores` Zen 4 cores at clock_hz (default: the maximum boost clock)."""
    clock = clock_hz or ZEN4["max_boost_hz"]
    return {
        "memory_bandwidth": ZEN4["socket_memory_bandwidth"],
        "flops": {dt: cores * clock * f for dt, f in ZEN4["flops_per_cycle_per_core"].items()},
        "source": f"{ZEN4['source']}; {cores} cores at {clock / GIGA:.1f} GHz; bandwidth is the whole socket's",
    }


def datasheet_for(device_name, device_type, cores=None):
    """The datasheet entry matching a device name (torch.cuda.get_device_name / the CPU model), or None."""
    name = device_name.upper()
    if device_type == "cuda":
        if "H200" in name:
            return "NVIDIA H200 SXM", DATASHEET["NVIDIA H200 SXM"]
        if "H100" in name:
            key = "NVIDIA H100 PCIe" if "PCIE" in name else "NVIDIA H100 NVL" if "NVL" in name else "NVIDIA H100 SXM5"
            return key, DATASHEET[key]
        return None
    if "EPYC" in name or "AMD" in name:
        return f"AMD EPYC (Zen 4 class), {cores} cores", zen4_peaks(cores or os.cpu_count() or 1)
    return None


def cpu_name():
    return cpu_model()


def cpu_vector_isa():
    """The widest vector level the CPU has, as dlkernels' native kernels name it ("avx512", "avx2", "base"), read
    from /proc/cpuinfo (DLKERNELS_CPU_ISA only lowers what the kernels use, not this). Cloud VMs often report a
    bare "AMD EPYC" for different generations; this tells an AVX-512 one from an AVX2 one."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= set(flags):
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= set(flags) else "base"


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cache_bytes(device):
    """The last-level cache size that rotated inputs must overflow."""
    device = torch.device(device)
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20) or (50 << 20)
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        return 32 << 20


def measure_bandwidth(device, nbytes, budget=0.3):
    """Bytes/s of dst.copy_(src) over nbytes buffers: each call reads nbytes and writes nbytes."""
    n = max(nbytes // 4, 1)
    src = torch.rand(n, device=device) + 0.5
    dst = torch.empty_like(src)
    t = timing.measure(lambda: dst.copy_(src), device, budget)
    return 2 * n * 4 / t.p20  # a ceiling is the best the machine does: the fast end of the distribution


def measure_matmul(device, dtype, n, budget=0.3):
    """FLOP/s of an n x n x n matmul (2 n^3 FLOP) in dtype."""
    a = (torch.rand(n, n, device=device) + 0.5).to(dtype)
    b = (torch.rand(n, n, device=device) + 0.5).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = timing.measure(lambda: torch.mm(a, b, out=out), device, budget)
    return 2 * n**3 / t.p20


def measure_overhead(device, budget=0.2):
    """Seconds of one trivial op (a 1-element add): the fixed cost each op pays however small it is."""
    x = torch.ones(1, device=device)
    y = torch.empty_like(x)
    return timing.measure(lambda: torch.add(x, 1, out=y), device, budget).median


def measure(device, dtypes, quick=False):
    """Measures the ceilings: {"memory_bandwidth": B/s, "flops": {dtype: FLOP/s}, "overhead_s": s, sizes}."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    copy_bytes = (1 << 30 if cuda else 256 << 20) // (4 if quick else 1)
    n = (8192 if cuda else 1536) // (2 if quick else 1)
    budget = 0.1 if quick else 0.3
    result = {
        "memory_bandwidth": measure_bandwidth(device, copy_bytes, budget),
        "flops": {},
        "overhead_s": measure_overhead(device, budget),
        "copy_bytes": copy_bytes,
        "matmul_n": n,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
    }
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        # float64 on the CPU is slow: a smaller matmul is still far out of cache and gives the same rate.
        size = n // 2 if (not cuda and dtype == torch.float64) else n
        result["flops"][name] = measure_matmul(device, dtype, size, budget)
    return result


def datasheet_table(cores=None):
    """The datasheet peaks as text: bandwidth in TB/s, compute in TFLOP/s (dense)."""
    entries = dict(DATASHEET)
    entries[f"AMD EPYC Zen 4, {cores or os.cpu_count()} cores"] = zen4_peaks(cores or os.cpu_count() or 1)
    dtypes = ["float64", "float32", "tf32", "bfloat16", "float16", "float8"]
    lines = [f"{'device':28s} {'TB/s':>7s} " + " ".join(f"{d:>9s}" for d in dtypes) + "   (TFLOP/s, dense)"]
    for name, entry in entries.items():
        cells = [f"{entry['flops'][d] / TERA:9.4g}" if d in entry["flops"] else f"{'-':>9s}" for d in dtypes]
        lines.append(f"{name:28s} {entry['memory_bandwidth'] / TERA:7.3g} " + " ".join(cells))
    return "\n".join(lines)
