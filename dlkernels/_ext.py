"""Loads the compiled extension. Importing dlkernels never fails because of it: without the extension the
"native" backend is unavailable and says how to build it, and "auto" falls back to the reference.

An extension built for another torch is not loaded at all (its symbols would not resolve, or worse, resolve
to something else): setup.py records the torch it built against in dlkernels/_build_info.py, which is read
first."""
import importlib

import torch  # noqa: F401  (the extension links against torch's libraries)

BUILD_HINT = (
    "build it against the torch you run: from the source tree, `./scripts/install.sh` or `pip install "
    "--no-build-isolation -e .` (torch must be installed first), or install the dlkernels wheel made for "
    "your torch"
)


def _build_info_module():
    try:
        return importlib.import_module("dlkernels._build_info")
    except ImportError:
        return None  # not built (or built before the build recorded itself): the import below tells


def version_mismatch(built_for, running):
    """The message for an extension built for torch `built_for` under torch `running`, None if they match."""
    if built_for is None or built_for == running:
        return None
    return f"dlkernels._C was built for torch {built_for} but torch {running} is running"


BUILT_FOR = getattr(_build_info_module(), "TORCH_VERSION", None)
LOAD_ERROR = version_mismatch(BUILT_FOR, torch.__version__)
_C = None
if LOAD_ERROR is None:
    try:
        # Importing it registers the torch.ops.dlkernels schemas and kernels.
        _C = importlib.import_module("dlkernels._C")
    except ImportError as error:  # not built
        LOAD_ERROR = str(error)


def loaded():
    return _C is not None


def build_info():
    """How the loaded extension was built ({} when none is loaded); "nvcc" names the CUDA compiler."""
    if _C is None:
        return {}
    return {**dict(_C.build_info()), "nvcc": getattr(_build_info_module(), "NVCC", None)}


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
