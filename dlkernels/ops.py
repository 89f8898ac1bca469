"""Public functional API of dlkernels.

Each function normalises its arguments (ints to pairs, padding="same", a 3-D unbatched input, activation_params
to the ops' (alpha, beta)), picks a backend (once per (op, backend, device, dtype); for backend="auto" the
fastest for the call's shapes, measured once per machine by dlkernels.autotune, see _auto) and calls
either the registered custom op of that backend, torch.ops.dlkernels.<op> (C++ / CUDA kernels through the
dispatcher) or torch.ops.dlkernels_triton.<op> (Triton kernels), or the plain PyTorch reference. What the
custom ops compute, their fake kernels and their autograd are the same for every backend: dlkernels.contract.

The native path checks nothing in Python: the C++ ops check every argument (csrc/common/op_args.h, errors
naming the argument, TypeError / ValueError as here) and record autograd in C++ (csrc/autograd.cpp). Outside
torch.compile it enters C++ through the extension's own entry points (csrc/python_api.cpp: linear_act, conv2d,
and max_pool2d with the Python API's arguments) rather than torch.ops' generic binding, which costs more than a
tiny op. The Triton and reference paths are checked here first, with the same rules.
"""
import importlib
import warnings

import torch
import torch.nn.functional as F

from . import _ext, autotune, contract, cuda_emu, mixed, reference

try:
    _triton = importlib.import_module("dlkernels.triton_ops")
    _TRITON_IMPORT_ERROR = None
except ImportError as error:
    if error.name not in ("triton", "dlkernels.triton_ops"):
        raise  # a bug in our Triton code must not pass as "Triton is not installed"
    _triton = None
    _TRITON_IMPORT_ERROR = error

BACKENDS = ("auto", "native", "triton", "reference", "cuda_emu")
# The custom-op namespace of each backend that runs through the dispatcher. "cuda_emu" is the CUDA kernels'
# source run by the CPU emulator (dlkernels.cuda_emu), a test tool that "auto" never picks.
NAMESPACES = {"native": "dlkernels", "triton": "dlkernels_triton", "cuda_emu": cuda_emu.NAMESPACE}


# torch.compile traces the torch.ops calls, not the C++ entry points of csrc/python_api.cpp.
_is_compiling = torch.compiler.is_compiling


class _NativeOps:
    """The call of every native custom op, filled in when the extension loads (end of this module):
    torch.ops.dlkernels.<op>.default (an OpOverload: one Python frame less per call than the packet), or for
    the ops with a C++ entry point (csrc/python_api.cpp) that entry, which skips torch.ops' generic binding."""


_native = _NativeOps()


# ---------------------------------------------------------------------------------------------------------
# Argument checks


def _check_tensor(t, name, op):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"dlkernels.{op}: expected '{name}' to be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"dlkernels.{op}: expected '{name}' to be a floating point tensor, got {t.dtype}")


