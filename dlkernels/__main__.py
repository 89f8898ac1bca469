"""`python -m dlkernels info`: versions, how the extension was built, which backend runs each op, and the
autotune cache. `python -m dlkernels cache`: what backend="auto" measured on this machine (`--clear` forgets
it)."""
import argparse
import os
import platform
import sys

import torch

from . import __version__, _ext, autotune, cuda_emu
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
    lines.append("backends (auto measures them per call signature; without measuring it picks the first):")
    for device, ops in available_backends().items():
        for op, backends in ops.items():
            lines.append(f"  {device:5s} {op:12s} {', '.join(backends)}")
    lines += autotune_lines(details=False)
    return lines


def autotune_lines(details=True):
    """The autotune cache: where, whether auto measures, and (details) each entry."""
    state = "on" if autotune.enabled() else f"off ({autotune.ENV_AUTOTUNE}=0: static rules)"
    entries = autotune.entries()
    chosen = {}
    for entry in entries.values():
        chosen[entry["choice"]] = chosen.get(entry["choice"], 0) + 1
    counts = ", ".join(f"{n} {backend}" for backend, n in sorted(chosen.items())) or "none"
    lines = [f"autotune         {state}", f"  cache          {autotune.cache_path()}",
             f"  entries        {len(entries)} ({counts})"]
    if details:
        for name, entry in sorted(entries.items()):
            times = ", ".join(f"{backend} {us:.1f} us" for backend, us in sorted(entry.get("us", {}).items()))
            lines.append(f"  {entry['choice']:9s} {name}  [{times}]")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dlkernels", description=__doc__)
    parser.add_argument("command", choices=["info", "cache"],
                        help="info: versions, build and backends; cache: what backend='auto' measured here")
    parser.add_argument("--clear", action="store_true", help="with cache: forget every measurement")
    args = parser.parse_args(argv)
    if args.command == "cache" and args.clear:
        removed = autotune.clear()
        print(f"removed {removed}" if removed else f"no cache at {autotune.cache_path()}")
        return 0
    print("\n".join(info_lines() if args.command == "info" else autotune_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
