"""Helpers shared by the Triton kernels: activations, the dot product, dtypes, autotune configs, launch guards.

Everything here is either a small @triton.jit function inlined into the kernels or host-side Python that
turns runtime choices (activation, dtype, TF32 flag) into the constexpr arguments the kernels specialise on.
"""
import contextlib
import inspect
import os

import torch
import triton
import triton.language as tl

from ..contract import ACTIVATIONS, GRAD_FROM_OUTPUT, GRAD_FROM_PREACTIVATION, SCHEMAS

# The torch.library namespace of the Triton custom ops.
NAMESPACE = "dlkernels_triton"

# The interpreter is chosen when Triton is imported; read the flag once, as Triton does.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if INTERPRET:
    # The interpreter checks every int32 add/sub/mul for overflow (compiled kernels do so only in debug
    # mode), which doubles the time of the index-heavy conv and pool kernels in tests. Turn it off as the
    # compiler does; best effort, since the interpreter's builder is internal to Triton.
    try:
        import dataclasses

        from triton.runtime import interpreter as _interpreter

        _builder = _interpreter.interpreter_builder
        _builder.options = dataclasses.replace(_builder.options, sanitize_overflow=False)
    except (ImportError, AttributeError, TypeError):
        pass

# Under the interpreter a bfloat16 tl.dot returns garbage (numpy has no bfloat16, and the interpreter's dot
# of the raw 16-bit payloads is silently wrong: errors of 1e10 on 16x16 products). Kernels therefore upcast
# bf16 dot operands to float32 when interpreting. On a GPU the bf16 tensor-core path is used as is.
UPCAST_BF16_DOT = tl.constexpr(INTERPRET)

# Activation codes, in the order of the public API (and of csrc/common/activation.h).
ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
# The contract's table: the derivative needs the pre-activation (not invertible from the output), which the
# backward recomputes (see linear_act.py), or is taken from the saved output (`out`, None otherwise).
NEEDS_PREACTIVATION = GRAD_FROM_PREACTIVATION
NEEDS_OUTPUT = GRAD_FROM_OUTPUT

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------------------------------------------------
# Device-side helpers


@triton.jit
def _sigmoid(z):
    # exp of a non-positive number only: no overflow to inf for large |z| (and no interpreter warnings).
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def apply_activation(z, ACT: tl.constexpr):
    """act(z) for the activation code ACT; z is float32 (or float64), never a 16-bit type.

    tanh is written with sigmoid (tanh(z) = 2 sigmoid(2z) - 1, and 1 + tanh(u) = 2 sigmoid(2u) in gelu_tanh)
    because tl has exp and erf but no portable tanh (libdevice's does not run under the interpreter).
    Float literals take z's type (float64 stays exact).
    """
    if ACT == 1:  # relu; NaN passes (the comparison is false for NaN), as torch.relu
        z = tl.where(z < 0.0, 0.0, z)
    elif ACT == 2:  # sigmoid
        z = _sigmoid(z)
    elif ACT == 3:  # tanh
        z = 2.0 * _sigmoid(2.0 * z) - 1.0
    elif ACT == 4:  # gelu, erf form
        z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACT == 5:  # gelu_tanh: 0.5 z (1 + tanh(u)) = z sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
        z = z * _sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z))
    elif ACT == 6:  # silu
        z = z * _sigmoid(z)
    return z