def _check_like(ref, ref_name, t, name, op):
    if t.device != ref.device:
        raise ValueError(f"dlkernels.{op}: expected '{name}' on {ref.device} like '{ref_name}', got {t.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"dlkernels.{op}: expected '{name}' of dtype {ref.dtype} like '{ref_name}', got {t.dtype}")


def _check_activation(activation, op):
    if activation not in contract.ACTIVATIONS:
        raise ValueError(
            f"dlkernels.{op}: unknown activation {activation!r}; expected one of {', '.join(contract.ACTIVATIONS)}")


def _is_int(v):
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def _pair(value, name, op, minimum=None):
    """An int or a sequence of one or two ints, as torch.nn.functional accepts, as a list of two ints; checked
    against `minimum` unless it is None (the native ops check it themselves)."""
    if type(value) is int:  # the common case first
        pair = [value, value]
    elif type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        pair = list(value)
    elif _is_int(value):
        pair = [value, value]
    elif isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(_is_int(v) for v in value):
        pair = [value[0], value[0]] if len(value) == 1 else list(value)
    else:
        raise TypeError(f"dlkernels.{op}: expected '{name}' to be an int or a pair of ints, got {value!r}")
    if minimum is not None and (pair[0] < minimum or pair[1] < minimum):
        raise ValueError(f"dlkernels.{op}: expected '{name}' to be >= {minimum}, got {value!r}")
    return pair


def _check_spatial_input(x, op):
    if x.dim() not in (3, 4):
        raise ValueError(f"dlkernels.{op}: expected 'x' to be 3-D (C, H, W) or 4-D (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")


# (alpha, beta) of each activation with its default parameters: what most calls ask for, in one lookup.
_DEFAULT_ACTIVATION_ARGS = {name: contract.activation_args(name) for name in contract.ACTIVATIONS}


def _activation_args(activation, activation_params, op):
    """The ops' (alpha, beta) for the activation; ValueError for an unknown activation or bad parameters."""
    if activation_params is None:
        args = _DEFAULT_ACTIVATION_ARGS.get(activation) if isinstance(activation, str) else None
        if args is not None:
            return args
    _check_activation(activation, op)
    return contract.activation_args(activation, activation_params, op)


# ---------------------------------------------------------------------------------------------------------
# Backend selection

_warned_missing_extension = False


def select_backend(op, backend, device):
    """The backend ("native", "triton" or "reference") that runs `op` on `device` for the `backend` asked for;
    a clear error when an explicit backend cannot run here (dlkernels.nn.convert checks layers with it)."""
    global _warned_missing_extension
    if backend not in BACKENDS:
        raise ValueError(f"dlkernels.{op}: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return "reference"
    if backend == "triton":
        reason = _triton_unavailable(device)
        if reason:
            raise RuntimeError(f"dlkernels.{op}: backend='triton' cannot run here: {reason}")
        return "triton"
    if backend == "cuda_emu":
        reason = cuda_emu.unavailable_reason(device)
        if reason:
            raise RuntimeError(f"dlkernels.{op}: backend='cuda_emu' cannot run here: {reason}")
        return "cuda_emu"
    native = _ext.has_kernel(op, device.type)
    if backend == "native":
        if native:
            return "native"
        if not _ext.loaded():
            raise RuntimeError(
                f"dlkernels.{op}: backend='native' needs the compiled extension dlkernels._C, which did not load "
                f"({_ext.LOAD_ERROR}); {_ext.BUILD_HINT}"
            )
        raise RuntimeError(
            f"dlkernels.{op}: backend='native' has no kernel for device '{device.type}' in this build "
            "(see `python -m dlkernels info`)"
        )
    # "auto": the best available backend, never an error for a missing one. Triton only on a GPU: on the
    # CPU it runs under the interpreter, a testing tool far slower than the reference.
    if native:
        return "native"
    if device.type == "cuda" and not _triton_unavailable(device):
        return "triton"
    if not _ext.loaded() and not _warned_missing_extension:
        _warned_missing_extension = True
        warnings.warn(
            f"dlkernels: the compiled extension did not load ({_ext.LOAD_ERROR}); backend='auto' falls back to "
            f"the PyTorch reference. To get the kernels, {_ext.BUILD_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


# The backend each call signature (op, backend asked for, device, dtype) resolved to: select_backend runs once
# per signature, not per call. (What it reads does not change while the process runs.)
_BACKEND_CACHE = {}


def _backend_for(op, backend, x):
    """select_backend for x's device, cached per (op, backend, device, dtype); a TypeError when x is no
    tensor."""
    try:
        key = (op, backend, x.device, x.dtype)
    except AttributeError:
        _check_tensor(x, "x", op)
        raise
    chosen = _BACKEND_CACHE.get(key)
    if chosen is None:
        chosen = select_backend(op, backend, x.device)
        _BACKEND_CACHE[key] = chosen
    return chosen


# ---------------------------------------------------------------------------------------------------------
# backend="auto" per call signature (dlkernels.autotune): the fastest of the backends that can run the call,
# measured on this machine the first time the signature is seen.

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_get_num_threads = torch.get_num_threads
_is_grad_enabled = torch.is_grad_enabled


def _candidates(op, device):
    """The backends auto chooses from for op on device, in order of preference on a tie."""
    return tuple(b for b in ("native", "triton", "reference")
                 if (b == "native" and _ext.has_kernel(op, device.type))
                 or (b == "triton" and device.type == "cuda" and not _triton_unavailable(device))
                 or b == "reference")


def _synthetic(t, generator, requires_grad):
    """A tensor with t's shape, dtype, device and memory layout, filled from the autotuner's own generator."""
    if t is None:
        return None
    out = torch.empty_like(t, requires_grad=False)
    if out.is_floating_point():
        out.normal_(generator=generator).mul_(0.1)
    return out.requires_grad_(requires_grad)


# auto's training choice "native forward, PyTorch backward" (dlkernels.mixed), for the ops and activations
# it covers.
MIXED = "native+reference"


def _call_key(x, weight, bias):
    """The part of auto's key that one layer's calls can change: x's shape, strides (its layout), dtype and
    device, the thread count, and which inputs autograd differentiates (None when it records nothing). None
    when a tensor is not a plain one (subclasses, or not tensors at all): auto leaves those to the static rule."""
    if (type(x) not in _PLAIN_TENSORS or (weight is not None and type(weight) not in _PLAIN_TENSORS)
            or (bias is not None and type(bias) not in _PLAIN_TENSORS)):
        return None
    flags = None
    if _is_grad_enabled():
        flags = (x.requires_grad, weight is not None and weight.requires_grad, bias is not None and bias.requires_grad)
        if True not in flags:
            flags = None
    return (x.shape, x.stride(), x.dtype, x.device, _get_num_threads(), flags)


def _memo_key(x, weight, bias):
    """What the choices autotune remembered are looked up by, with the op and its other arguments (dlkernels.nn
    layers' memos, and autotune's own map under the short key (op, signature, memo key)): the _call_key and the
    weight's and bias's shapes read in one C call (_C.auto_key: bytes; None for tensors that are not plain), which
    costs a fraction of building autotune's key in Python, more than a small op itself; the _call_key where the
    extension did not load."""
    return _call_key(x, weight, bias) if _ext._C is None else _ext._C.auto_key(x, weight, bias)


def _auto(op, static, x, weight, bias, signature, call, layer=None, mixed_ok=False):
    """The backend auto runs for this call (static: what it runs without a measurement). x, weight, bias: the
    call's tensors (weight and bias may be None); signature: the rest of what decides the speed, hashable
    plain data; call(backend, x, weight, bias): one call of the op with that backend (MIXED included when
    mixed_ok), returning the differentiable output. layer: a dlkernels.nn layer, told what ran (its
    ConversionReport entry) and, when autotune remembers the choice, keeping it for its next calls with the
    same _memo_key. mixed_ok: MIXED is a candidate of training calls (where native is one).

    The key: the op, the weight's and bias's shapes, the signature and the _call_key."""
    if _is_compiling():
        return static  # the static rule, a plain function of what the graph is specialised on (autotune)
    memo_key = _memo_key(x, weight, bias)
    if memo_key is not None and layer is None:  # a layer has its own memo (it looked there first)
        chosen = autotune._choices.get((op, signature, memo_key))
        if chosen is not None:
            return chosen
    call_key = _call_key(x, weight, bias)
    if call_key is None:
        return static  # the op's own checks say what is wrong, if anything
    flags = call_key[-1]
    key = (op, None if weight is None else weight.shape, None if bias is None else bias.shape, signature, *call_key)
    chosen = autotune._choices.get(key)
    if chosen is None:
        candidates = _candidates(op, x.device)
        if static not in candidates:  # the static choice (e.g. the emulator) is not auto's to replace
            return static
        if mixed_ok and flags and "native" in candidates:
            candidates += (MIXED,)  # last: a tie keeps a whole backend
        tensors = (x, weight, bias)
        chosen = autotune.choose(key, tensors, static, candidates, lambda backend: _step(backend, tensors, flags,
                                                                                          call))
    # Only what autotune remembers is kept: a static choice (under a profiler's mode, say) is not final.
    final = memo_key is not None and autotune._choices.get(key) == chosen
    if layer is not None:
        layer._remember(memo_key, flags is not None, chosen, final)
    elif final:
        autotune._choices[op, signature, memo_key] = chosen  # the short key of the next such call
    return chosen


def _step(backend, tensors, flags, call):
    """One call of backend on inputs shaped like `tensors` (forward and backward when flags say autograd
    records), as a function for autotune to time."""
    generator = torch.Generator(tensors[0].device).manual_seed(0)
    inputs = [_synthetic(t, generator, bool(flags and flags[i])) for i, t in enumerate(tensors)]
    if not flags:
        def forward():
            with torch.no_grad():
                call(backend, *inputs)
        return forward
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    with torch.no_grad():
        grad = _synthetic(call(backend, *inputs), generator, False)

    def forward_backward():
        with torch.enable_grad():
            torch.autograd.grad(call(backend, *inputs), wrt, grad)
    return forward_backward


def _triton_unavailable(device):
    """None when the Triton kernels can run on the device, else the reason they cannot."""
    if _triton is None:
        return f"Triton is not available ({_TRITON_IMPORT_ERROR}); install triton"
    return _triton.unavailable_reason(device)


def _custom_ops(backend):
    """torch.ops.<namespace> of a backend that runs through the dispatcher ("native", "triton", "cuda_emu")."""
    return getattr(torch.ops, NAMESPACES[backend])


def available_backends():
    """What this install can run now: {device: {op: [backend, ...]}} for the CPU and, when a GPU is
    visible, CUDA. "auto" measures them per call signature (dlkernels.autotune); without measuring it
    picks the first backend of each list."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result = {}
    for device in devices:
        result[device] = {
            op: (["native"] if _ext.has_kernel(op, device) else [])
            + ([] if _triton_unavailable(torch.device(device)) else ["triton"])
            + ["reference"]
            for op in contract.OPS
        }
    return result


# ---------------------------------------------------------------------------------------------------------
# Public API


def linear_act(x, weight, bias=None, activation="none", backend="auto", *, activation_params=None):
    """y = activation(x @ weight.T + bias) over any leading dimensions of x, in one fused kernel.

    activation: one of dlkernels.ACTIVATIONS ("none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu",
    "relu6", "hardtanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "mish"), torch's definitions.
    activation_params: torch's keyword arguments of the activation, for hardtanh ({"min_val": -1.0,
    "max_val": 1.0}), leaky_relu ({"negative_slope": 0.01}) and elu ({"alpha": 1.0}); missing ones take
    torch's defaults (negative_slope and alpha must be >= 0)."""
    alpha, beta = _activation_args(activation, activation_params, "linear_act")
    return _linear_act_run(_linear_act_backend(backend, x, weight, bias, activation, alpha, beta), x, weight, bias,
                           activation, alpha, beta)


def _linear_act_run(chosen, x, weight, bias, activation, alpha, beta):
    """linear_act with the backend `chosen` (activation parameters as the ops take them)."""
    if chosen == "native":  # the C++ op checks its arguments
        return _native.linear_act(x, weight, bias, activation, alpha, beta)
    if chosen == MIXED:
        return mixed.linear_act(_native.linear_act, x, weight, bias, activation, alpha, beta)
    _check_linear_args(x, weight, bias)
    if chosen == "reference":
        return reference.linear_act(x, weight, bias, activation, contract.activation_params_of(activation, alpha, beta))
    return _custom_ops(chosen).linear_act(x, weight, bias, activation, alpha, beta)


def _linear_act_backend(backend, x, weight, bias, activation, alpha, beta, layer=None):
    chosen = _backend_for("linear_act", backend, x)
    if backend != "auto":
        return chosen
    def call(b, x, w, bias):
        if b == MIXED:
            return mixed.linear_act(_native.linear_act, x, w, bias, activation, alpha, beta)
        return linear_act(x, w, bias, activation, b, activation_params=contract.activation_params_of(activation,
                                                                                                     alpha, beta))
    return _auto("linear_act", chosen, x, weight, bias, (activation, alpha, beta), call, layer,
                 activation in mixed.ACTIVATIONS)


def _check_linear_args(x, weight, bias):
    """The checks of the C++ op (csrc/common/op_args.h), for the backends that do not have them."""
    op = "linear_act"
    _check_tensor(x, "x", op)
    _check_tensor(weight, "weight", op)
    _check_like(x, "x", weight, "weight", op)
    if weight.dim() != 2:
        raise ValueError(f"dlkernels.{op}: expected 'weight' to be 2-D (out_features, in_features), got shape "
                         f"{tuple(weight.shape)}")
    if x.dim() < 1:
        raise ValueError(f"dlkernels.{op}: expected 'x' to have at least 1 dimension, got a 0-D tensor")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"dlkernels.{op}: x.shape[-1] ({x.shape[-1]}) must equal weight.shape[1] ({weight.shape[1]}); "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    if bias is not None:
        _check_tensor(bias, "bias", op)
        _check_like(x, "x", bias, "bias", op)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"dlkernels.{op}: expected 'bias' of shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def _conv_padding(x, weight, padding, stride, dilation, op):
    """Resolves padding (int, pair, "same", "valid") to a symmetric pair, padding x on the right/bottom first
    where "same" needs one more element there (as PyTorch does). Returns (x, padding)."""
    if not isinstance(padding, str):
        return x, _pair(padding, "padding", op)
    if padding == "valid":
        return x, [0, 0]
    if padding != "same":
        raise ValueError(f"dlkernels.{op}: expected 'padding' to be an int, a pair, 'same' or 'valid', got {padding!r}")
    if stride != [1, 1]:
        raise ValueError(f"dlkernels.{op}: padding='same' is not supported for strided convolutions (stride={stride})")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    left = [t // 2 for t in total]
    extra = [t - 2 * lo for t, lo in zip(total, left)]  # 0 or 1
    if any(extra):
        x = F.pad(x, (0, extra[1], 0, extra[0]))
    return x, left


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation="none", backend="auto", *,
           activation_params=None):
    """activation(conv2d(x, weight) + bias) with torch.nn.functional.conv2d's arguments, in one fused kernel.
    activation and activation_params as for linear_act."""
    op = "conv2d"
    alpha, beta = _activation_args(activation, activation_params, op)
    chosen = _backend_for(op, backend, x)
    stride = _pair(stride, "stride", op)
    dilation = _pair(dilation, "dilation", op)
    if isinstance(padding, str) and padding == "same" and isinstance(weight, torch.Tensor) and weight.dim() != 4:
        _check_conv_args(x, weight, bias, groups, stride, [0, 0], dilation)  # "same" reads the kernel size
    x, padding = _conv_padding(x, weight, padding, stride, dilation, op)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if backend == "auto":
        chosen = _conv2d_auto(chosen, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta)
    out = _conv2d_run(chosen, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta)
    return out.squeeze(0) if unbatched else out


def _conv2d_run(chosen, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta):
    """conv2d with the backend `chosen`, normalised arguments (a 4-D x, pairs)."""
    if chosen == "native":  # the C++ op checks its arguments
        return _native.conv2d(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta)
    if chosen == MIXED:
        return mixed.conv2d(_native.conv2d, x, weight, bias, stride, padding, dilation, groups, activation, alpha,
                            beta)
    _check_conv_args(x, weight, bias, groups, stride, padding, dilation)
    if chosen == "reference":
        return reference.conv2d(x, weight, bias, stride, padding, dilation, groups, activation,
                                contract.activation_params_of(activation, alpha, beta))
    return _custom_ops(chosen).conv2d(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta)


def _conv2d_auto(static, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta, layer=None):
    """auto's backend for a conv2d call with normalised arguments (a 4-D x, pairs). The static rule (used
    without measuring) runs grouped convolutions that are not depthwise with the reference on the CPU, unless
    their groups have 8 or 16 input and output channels: the native GEMM loses on most grouped shapes
    (benchmarks --suite layers); depthwise ones and those narrow groups (RegNet, ResNeXt) have direct kernels."""
    if (static == "native" and groups != 1 and x.device.type == "cpu" and type(weight) in _PLAIN_TENSORS
            and weight.dim() == 4 and weight.shape[1] > 1
            and not (weight.shape[1] in (8, 16) and weight.shape[0] // groups in (8, 16))):
        static = "reference"
    def call(b, x, w, bias):
        if b == MIXED:
            return mixed.conv2d(_native.conv2d, x, w, bias, stride, padding, dilation, groups, activation, alpha,
                                beta)
        return conv2d(x, w, bias, stride, padding, dilation, groups, activation, b,
                      activation_params=contract.activation_params_of(activation, alpha, beta))
    return _auto("conv2d", static, x, weight, bias, (*stride, *padding, *dilation, groups, activation, alpha, beta),
                 call, layer, activation in mixed.ACTIVATIONS)


def _check_conv_args(x, weight, bias, groups, stride, padding, dilation, op="conv2d"):
    """The checks of the C++ op (csrc/common/op_args.h), for the backends that do not have them."""
    _check_tensor(x, "x", op)
    _check_tensor(weight, "weight", op)
    _check_like(x, "x", weight, "weight", op)
    _check_spatial_input(x, op)
    if weight.dim() != 4:
        raise ValueError(f"dlkernels.{op}: expected 'weight' to be 4-D (out_channels, in_channels/groups, kH, kW), "
                         f"got shape {tuple(weight.shape)}")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"dlkernels.{op}: expected 'groups' to be a positive int, got {groups!r}")
    in_channels, out_channels = x.shape[-3], weight.shape[0]
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"dlkernels.{op}: 'groups' ({groups}) must divide the input channels ({in_channels}) and the output "
            f"channels ({out_channels})"
        )
    if weight.shape[1] * groups != in_channels:
        raise ValueError(
            f"dlkernels.{op}: expected weight.shape[1] * groups == input channels, got weight {tuple(weight.shape)}, "
            f"groups={groups} and x {tuple(x.shape)}"
        )
    if bias is not None:
        _check_tensor(bias, "bias", op)
        _check_like(x, "x", bias, "bias", op)
        if tuple(bias.shape) != (out_channels,):
            raise ValueError(f"dlkernels.{op}: expected 'bias' of shape ({out_channels},), got {tuple(bias.shape)}")
    for name, pair, minimum in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if pair[0] < minimum or pair[1] < minimum:
            raise ValueError(f"dlkernels.{op}: expected '{name}' to be >= {minimum}, got {pair!r}")
    for i, dim in enumerate(("height", "width")):
        size, kernel = x.shape[-2 + i], weight.shape[2 + i]
        if contract.conv_output_size(size, kernel, stride[i], padding[i], dilation[i]) < 1:
            raise ValueError(
                f"dlkernels.{op}: the input {dim} ({size}, padded by {padding[i]} on each side) is smaller than "
                f"the dilated kernel ({dilation[i] * (kernel - 1) + 1})"
            )


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
               backend="auto"):
    """torch.nn.functional.max_pool2d: same output sizes, index values and NaN propagation."""
    return _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend)


