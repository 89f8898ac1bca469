"""dlkernels: hand-written C++/CUDA (and Triton) kernels for fused Linear+activation, Conv2d and MaxPool2d.

    import dlkernels
    y = dlkernels.ops.linear_act(x, weight, bias, activation="relu")
    model = dlkernels.convert(torchvision.models.vgg11())   # swap in the fused layers
"""
from . import _ext, contract, nn, ops, reference  # noqa: F401  (submodules, loaded on import)
from .contract import ACTIVATIONS
from .nn import convert, fold_batchnorm, revert
from .ops import BACKENDS, available_backends

__version__ = "0.1.0"

__all__ = [
    "ops",
    "nn",
    "reference",
    "convert",
    "revert",
    "fold_batchnorm",
    "available_backends",
    "ACTIVATIONS",
    "BACKENDS",
    "__version__",
]
