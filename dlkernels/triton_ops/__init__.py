"""The Triton backend of dlkernels: every op and its backward as Triton kernels, each wrapped as a
torch.library custom op under the namespace dlkernels_triton (fake kernel + autograd), so that
torch.compile(fullgraph=True) traces forward and backward without a graph break.

Each op module (linear_act, conv2d, max_pool2d, conv2d_maxpool) holds its kernels (_<op>_forward_kernel,
_<op>_grad_input_kernel, _<op>_grad_weight_kernel), their launchers and the host entry points <op>_forward
and <op>_backward, which are the custom ops dlkernels_triton::<op> and ::<op>_backward themselves
(max_pool2d adds max_pool2d_with_indices_forward). Their schemas, fake kernels and autograd are those of
every backend: dlkernels.contract, registered below for this namespace. dlkernels.ops calls the custom ops
(arguments already validated there, x always 4-D for conv/pool); unavailable_reason(device) says when they
cannot run.

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

from .. import contract
from . import conv2d, conv2d_maxpool, linear_act, max_pool2d  # noqa: F401  (importing them defines the custom ops)
from ._common import INTERPRET, NAMESPACE, SUPPORTED_DTYPES  # noqa: F401  (re-exported)
from .conv2d import conv2d_backward, conv2d_forward  # noqa: F401  (re-exported)
from .conv2d_maxpool import conv2d_maxpool_backward, conv2d_maxpool_forward  # noqa: F401
from .linear_act import linear_act_backward, linear_act_forward  # noqa: F401
from .max_pool2d import max_pool2d_backward, max_pool2d_forward, max_pool2d_with_indices_forward  # noqa: F401

contract.register(NAMESPACE)


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

