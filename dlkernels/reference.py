"""Plain PyTorch composites that define what every dlkernels backend must compute.

Tests compare each backend with these functions evaluated in float64 on the CPU; the "reference" backend
runs them directly.
"""
import torch
import torch.nn.functional as F

from .contract import ACTIVATION_PARAMS, ACTIVATIONS


# name -> f(z, params): built once, as this module is on the path of every call auto sends to the reference.
_ACTIVATION_FUNCTIONS = {
    "none": lambda z, params: z,
    "relu": lambda z, params: torch.relu(z),
    "sigmoid": lambda z, params: torch.sigmoid(z),
    "tanh": lambda z, params: torch.tanh(z),
    "gelu": lambda z, params: F.gelu(z),
    "gelu_tanh": lambda z, params: F.gelu(z, approximate="tanh"),
    "silu": lambda z, params: F.silu(z),
    "relu6": lambda z, params: F.relu6(z),
    "hardtanh": lambda z, params: F.hardtanh(z, **params),
    "hardswish": lambda z, params: F.hardswish(z),
    "hardsigmoid": lambda z, params: F.hardsigmoid(z),
    "leaky_relu": lambda z, params: F.leaky_relu(z, **params),
    "elu": lambda z, params: F.elu(z, **params),
    "mish": lambda z, params: F.mish(z),
}


def activation(z, name, params=None):
    """torch's function for the activation `name`, with `params` (torch's keyword arguments, e.g.
    {"negative_slope": 0.2}; missing ones at torch's defaults)."""
    function = _ACTIVATION_FUNCTIONS.get(name)
    if function is None:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    if params and name not in ACTIVATION_PARAMS:
        raise ValueError(f"activation {name!r} takes no parameters, got {params!r}")
    return function(z, params or {})


def linear_act(x, weight, bias=None, activation_name="none", activation_params=None):
    return activation(F.linear(x, weight, bias), activation_name, activation_params)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation_name="none",
           activation_params=None):
    return activation(F.conv2d(x, weight, bias, stride, padding, dilation, groups), activation_name,
                      activation_params)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                        return_indices=return_indices)


def conv2d_maxpool(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation_name="relu",
                   activation_params=None, pool_kernel_size=2, pool_stride=None, pool_padding=0, pool_ceil_mode=False):
    """The fused block's definition: max_pool2d(act(conv2d(x))), the pooling with torch's rules."""
    return F.max_pool2d(conv2d(x, weight, bias, stride, padding, dilation, groups, activation_name, activation_params),
                        pool_kernel_size, pool_stride, pool_padding, ceil_mode=pool_ceil_mode)
