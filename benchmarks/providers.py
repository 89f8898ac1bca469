"""The implementations under test. Each is skipped with a reason when this install or device cannot run it.

    torch_eager    stock PyTorch as a user writes it (F.linear + activation, F.conv2d + activation, F.max_pool2d,
                   the nn.Module models): the baseline that speedups are relative to
    torch_compile  torch.compile of the same code (inductor, default mode, static shapes)
    dlk_native     dlkernels' C++/CUDA kernels (backend="native"); models through dlkernels.convert
    dlk_triton     dlkernels' Triton kernels (backend="triton"); models through dlkernels.convert
"""
import shutil

import torch

import dlkernels
from dlkernels import _ext

PROVIDERS = ("torch_eager", "torch_compile", "dlk_native", "dlk_triton")
ALIASES = {"eager": "torch_eager", "torch": "torch_eager", "compile": "torch_compile", "inductor": "torch_compile",
           "native": "dlk_native", "triton": "dlk_triton"}
BASELINE = "torch_eager"
# The custom ops each op needs per mode (backward modes need the backward op's kernel too).
NATIVE_OPS = {
    "linear_act": {"forward": ["linear_act"], "backward": ["linear_act", "linear_act_backward"]},
    "conv2d": {"forward": ["conv2d"], "backward": ["conv2d", "conv2d_backward"]},
    "max_pool2d": {"forward": ["max_pool2d"], "backward": ["max_pool2d_with_indices", "max_pool2d_backward"]},
    "conv2d_maxpool": {"forward": ["conv2d_maxpool"], "backward": ["conv2d_maxpool", "conv2d_maxpool_backward"]},
    "model": {"forward": ["linear_act", "conv2d", "max_pool2d"],
              "backward": ["linear_act_backward", "conv2d_backward", "max_pool2d_backward"]},
}


def resolve(names):
    """Provider names from the command line (aliases allowed) -> canonical names, in PROVIDERS order."""
    wanted = set()
    for name in names:
        name = ALIASES.get(name, name)
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider {name!r}; expected one of {', '.join(PROVIDERS)} "
                             f"(or {', '.join(ALIASES)})")
        wanted.add(name)
    return [p for p in PROVIDERS if p in wanted]


def _first_line(error):
    text = f"{type(error).__name__}: {error}"
    return text.splitlines()[0][:200]


def _triton_probe(device):
    """None if dlkernels' Triton backend runs a tiny linear_act on device, else why not."""
    try:
        x = torch.ones(2, 4, device=device)
        w = torch.ones(3, 4, device=device)
        dlkernels.ops.linear_act(x, w, None, "relu", backend="triton")
        return None
    except Exception as error:  # noqa: BLE001 (any failure is a reason to skip)
        return _first_line(error)


_probe_cache = {}


def unavailable(provider, case, mode, device):
    """None when provider can run case in mode on device, else the reason (a short sentence)."""
    device = torch.device(device)
    if provider == "torch_eager":
        return None
    if provider == "torch_compile":
        if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            return "torch.compile on the CPU needs a C++ compiler; none found"
        return None
    stage = "forward" if mode == "forward" else "backward"
    if provider == "dlk_native":
        if not _ext.loaded():
            return f"dlkernels._C is not built or does not load ({_ext.LOAD_ERROR})"
        missing = [op for op in NATIVE_OPS[case.op][stage] if not _ext.has_kernel(op, device.type)]
        if missing:
            return f"no {device.type} kernel for {', '.join('dlkernels::' + m for m in missing)} in this build"
    if provider == "dlk_triton":
        if device.type != "cuda":
            return "Triton runs on the CPU only under TRITON_INTERPRET=1, far too slow to time"
        key = ("triton", str(device))
        if key not in _probe_cache:
            _probe_cache[key] = _triton_probe(device)
        if _probe_cache[key]:
            return f"backend='triton' does not run here: {_probe_cache[key]}"
    return None


def build(provider, case, device, dtype):
    """The implementation: a callable fn(inputs) for op cases, an nn.Module for model cases."""
    backend = {"dlk_native": "native", "dlk_triton": "triton"}.get(provider)
    if case.op == "model":
        model = case.torch_model(device, dtype)
        if provider == "torch_compile":
            torch._dynamo.reset()
            return torch.compile(model)
        if backend:
            return dlkernels.convert(model, backend=backend, fuse=True)
        return model
    if provider == "torch_compile":
        # A fresh compile per case: no recompiles against another case's shapes, no cache-limit fallback.
        torch._dynamo.reset()
        return torch.compile(case.torch_fn(), dynamic=False)
    if backend:
        return case.dlkernels_fn(backend)
    return case.torch_fn()
