"""Drop-in torch.nn layers backed by dlkernels.ops, and model conversion.

    import dlkernels.nn
    layer = dlkernels.nn.Conv2d(3, 16, 3, padding=1, activation="relu")   # like nn.Conv2d + nn.ReLU
    block = dlkernels.nn.Conv2dMaxPool(3, 16, 3, padding=1)              # ... + nn.MaxPool2d(2), fused
    model, report = dlkernels.nn.convert(torch_model, return_report=True) # swap + fuse, on a copy
    print(report)
    torch_model_again = dlkernels.nn.revert(model)
    inference = dlkernels.nn.fold_batchnorm(torch_model.eval())        # BatchNorm folded into conv / linear

See layers.py for the layers and convert.py for convert()/revert() and the report they give.
"""
from .convert import ConversionReport, Converted, Folded, Fused, Left, Pooled, convert, fold_batchnorm, revert
from .layers import (Conv2d, Conv2dMaxPool, FoldedBatchNorm, FusedActivation, FusedMaxPool, Linear, MaxPool2d,
                     activation_module, activation_name)

__all__ = [
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "Conv2dMaxPool",
    "FusedActivation",
    "FusedMaxPool",
    "FoldedBatchNorm",
    "convert",
    "revert",
    "fold_batchnorm",
    "ConversionReport",
    "Converted",
    "Fused",
    "Pooled",
    "Folded",
    "Left",
    "activation_name",
    "activation_module",
]
