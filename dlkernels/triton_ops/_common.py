"""Helpers shared by the Triton kernels: activations, the dot product, dtypes, autotune configs, launch guards.

Everything here is either a small @triton.jit function inlined into the kernels or host-side Python that
turns runtime choices (activation, dtype, TF32 flag) into the constexpr arguments the kernels specialise on.
"""
import contextlib
import inspect
import math
import os
import struct

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
def act_param(hi, lo, ACC_DTYPE: tl.constexpr):
    """An activation parameter in the accumulation type from the two float32 halves the kernels receive
    (param_args): Triton passes Python floats as float32, which is not enough for float64 kernels (0.01 would
    be off by 2e-8 relative); hi + lo carries 48 bits."""
    return tl.cast(hi, ACC_DTYPE) + tl.cast(lo, ACC_DTYPE)


@triton.jit
def _mish_tanh_softplus(z):
    # tanh(softplus(z)) = n (n + 2) / (n (n + 2) + 2) with n = e^z, exact to rounding for z <= 20 and equal to
    # 1 (to float64 precision) above, where n is capped so that n^2 stays finite.
    n = tl.exp(tl.minimum(z, 20.0))
    m = n * (n + 2.0)
    return m / (m + 2.0)


@triton.jit
def apply_activation(z, ACT: tl.constexpr, alpha, beta):
    """act(z) for the activation code ACT; z is float32 (or float64), never a 16-bit type. alpha and beta are
    the activation's parameters (contract.activation_args), runtime values in z's type.

    tanh is written with sigmoid (tanh(z) = 2 sigmoid(2z) - 1, and 1 + tanh(u) = 2 sigmoid(2u) in gelu_tanh)
    because tl has exp and erf but no portable tanh (libdevice's does not run under the interpreter).
    Float literals take z's type (float64 stays exact). Clamps are comparisons and selects, not
    tl.minimum/maximum, so that NaN propagates as in torch.
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
    elif ACT == 7:  # relu6 = hardtanh(0, 6)
        z = tl.where(z < 0.0, 0.0, tl.where(z > 6.0, 6.0, z))
    elif ACT == 8:  # hardtanh(alpha = min_val, beta = max_val)
        z = tl.where(z < alpha, alpha, tl.where(z > beta, beta, z))
    elif ACT == 9:  # hardswish: z min(max(z + 3, 0), 6) / 6
        r = z + 3.0
        r = tl.where(r < 0.0, 0.0, tl.where(r > 6.0, 6.0, r))
        z = z * r / 6.0
    elif ACT == 10:  # hardsigmoid: min(max(z + 3, 0), 6) / 6
        r = z + 3.0
        z = tl.where(r < 0.0, 0.0, tl.where(r > 6.0, 6.0, r)) / 6.0
    elif ACT == 11:  # leaky_relu(alpha = negative_slope)
        z = tl.where(z > 0.0, z, z * alpha)
    elif ACT == 12:  # elu(alpha): (e^z - 1) alpha for z <= 0
        z = tl.where(z <= 0.0, (tl.exp(tl.minimum(z, 0.0)) - 1.0) * alpha, z)
    elif ACT == 13:  # mish: z tanh(softplus(z))
        z = z * _mish_tanh_softplus(z)
    return z


@triton.jit
def activation_grad(saved, ACT: tl.constexpr, alpha, beta):
    """d act / dz, from the saved output y (contract.GRAD_FROM_OUTPUT) or the pre-activation z
    (GRAD_FROM_PREACTIVATION), the same rule as csrc/common/activation.h, with torch's values at the kinks."""
    one = tl.full(saved.shape, 1.0, saved.dtype)
    zero = tl.zeros(saved.shape, saved.dtype)
    if ACT == 0:
        d = one
    elif ACT == 1:  # from y: blocked where y <= 0, passes elsewhere (NaN included), as threshold_backward
        d = tl.where(saved <= 0.0, zero, one)
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
    elif ACT == 6:  # silu: s (1 + z (1 - s))
        s = _sigmoid(saved)
        d = s * (1.0 + saved * (1.0 - s))
    elif ACT == 7:  # relu6 from y: passes where 0 < y < 6 (and NaN), as hardtanh_backward
        d = tl.where((saved <= 0.0) | (saved >= 6.0), zero, one)
    elif ACT == 8:  # hardtanh from y: passes where min_val < y < max_val (and NaN)
        d = tl.where((saved <= alpha) | (saved >= beta), zero, one)
    elif ACT == 9:  # hardswish from z: 0 up to -3, z / 3 + 1/2 on (-3, 3), 1 from 3 (and NaN)
        d = tl.where(saved <= -3.0, zero, tl.where(saved < 3.0, saved / 3.0 + 0.5, one))
    elif ACT == 10:  # hardsigmoid from y: 1/6 where 0 < y < 1 (-3 < z < 3), else 0 (NaN included); torch's 1/6
        d = tl.where((saved > 0.0) & (saved < 1.0), one * 0.1666666716337204, zero)  # is float32's, as here
    elif ACT == 11:  # leaky_relu from y (negative_slope >= 0): 1 where y > 0, else negative_slope
        d = tl.where(saved > 0.0, one, zero + alpha)
    elif ACT == 12:  # elu from y (alpha >= 0): y + alpha where y <= 0, else 1
        d = tl.where(saved <= 0.0, saved + alpha, one)
    else:  # mish from z: t + z sigmoid(z) (1 - t^2), t = tanh(softplus(z))
        t = _mish_tanh_softplus(saved)
        d = t + saved * _sigmoid(saved) * (1.0 - t * t)
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
def grad_operand(g_ptrs, s_ptrs, mask, ACT: tl.constexpr, alpha, beta, ACC_DTYPE: tl.constexpr):
    """A tile of dz = grad_out * act'(saved), loaded straight from grad_out and the saved output, in the
    input dtype (ready for tl.dot). With ACT == 0 it is just the grad_out tile (the caller passes an
    already computed dz there too): the saved tensor is not read."""
    g = tl.load(g_ptrs, mask=mask, other=0.0)
    if ACT != 0:
        s = tl.load(s_ptrs, mask=mask, other=0.0).to(ACC_DTYPE)
        g = (g.to(ACC_DTYPE) * activation_grad(s, ACT, alpha, beta)).to(g.dtype)
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


