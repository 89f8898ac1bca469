"""`python -m dlkernels info`: versions, how the extension was built, and which backend runs each op."""
import argparse
import os
import platform
import sys

import torch

from . import __version__, _ext, cuda_emu
from .ops import available_backends


def info_lines():
    lines = [
        f"dlkernels        {__version__}",
        f"python           {platform.python_version()}",
        f"torch            {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    ]
    try:
        import triton

        lines.append(f"triton           {triton.__version__}")
    except ImportError:
        lines.append("triton           not installed")
    if _ext.loaded():
        build = _ext.build_info()
        cuda = "no (CPU-only build)"
        if build["with_cuda"]:
            cuda = f"yes, CUDA {build['cuda_version']}, archs {build['cuda_archs']}"
        lines += [
            "extension        dlkernels._C loaded",
            f"  built against  torch {build['torch_version']}",
            f"  CUDA kernels   {cuda}",
        ]
        if build["with_cuda"]:
            lines.append(f"  CUDA compiler  {build['nvcc'] or 'unknown'}")
        lines.append(f"  OpenMP         {'yes' if build['openmp'] else 'no'}, {_ext._C.num_threads()} threads")
        forced = os.environ.get("DLKERNELS_CPU_ISA")
        lines.append(f"  CPU ISA        {_ext._C.cpu_isa()}" + (f" (DLKERNELS_CPU_ISA={forced})" if forced else ""))
        lines.append(f"  huge pages     {'on' if _ext._C.huge_pages() else 'off'}")
    else:
        lines += ["extension        NOT loaded: " + str(_ext.LOAD_ERROR), f"  to fix         {_ext.BUILD_HINT}"]
    emulator = "dlkernels._cuda_emu loaded (a test tool: backend='cuda_emu')" if cuda_emu.loaded() else "not built"
    lines.append(f"CUDA emulator    {emulator}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            lines.append(f"GPU {i}            {torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    else:
        lines.append("GPU              none visible")
    lines.append("backends (auto picks the first):")
    for device, ops in available_backends().items():
        for op, backends in ops.items():
            lines.append(f"  {device:5s} {op:12s} {', '.join(backends)}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dlkernels", description=__doc__)
    parser.add_argument("command", choices=["info"], help="info: versions, build and backends")
    parser.parse_args(argv)
    print("\n".join(info_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