def _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend, layer=None):
    op = "max_pool2d"
    chosen = _backend_for(op, backend, x)
    if backend == "auto" and type(x) in _PLAIN_TENSORS and x.dim() == 4:
        chosen = _max_pool2d_auto(chosen, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                                  layer)
    if chosen == "native" and not _is_compiling():
        # Straight into C++ (csrc/python_api.cpp: no torch.ops binding); NotImplemented for a call it does not
        # take (a tensor subclass, a torch function mode, other int types), which takes the path below.
        result = _ext._C.max_pool2d_functional(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        if result is not NotImplemented:
            return result
    kernel_size = _pair(kernel_size, "kernel_size", op)
    stride = kernel_size if stride is None or stride == [] or stride == () else _pair(stride, "stride", op)
    padding = _pair(padding, "padding", op)
    dilation = _pair(dilation, "dilation", op)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    args = (x, kernel_size, stride, padding, dilation, bool(ceil_mode))
    if chosen != "native":  # the C++ ops check their arguments
        _check_pool_args(*args)
    if chosen == "reference":
        result = reference.max_pool2d(*args, return_indices=return_indices)
    else:
        custom_ops = _native if chosen == "native" else _custom_ops(chosen)
        if contract.pool_needs_indices(x, return_indices):
            result = custom_ops.max_pool2d_with_indices(*args)
            if not return_indices:
                result = result[0]
        else:
            result = custom_ops.max_pool2d(*args)
    if not unbatched:
        return result
    return tuple(r.squeeze(0) for r in result) if return_indices else result.squeeze(0)


def _max_pool2d_auto(static, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, layer=None):
    """auto's backend for a max_pool2d call of a 4-D x (the arguments as the user gave them: ints and tuples
    as they are, the cheapest key; lists made tuples)."""
    def call(b, x, weight, bias):
        result = max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, b)
        return result[0] if return_indices else result

    signature = (kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    try:
        return _auto("max_pool2d", static, x, None, None, signature, call, layer)
    except TypeError:  # a list (unhashable), or odd arguments, which the op's own checks will name
        try:
            signature = tuple(tuple(v) if isinstance(v, list) else v for v in signature)
            return _auto("max_pool2d", static, x, None, None, signature, call, layer)
        except TypeError:
            return static


def _check_pool_args(x, kernel_size, stride, padding, dilation, ceil_mode):
    """The checks of the C++ ops (csrc/common/op_args.h), for the backends that do not have them."""
    op = "max_pool2d"
    _check_tensor(x, "x", op)
    _check_spatial_input(x, op)
    if any(s == 0 for s in x.shape[-3:]):
        raise ValueError(f"dlkernels.{op}: expected non-zero channel, height and width sizes, got shape "
                         f"{tuple(x.shape)}")
    for name, pair, minimum in (("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0),
                                ("dilation", dilation, 1)):
        if pair[0] < minimum or pair[1] < minimum:
            raise ValueError(f"dlkernels.{op}: expected '{name}' to be >= {minimum}, got {pair!r}")
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"dlkernels.{op}: 'padding' ({padding}) must be at most half of 'kernel_size' ({kernel_size})")
    for i, dim in enumerate(("height", "width")):
        size = x.shape[-2 + i]
        if contract.pool_output_size(size, kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode) < 1:
            raise ValueError(
                f"dlkernels.{op}: the input {dim} ({size}) is too small for kernel_size={kernel_size}, "
                f"padding={padding}, dilation={dilation}: the output would be empty"
            )


def conv2d_maxpool(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation="relu",
                   pool_kernel_size=2, pool_stride=None, pool_padding=0, pool_ceil_mode=False, backend="auto", *,
                   activation_params=None):
    """The fused block max_pool2d(activation(conv2d(x, weight) + bias)): the conv arguments as conv2d's
    (padding "same" / "valid" too), the pooling's as torch.nn.functional.max_pool2d's (pool_stride None means
    pool_kernel_size; no dilation), activation and activation_params as for linear_act. The conv output is
    pooled while it is in cache and never written out; for the backward only the pooled output and a small
    window index (int8 for windows of up to 128 positions) are kept. Returns the pooled output."""
    op = "conv2d_maxpool"
    alpha, beta = _activation_args(activation, activation_params, op)
    chosen = _backend_for(op, backend, x)
    stride = _pair(stride, "stride", op)
    dilation = _pair(dilation, "dilation", op)
    pool_kernel_size = _pair(pool_kernel_size, "pool_kernel_size", op)
    pool_stride = (pool_kernel_size if pool_stride is None or pool_stride == [] or pool_stride == ()
                   else _pair(pool_stride, "pool_stride", op))
    pool_padding = _pair(pool_padding, "pool_padding", op)
    pool_ceil_mode = bool(pool_ceil_mode)
    if isinstance(padding, str) and padding == "same" and isinstance(weight, torch.Tensor) and weight.dim() != 4:
        _check_conv_args(x, weight, bias, groups, stride, [0, 0], dilation, op)  # "same" reads the kernel size
    x, padding = _conv_padding(x, weight, padding, stride, dilation, op)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    args = (x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta, pool_kernel_size, pool_stride,
            pool_padding, pool_ceil_mode)
    if backend == "auto":
        chosen = _conv2d_maxpool_auto(chosen, *args)
    out = _conv2d_maxpool_run(chosen, *args)
    return out.squeeze(0) if unbatched else out


def _conv2d_maxpool_run(chosen, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                        pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode):
    """conv2d_maxpool with the backend `chosen`, normalised arguments (a 4-D x, pairs)."""
    if chosen == "native":  # the C++ op checks its arguments
        return _native.conv2d_maxpool(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                                      pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode)[0]
    _check_block_args(x, weight, bias, groups, stride, padding, dilation, pool_kernel_size, pool_stride, pool_padding,
                      pool_ceil_mode)
    if chosen == "reference":
        return reference.conv2d_maxpool(x, weight, bias, stride, padding, dilation, groups, activation,
                                        contract.activation_params_of(activation, alpha, beta), pool_kernel_size,
                                        pool_stride, pool_padding, pool_ceil_mode)
    return _custom_ops(chosen).conv2d_maxpool(x, weight, bias, stride, padding, dilation, groups, activation, alpha,
                                              beta, pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode)[0]


def _conv2d_maxpool_auto(static, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                         pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode, layer=None):
    """auto's backend for a conv2d_maxpool call with normalised arguments (a 4-D x, pairs)."""
    pool = (pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode)
    signature = (*stride, *padding, *dilation, groups, activation, alpha, beta, *pool_kernel_size, *pool_stride,
                 *pool_padding, pool_ceil_mode)
    return _auto("conv2d_maxpool", static, x, weight, bias, signature,
                 lambda b, x, w, bias: conv2d_maxpool(x, w, bias, stride, padding, dilation, groups, activation, *pool,
                                                      backend=b, activation_params=contract.activation_params_of(
                                                          activation, alpha, beta)), layer)


def _check_block_args(x, weight, bias, groups, stride, padding, dilation, pool_kernel_size, pool_stride, pool_padding,
                      ceil_mode):
    """The checks of the C++ op (csrc/common/op_args.h), for the backends that do not have them."""
    op = "conv2d_maxpool"
    _check_conv_args(x, weight, bias, groups, stride, padding, dilation, op)
    for name, pair, minimum in (("pool_kernel_size", pool_kernel_size, 1), ("pool_stride", pool_stride, 1),
                                ("pool_padding", pool_padding, 0)):
        if pair[0] < minimum or pair[1] < minimum:
            raise ValueError(f"dlkernels.{op}: expected '{name}' to be >= {minimum}, got {pair!r}")
    if pool_padding[0] > pool_kernel_size[0] // 2 or pool_padding[1] > pool_kernel_size[1] // 2:
        raise ValueError(f"dlkernels.{op}: expected 'pool_padding' to be at most half of 'pool_kernel_size', got "
                         f"pool_padding={pool_padding} and pool_kernel_size={pool_kernel_size}")
    conv = contract.conv_output_shape(x, weight, stride, padding, dilation)
    pooled = [contract.pool_output_size(conv[2 + i], pool_kernel_size[i], pool_stride[i], pool_padding[i], 1,
                                        ceil_mode) for i in range(2)]
    if min(pooled) < 1:
        raise ValueError(f"dlkernels.{op}: the conv output ({conv[2]}x{conv[3]}) is too small for "
                         f"pool_kernel_size={pool_kernel_size}, pool_stride={pool_stride}, "
                         f"pool_padding={pool_padding}: the pooled output would be empty")


def _with_entry(entry, overload):
    """A native op's call: its C++ entry point (csrc/python_api.cpp) when that takes the call, else the op
    through torch.ops (torch.compile traces this one)."""

    def call(*args):
        if not _is_compiling():
            result = entry(*args)
            if result is not NotImplemented:
                return result
        return overload(*args)

    return call


if _ext.loaded():  # the extension defines the ops and their autograd (C++); the fake kernels are the contract's
    for _op in contract.CUSTOM_OPS:
        _overload = getattr(torch.ops.dlkernels, _op).default
        _entry = getattr(_ext._C, _op, None)  # linear_act and conv2d have one
        setattr(_native, _op, _overload if _entry is None else _with_entry(_entry, _overload))
    contract.register(NAMESPACES["native"], autograd=not contract.has_autograd_kernel("dlkernels", "linear_act"))
