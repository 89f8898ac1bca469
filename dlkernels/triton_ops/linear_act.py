"""linear_act in Triton: y = act(x @ W^T + b), and its backward, as custom ops dlkernels_triton::linear_act
(linear_act_forward) and dlkernels_triton::linear_act_backward (linear_act_backward); their schemas, fake
kernels and autograd are dlkernels.contract's.

One tiled GEMM kernel, _linear_act_gemm_kernel, C = A @ B over (M, N, K) with arbitrary strides, serves the
four products:

  forward        A = x (M, K),        B = W^T (K, N)   epilogue: act(acc + b)        -> y
  recompute      A = x,               B = W^T          epilogue: g * act'(acc + b)   -> dz   (gelu/gelu_tanh/silu)
  grad x         A = dz (M, N),       B = W (N, K)                                   -> dx
  grad W         A = dz^T (N, M),     B = x (M, K)     + row sums of A               -> dW, db

Fusions: bias and activation in the forward epilogue; for relu/sigmoid/tanh (and none) dz = g * act'(y) is
formed while the grad GEMMs load their A tiles (a "prologue"), so dz never goes to memory; for gelu,
gelu_tanh and silu the derivative needs the pre-activation z, which is recomputed like the native backend
does (one GEMM whose epilogue writes dz directly; z itself is never stored) instead of saved in the
forward (saving it would cost an M x N write in every forward, training or not); grad_bias is summed by the
grad-W GEMM from the dz tiles it already loads. No atomics: results are deterministic.
"""
import math

import torch
import triton
import triton.language as tl

from ._common import (ACT_CODE, NEEDS_OUTPUT, NEEDS_PREACTIVATION, acc_dtype, act_param, activation_grad,
                      apply_activation, autotune, check_activation_args, check_dtype, check_saved_output, config,
                      param_args, custom_op, device_guard, dot, dot_precision, grad_operand)

# Hopper (H100/H200): 128x128 and 128x256 tiles with K slices of 64 feed wgmma from a 3-4 stage
# TMA/cp.async pipeline inside the 228 KB of shared memory per SM; 8 warps (two warpgroups) for the
# largest tiles. The BLOCK_M=16/32/64 configs with long K slices are for skinny, memory-bound shapes
# (M <= 64): they keep more programs busy and stream W at full bandwidth. GROUP_M groups programs that
# share B tiles so they hit L2 together. Tiles of 128 rows take 8 warps and K slices stop at 128: the
# backward's GEMMs (dz formed on load, row sums for grad_bias) spill registers with 4 warps or K=256.
GEMM_CONFIGS = [
    config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=32, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
]
# float32 inputs (TF32 wgmma, or exact FMA products with TF32 off): K slices of 32 keep the shared memory of
# the 16-bit tiles and the FMA path's operand registers low enough not to spill; 128x256 tiles do not fit.
GEMM_CONFIGS_FP32 = [
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
    config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
]
# Fits every dtype's shared memory and registers (float64 included): used when autotuning is off.
DEFAULT_CONFIG = config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
# Under the interpreter: small tiles so the test shapes still span several tiles and masked edges.
INTERPRETER_CONFIG = config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=1)

EPILOGUE_ACT = 0  # store act(acc + bias)
EPILOGUE_GRAD = 1  # store g * act'(acc + bias): the recomputed pre-activation becomes dz at once


@autotune(GEMM_CONFIGS, DEFAULT_CONFIG, INTERPRETER_CONFIG,
          key=["M", "N", "K", "A_ACT", "EPILOGUE", "ACT", "ROWSUM", "DOT"], float32_configs=GEMM_CONFIGS_FP32)
