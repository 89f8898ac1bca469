"""Plain PyTorch composites that define what every dlkernels backend must compute.

Tests compare each backend with these functions evaluated in float64 on the CPU; the "reference" backend
runs them directly.
"""
import torch
import torch.nn.functional as F

from .contract import ACTIVATIONS


def activation(z, name):
    if name == "none":
        return z
    if name == "relu":
        return torch.relu(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    if name == "gelu":
        return F.gelu(z)
    if name == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if name == "silu":
        return F.silu(z)
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


def linear_act(x, weight, bias=None, activation_name="none"):
    return activation(F.linear(x, weight, bias), activation_name)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation_name="none"):
    return activation(F.conv2d(x, weight, bias, stride, padding, dilation, groups), activation_name)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                        return_indices=return_indices)
