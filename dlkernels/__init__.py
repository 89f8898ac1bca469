"""dlkernels: hand-written C++/CUDA (and Triton) kernels for fused Linear+activation, Conv2d and MaxPool2d.

    import dlkernels
    y = dlkernels.ops.linear_act(x, weight, bias, activation="relu")
"""
from . import _ext, ops, reference
from .ops import ACTIVATIONS, BACKENDS, available_backends

__version__ = "0.1.0"

__all__ = ["ops", "reference", "available_backends", "ACTIVATIONS", "BACKENDS", "__version__"]