@triton.jit
def activation_grad(saved, ACT: tl.constexpr):
    """d act / dz, from the saved output y (relu, sigmoid, tanh) or the pre-activation z (gelu, gelu_tanh,
    silu), the same rule as csrc/common/activation.h."""
    if ACT == 0:
        d = tl.full(saved.shape, 1.0, saved.dtype)
    elif ACT == 1:  # from y: blocked where y <= 0, passes elsewhere (NaN included), as threshold_backward
        d = tl.where(saved <= 0.0, 0.0, 1.0).to(saved.dtype)
    elif ACT == 2:  # y (1 - y)
        d = saved * (1.0 - saved)
    elif ACT == 3:  # 1 - y^2
        d = 1.0 - saved * saved
    elif ACT == 4:  # Phi(z) + z phi(z)
        cdf = 0.5 * (1.0 + tl.math.erf(saved * 0.7071067811865476))
        pdf = tl.exp(-0.5 * saved * saved) * 0.3989422804014327
        d = cdf + saved * pdf
    elif ACT == 5:  # 0.5 (1 + t) + 0.5 z (1 - t^2) du/dz, t = tanh(u)
        z = saved
        t = 2.0 * _sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z)) - 1.0
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        d = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    else:  # silu: s (1 + z (1 - s))
        s = _sigmoid(saved)
        d = s * (1.0 + saved * (1.0 - s))
    return d


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b with the input precision chosen on the host (see dot_precision)."""
    if UPCAST_BF16_DOT:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def grad_operand(g_ptrs, s_ptrs, mask, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """A tile of dz = grad_out * act'(saved), loaded straight from grad_out and the saved output, in the
    input dtype (ready for tl.dot). With ACT == 0 it is just the grad_out tile (the caller passes an
    already computed dz there too): the saved tensor is not read."""
    g = tl.load(g_ptrs, mask=mask, other=0.0)
    if ACT != 0:
        s = tl.load(s_ptrs, mask=mask, other=0.0).to(ACC_DTYPE)
        g = (g.to(ACC_DTYPE) * activation_grad(s, ACT)).to(g.dtype)
    return g


# ---------------------------------------------------------------------------------------------------------
# Host-side helpers


def custom_op(name):
    """Decorator: the function becomes the custom op dlkernels_triton::<name> with the contract's schema (its
    fake kernel and autograd are registered for the whole namespace by dlkernels.contract.register)."""
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=(), schema=SCHEMAS[name])


def check_dtype(t, op):
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"dlkernels.{op}: the Triton backend supports float32, float16, bfloat16 and float64, got {t.dtype}")


def check_saved_output(out, activation, op):
    """The backward ops' `out` may be None except for the activations whose derivative is read from it."""
    if out is None and activation in NEEDS_OUTPUT:
        raise ValueError(f"dlkernels.{op}: activation {activation!r} takes its derivative from the forward output: "
                         f"'out' must be given, got None")


def acc_dtype(dtype):
    """The accumulation type: float64 for float64, float32 for everything else."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype, allow_tf32):
    """tl.dot input precision. Only float32 has a choice: "tf32" (tensor cores, 10-bit mantissa) when the
    matching torch flag allows TF32, else "ieee" (exact float32 products). Other dtypes are exact anyway.
    (The interpreter accepts both and computes exactly.)"""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def device_guard(t):
    """Triton launches on the current device and stream: make the tensor's device current."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def cdiv(a, b):
    return (a + b - 1) // b


_AUTOTUNE_EXTRA = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


# DLKERNELS_TRITON_AUTOTUNE=0 replaces the search by each kernel's safe default config: for correctness runs
# on a GPU, where tuning every test shape (each compiling ~10 configs) would dominate the run time.
AUTOTUNE = os.environ.get("DLKERNELS_TRITON_AUTOTUNE", "1") != "0"


def autotune(hopper_configs, default_config, interpreter_config, key):
    """triton.autotune over the Hopper configs, tuned once per value of `key` (the shape and the kernel's
    mode flags) and, where this Triton supports it, cached on disk across processes. Under the interpreter,
    a single small config: several configs fail there, and there is nothing to time."""
    if INTERPRET:
        configs = [interpreter_config]
    else:
        configs = hopper_configs if AUTOTUNE else [default_config]
    return triton.autotune(configs=configs, key=key, **_AUTOTUNE_EXTRA)


def config(num_warps=4, num_stages=3, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)