def param_args(alpha, beta):
    """The kernels' ALPHA, ALPHA_LO, BETA, BETA_LO: each parameter as a float32 and the float32 rounding of
    what that leaves (see act_param)."""
    args = []
    for value in (alpha, beta):
        try:
            hi = struct.unpack("f", struct.pack("f", value))[0]
        except OverflowError:  # beyond float32: the parameter is an infinite bound
            hi = math.copysign(math.inf, value)
        args += [hi, value - hi if math.isfinite(hi) else 0.0]
    return args


def check_activation_args(activation, alpha, beta, op):
    """What the C++ kernels check too (activation.h, check_activation_params): leaky_relu's and elu's parameter
    >= 0 (their derivative is taken from the output), hardtanh's min_val <= max_val."""
    if activation in ("leaky_relu", "elu") and not alpha >= 0:
        raise ValueError(f"dlkernels.{op}: activation {activation!r} needs alpha >= 0, got {alpha}")
    if activation == "hardtanh" and not alpha <= beta:
        raise ValueError(f"dlkernels.{op}: activation 'hardtanh' needs alpha (min_val) <= beta (max_val), "
                         f"got {alpha} and {beta}")


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


def autotune(hopper_configs, default_config, interpreter_config, key, float32_configs=None):
    """triton.autotune over the Hopper configs, tuned once per value of `key` (the shape and the kernel's
    mode flags) and, where this Triton supports it, cached on disk across processes. Under the interpreter,
    a single small config: several configs fail there, and there is nothing to time.

    The Hopper configs of the GEMM kernels are sized for 16-bit inputs. The same tiles in float32 need twice
    the shared memory and, on the FMA path of an "ieee" dot, far more registers: compiled for sm_90 most of
    them spill or exceed 227 KB of shared memory (scripts/static_audit.py). With `float32_configs` given, the
    search is pruned by the inputs' element size: 2 bytes take the Hopper configs, 4 bytes float32_configs,
    8 bytes the default config."""
    if INTERPRET:
        return triton.autotune(configs=[interpreter_config], key=key, **_AUTOTUNE_EXTRA)
    if not AUTOTUNE:
        return triton.autotune(configs=[default_config], key=key, **_AUTOTUNE_EXTRA)
    if float32_configs is None:
        return triton.autotune(configs=hopper_configs, key=key, **_AUTOTUNE_EXTRA)
    by_size = {2: list(hopper_configs), 4: list(float32_configs), 8: [default_config]}

    def by_element_size(configs, named_args, **kwargs):
        # The first tensor argument is the kernel's input; its dtype is part of the autotuner's cache key.
        first = next((a for a in named_args.values() if hasattr(a, "dtype")), None)
        return by_size.get(first.dtype.itemsize, configs) if first is not None else configs

    return triton.autotune(configs=by_size[2] + by_size[4], key=key,
                           prune_configs_by={"early_config_prune": by_element_size}, **_AUTOTUNE_EXTRA)


def config(num_warps=4, num_stages=3, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)