@triton.jit
def _linear_act_gemm_kernel(
    a_ptr, s_ptr, b_ptr, c_ptr, bias_ptr, g_ptr, rowsum_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    ALPHA, ALPHA_LO, BETA, BETA_LO,  # the activation's parameters (param_args), runtime values
    A_ACT: tl.constexpr,  # A = a * act'(s) with this activation (s has a's strides); 0: A = a
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, EPILOGUE: tl.constexpr,
    ROWSUM: tl.constexpr,  # also write rowsum[m] = sum_k A[m, k] (float32/64), from the programs of column 0
    DOT: tl.constexpr,  # False: only the row sums are wanted, skip the product
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = A @ B for every product of linear_act (see the module docstring): the forward (EPILOGUE 0: act(acc
    + bias)), the recomputed dz (EPILOGUE 1), grad_input (A = dz, formed on load when A_ACT) and
    grad_weight with grad_bias (A = dz^T, ROWSUM; DOT off when only grad_bias is wanted)."""
    # Grouped ordering: GROUP_M row tiles run next to each other over all column tiles, so the B tiles
    # they share are read from L2 rather than from memory.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_size = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    mask_n = rn < N
    a_offs = rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_offs = rk[:, None] * stride_bk + rn[None, :].to(tl.int64) * stride_bn

    alpha = act_param(ALPHA, ALPHA_LO, ACC_DTYPE)
    beta = act_param(BETA, BETA_LO, ACC_DTYPE)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    rowsum = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + rk) < K
        a_mask = mask_m[:, None] & mask_k[None, :]
        a = grad_operand(a_ptr + a_offs, s_ptr + a_offs, a_mask, A_ACT, alpha, beta, ACC_DTYPE)
        if ROWSUM:
            rowsum += tl.sum(a.to(ACC_DTYPE), axis=1)
        if DOT:
            b = tl.load(b_ptr + b_offs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = dot(a, b, acc, PRECISION)
        a_offs += BLOCK_K * stride_ak
        b_offs += BLOCK_K * stride_bk

    if ROWSUM:
        if pid_n == 0:
            tl.store(rowsum_ptr + rm, rowsum, mask=mask_m)
    if DOT:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
        c_offs = rm[:, None].to(tl.int64) * stride_cm + rn[None, :] * stride_cn
        c_mask = mask_m[:, None] & mask_n[None, :]
        if EPILOGUE == 0:
            acc = apply_activation(acc, ACT, alpha, beta)
        else:
            acc = tl.load(g_ptr + c_offs, mask=c_mask, other=0.0).to(ACC_DTYPE) * activation_grad(acc, ACT, alpha,
                                                                                                  beta)
        tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


def _allow_tf32():
    return torch.backends.cuda.matmul.allow_tf32


def _gemm(a, b, c, *, a_act=0, s=None, bias=None, act=0, params=(0.0, 0.0), epilogue=EPILOGUE_ACT, g=None,
          rowsum=None, with_dot=True):
    """Launches _linear_act_gemm_kernel for C (M, N) = A (M, K) @ B (K, N) (2-D tensors or views with any strides)."""
    M, K = a.shape
    N = b.shape[1]
    with_dot = with_dot and N > 0
    if M == 0 or not (with_dot or rowsum is not None):
        return
    # Unused pointers get any valid tensor: the constexpr flags compile their accesses away.
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * (triton.cdiv(N, meta["BLOCK_N"]) if with_dot else 1),)
    with device_guard(a):
        _linear_act_gemm_kernel[grid](
            a, a if s is None else s, b, c, a if bias is None else bias, a if g is None else g,
            a if rowsum is None else rowsum,
            M, N if with_dot else 1, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), *param_args(*params),
            A_ACT=a_act, HAS_BIAS=bias is not None, ACT=act, EPILOGUE=epilogue, ROWSUM=rowsum is not None,
            DOT=with_dot, PRECISION=dot_precision(a.dtype, _allow_tf32()), ACC_DTYPE=acc_dtype(a.dtype),
        )


# ---------------------------------------------------------------------------------------------------------
# Custom ops


@custom_op("linear_act")
def linear_act_forward(x, weight, bias, activation, alpha, beta):
    check_dtype(x, "linear_act")
    check_activation_args(activation, alpha, beta, "linear_act")
    N, K = weight.shape
    x2 = x.reshape(math.prod(x.shape[:-1]), K)
    # Allocated in its final shape: a custom op must not return a view (the caller may modify it in place).
    out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    _gemm(x2, weight.t(), out.view(x2.shape[0], N), bias=bias, act=ACT_CODE[activation], params=(alpha, beta))
    return out


@custom_op("linear_act_backward")
def linear_act_backward(grad_out, x, weight, bias, out, activation, alpha, beta, output_mask):
    """(grad_x, grad_weight, grad_bias) of linear_act; a result not selected by output_mask (or grad_bias
    without a bias) is None."""
    check_dtype(x, "linear_act_backward")
    check_saved_output(out, activation, "linear_act_backward")
    check_activation_args(activation, alpha, beta, "linear_act_backward")
    N, K = weight.shape
    M = math.prod(x.shape[:-1])
    x2 = x.reshape(M, K)
    need_x, need_w, need_b = output_mask[0], output_mask[1], output_mask[2] and bias is not None
    grad_x = torch.empty((M, K), dtype=x.dtype, device=x.device) if need_x else None
    grad_w = torch.empty((N, K), dtype=x.dtype, device=x.device) if need_w else None
    # grad_bias is summed in the accumulation type and rounded once.
    grad_b = torch.empty(N, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)

    g = grad_out.reshape(M, N).contiguous()
    if activation in NEEDS_PREACTIVATION:
        # Recompute z = x W^T + b and turn it into dz = g * act'(z) in the same epilogue.
        dz = torch.empty((M, N), dtype=x.dtype, device=x.device)
        if need_x or need_w or need_b:
            _gemm(x2, weight.t(), dz, bias=bias, act=ACT_CODE[activation], params=(alpha, beta),
                  epilogue=EPILOGUE_GRAD, g=g)
        a_act, s = 0, None
    elif activation in NEEDS_OUTPUT:
        # dz = g * act'(y) is formed on load inside the two GEMMs below.
        dz, a_act, s = g, ACT_CODE[activation], out.reshape(M, N).contiguous()
    else:  # "none": dz = g
        dz, a_act, s = g, 0, None

    if need_x:  # dx = dz @ W
        _gemm(dz, weight, grad_x, a_act=a_act, s=s, params=(alpha, beta))
    if need_w or need_b:  # dW = dz^T @ x, db = row sums of dz^T
        _gemm(dz.t(), x2, grad_w if need_w else x2, a_act=a_act, s=None if s is None else s.t(),
              params=(alpha, beta), rowsum=grad_b if need_b else None, with_dot=need_w)
    return grad_x.view(x.shape) if need_x else None, grad_w, grad_b.to(x.dtype) if need_b else None
