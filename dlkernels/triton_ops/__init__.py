"""The Triton backend of dlkernels: every op and its backward as Triton kernels, each wrapped as a
torch.library custom op under the namespace dlkernels_triton (fake kernel + autograd), so that
torch.compile(fullgraph=True) traces forward and backward without a graph break.

Entry points used by dlkernels.ops (arguments already validated there, x always 4-D for conv/pool):
unavailable_reason(device), linear_act, conv2d, max_pool2d.

Precision: inputs float32/float16/bfloat16 (and float64), accumulation in float32 (float64 for float64).
float32 products use TF32 tensor cores only when PyTorch's flag for the same op allows it:
torch.backends.cuda.matmul.allow_tf32 for linear_act (off by default), torch.backends.cudnn.allow_tf32 for
conv2d (on by default, as for torch's conv); otherwise tl.dot runs with input_precision="ieee".

Autotuning: each kernel has a list of configs chosen for Hopper (H100/H200), tuned once per shape key and
cached (on disk where the Triton version supports it); DLKERNELS_TRITON_AUTOTUNE=0 uses one safe default
config per kernel instead (fast GPU correctness runs).

On a machine without a GPU the kernels run on CPU tensors under the Triton interpreter, which must be
enabled (TRITON_INTERPRET=1) before Triton and dlkernels are imported; it is meant for tests on tiny shapes.
"""
import torch

from . import conv2d as _conv2d
from . import linear_act as _linear_act
from . import max_pool2d as _max_pool2d
from ._common import INTERPRET, SUPPORTED_DTYPES  # noqa: F401  (re-exported)

# Every custom op of this backend, forward and backward (tests/test_triton.py runs opcheck over all of them).
CUSTOM_OPS = (
    "linear_act",
    "linear_act_backward",
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_with_indices",
    "max_pool2d_backward",
)
NAMESPACE = "dlkernels_triton"


def unavailable_reason(device):
    """None when the Triton kernels can run on `device`, else why not."""
    device = torch.device(device)
    if device.type == "cuda":
        if INTERPRET:
            return ("TRITON_INTERPRET=1 is set: the Triton interpreter runs on CPU tensors only; unset it to run "
                    "the Triton kernels on the GPU")
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device.type == "cpu":
        if INTERPRET:
            return None
        return ("no GPU; the Triton interpreter runs on the CPU only when TRITON_INTERPRET=1 is set before "
                "dlkernels is imported")
    return f"the Triton kernels run on CUDA devices (or the CPU under TRITON_INTERPRET=1), not on '{device.type}'"


def linear_act(x, weight, bias, activation):
    return _linear_act.linear_act(x, weight, bias, activation)


def conv2d(x, weight, bias, stride, padding, dilation, groups, activation):
    return _conv2d.conv2d(x, weight, bias, list(stride), list(padding), list(dilation), groups, activation)


def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=False):
    args = (x, list(kernel_size), list(stride), list(padding), list(dilation), bool(ceil_mode))
    if return_indices or (torch.is_grad_enabled() and x.requires_grad):
        # The backward needs the indices: find them in the forward rather than again in the backward.
        out, indices = _max_pool2d.max_pool2d_with_indices(*args)
        return (out, indices) if return_indices else out
    return _max_pool2d.max_pool2d(*args)
