"""Loads the compiled extension. Importing dlkernels never fails because of it: without the extension the
"native" backend is unavailable and says how to build it, and "auto" falls back to the reference."""
import importlib

import torch  # noqa: F401  (the extension links against torch's libraries)

BUILD_HINT = (
    "build it from the source tree with `pip install --no-build-isolation -e .` (torch must be installed "
    "first; set CUDA_HOME=/usr/local/cuda and TORCH_CUDA_ARCH_LIST=9.0 for a CUDA build without a GPU)"
)

try:
    # Importing it registers the torch.ops.dlkernels schemas and kernels.
    _C = importlib.import_module("dlkernels._C")
    LOAD_ERROR = None
except ImportError as error:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = error


def loaded():
    return _C is not None


def build_info():
    return dict(_C.build_info()) if _C is not None else {}


def _registered_kernels():
    """{(op, device_type)} of every kernel the extension registered. Read once at import: the dispatcher
    query is not traceable by torch.compile, a set lookup is."""
    if _C is None:
        return frozenset()
    ops = [name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("dlkernels::")]
    return frozenset(
        (op, device)
        for op in ops
        for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"dlkernels::{op}", key)
    )


REGISTERED_KERNELS = _registered_kernels()


def has_kernel(op, device_type):
    """Whether torch.ops.dlkernels.<op> has a kernel for the device type ("cpu", "cuda")."""
    return (op, device_type) in REGISTERED_KERNELS
