"""The fused Conv -> activation -> MaxPool block in Triton: custom ops dlkernels_triton::conv2d_maxpool
(conv2d_maxpool_forward) and ::conv2d_maxpool_backward (conv2d_maxpool_backward); their schemas, fake kernels
and autograd are dlkernels.contract's.

Forward: one program computes a tile of pooled outputs (pooled pixels x output channels of one group). For
each window position (dh, dw), in the window's row-major order, it computes the conv output at that position
for the whole tile as an implicit GEMM (conv2d.py's loops), adds the bias, applies the activation, rounds to
the output dtype (torch's composite compares rounded values) and updates the running max by PyTorch's rule
((v > max) | isnan(v); ties keep the first, the last NaN wins), skipping positions outside the conv output.
The conv output lives in registers only: the pooled output and the window index (contract.pool_index_dtype)
are the only writes. Overlapping windows (kernel > stride) compute the shared positions again.

Backward: dz (the gradient of the pre-activation, the size of the conv output) is a gather, no scatter: each
conv position visits the windows that contain it, in increasing (ph, pw) order, and adds grad_out * act'(.)
of those whose index names it (act' from the pooled output, from the recomputed pre-activation for
gelu-like activations, or 1), so it is deterministic and needs no zero fill. Then conv2d's own backward
kernels (conv2d.py, activation "none") give grad_x, grad_weight and grad_bias from dz.
"""
import torch
import triton
import triton.language as tl

from ..contract import conv2d_maxpool_output_shape, conv_output_shape, empty_like_format, pool_index_dtype
from . import conv2d as _conv2d
from ._common import (ACT_CODE, NEEDS_OUTPUT, NEEDS_PREACTIVATION, acc_dtype, act_param, activation_grad,
                      apply_activation, autotune, check_activation_args, check_dtype, check_saved_output, config,
                      custom_op, device_guard, dot, dot_precision, param_args)

# Each tile is a conv GEMM per window position: conv2d's tile shapes.
BLOCK_CONFIGS = _conv2d.CONV_CONFIGS
DEFAULT_CONFIG = _conv2d.DEFAULT_CONFIG
INTERPRETER_CONFIG = config(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
ROUTE_CONFIGS = [config(BLOCK=512, num_warps=4, num_stages=1), config(BLOCK=1024, num_warps=8, num_stages=1)]
ROUTE_DEFAULT = config(BLOCK=1024, num_warps=4, num_stages=1)
ROUTE_INTERPRETER = config(BLOCK=256, num_warps=4, num_stages=1)


@autotune(BLOCK_CONFIGS, DEFAULT_CONFIG, INTERPRETER_CONFIG,
          key=["N", "C", "H", "W", "OC", "KH", "KW", "GROUPS", "PH", "PW", "PKH", "PKW", "ACT"])
@triton.jit
def _conv2d_maxpool_forward_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, idx_ptr,
    N, C, H, W, OC, OH, OW, KH, KW, GROUPS, PH, PW,
    sxn, sxc, sxh, sxw, swo, swc, swh, sww, son, soc, soh, sow,  # idx has out's strides
    SH, SW, PADH, PADW, DH, DW,
    PKH, PKW, PSH, PSW, PPH, PPW,
    ALPHA, ALPHA_LO, BETA, BETA_LO,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    Cg = C // GROUPS
    OCg = OC // GROUPS
    group = tl.program_id(2)
    p = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # pooled pixels
    oc = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group
    rk = tl.arange(0, BLOCK_K)
    mask_p = p < N * PH * PW
    mask_oc = oc < OCg
    pw = p % PW
    ph = (p // PW) % PH
    n = (p // (PH * PW)).to(tl.int64)
    oc_g = group * OCg + oc
    h0 = ph * PSH - PPH  # the window's corner, padding included
    w0 = pw * PSW - PPW
    alpha = act_param(ALPHA, ALPHA_LO, ACC_DTYPE)
    beta = act_param(BETA, BETA_LO, ACC_DTYPE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + oc_g, mask=mask_oc, other=0.0).to(ACC_DTYPE)

    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), ACC_DTYPE)
    # The first in-bounds position (the index a window of -inf values reports, as torch).
    first = tl.maximum(-h0, 0) * PKW + tl.maximum(-w0, 0)
    best_idx = tl.zeros((BLOCK_M, BLOCK_N), tl.int32) + first[:, None]
    for dh in range(PKH):
        oh = h0 + dh
        for dw in range(PKW):
            ow = w0 + dw
            tap = mask_p & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for kh in range(KH):
                ih = oh * SH - PADH + kh * DH
                for kw in range(KW):
                    iw = ow * SW - PADW + kw * DW
                    inside = tap & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    x_pix = x_ptr + n * sxn + ih * sxh + iw * sxw + group * Cg * sxc
                    w_tap = w_ptr + oc_g.to(tl.int64) * swo + kh * swh + kw * sww
                    for c0 in range(0, Cg, BLOCK_K):
                        c = c0 + rk
                        mask_c = c < Cg
                        a = tl.load(x_pix[:, None] + c[None, :] * sxc, mask=inside[:, None] & mask_c[None, :],
                                    other=0.0)
                        b = tl.load(w_tap[None, :] + c[:, None] * swc, mask=mask_c[:, None] & mask_oc[None, :],
                                    other=0.0)
                        acc = dot(a, b, acc, PRECISION)
            if HAS_BIAS:
                acc += bias[None, :]
            # Compared as torch's composite compares them: after the activation, rounded to the output dtype.
            v = apply_activation(acc, ACT, alpha, beta).to(out_ptr.dtype.element_ty).to(ACC_DTYPE)
            take = tap[:, None] & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            best_idx = tl.where(take, dh * PKW + dw, best_idx)

    offs = (n * son + ph * soh + pw * sow)[:, None] + oc_g[None, :] * soc
    mask = mask_p[:, None] & mask_oc[None, :]
    tl.store(out_ptr + offs, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + offs, best_idx.to(idx_ptr.dtype.element_ty), mask=mask)


@autotune(ROUTE_CONFIGS, ROUTE_DEFAULT, ROUTE_INTERPRETER, key=["total", "PKH", "PKW", "ACT", "FROM_Z"])
@triton.jit
def _conv2d_maxpool_route_kernel(
    g_ptr, s_ptr, idx_ptr, z_ptr, dz_ptr,
    total, OC, OH, OW, PH, PW,
    sgn, sgc, sgh, sgw,  # grad_out's strides, shared by the saved output and the index
    PKH, PKW, PSH, PSW, PPH, PPW, MAX_WH, MAX_WW,
    ALPHA, ALPHA_LO, BETA, BETA_LO,
    ACT: tl.constexpr, FROM_Z: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    """dz[n, oc, h, w] (NCHW-contiguous, like z) = sum over the windows whose maximum is (h, w) of
    grad_out * act'(.), in increasing (ph, pw) order. MAX_WH, MAX_WW: the most windows a row / column lies in."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    w = offs % OW
    h = (offs // OW) % OH
    plane = offs // (OH * OW)
    oc = plane % OC
    n = plane // OC
    alpha = act_param(ALPHA, ALPHA_LO, ACC_DTYPE)
    beta = act_param(BETA, BETA_LO, ACC_DTYPE)
    if FROM_Z:
        d_here = activation_grad(tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE), ACT, alpha, beta)
    acc = tl.zeros((BLOCK,), ACC_DTYPE)
    ph_last = (h + PPH) // PSH  # the last window whose rows start at or before h
    pw_last = (w + PPW) // PSW
    for i in range(MAX_WH):
        ph = ph_last - (MAX_WH - 1) + i
        dh = h - (ph * PSH - PPH)
        row_ok = mask & (ph >= 0) & (ph < PH) & (dh < PKH)
        for j in range(MAX_WW):
            pw = pw_last - (MAX_WW - 1) + j
            dw = w - (pw * PSW - PPW)
            ok = row_ok & (pw >= 0) & (pw < PW) & (dw < PKW)
            at = n * sgn + oc * sgc + ph * sgh + pw * sgw
            hit = ok & (tl.load(idx_ptr + at, mask=ok, other=-1).to(tl.int32) == dh * PKW + dw)
            g = tl.load(g_ptr + at, mask=hit, other=0.0).to(ACC_DTYPE)
            if FROM_Z:
                g = g * d_here
            elif ACT != 0:
                g = g * activation_grad(tl.load(s_ptr + at, mask=hit, other=0.0).to(ACC_DTYPE), ACT, alpha, beta)
            acc += tl.where(hit, g, 0.0)
    tl.store(dz_ptr + offs, acc.to(dz_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Host side


@custom_op("conv2d_maxpool")
def conv2d_maxpool_forward(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                           pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode):
    check_dtype(x, "conv2d_maxpool")
    check_activation_args(activation, alpha, beta, "conv2d_maxpool")
    shape = conv2d_maxpool_output_shape(x, weight, stride, padding, dilation, pool_kernel_size, pool_stride,
                                        pool_padding, pool_ceil_mode)
    out = empty_like_format(shape, x)
    index = empty_like_format(shape, x, pool_index_dtype(pool_kernel_size))
    N, OC, PH, PW = shape
    if out.numel() == 0:
        return out, index
    _, _, OH, OW = conv_output_shape(x, weight, stride, padding, dilation)
    grid = lambda meta: (triton.cdiv(N * PH * PW, meta["BLOCK_M"]), triton.cdiv(OC // groups, meta["BLOCK_N"]),
                         groups)
    with device_guard(x):
        _conv2d_maxpool_forward_kernel[grid](
            x, weight, x if bias is None else bias, out, index,
            *_conv2d._shape_args(x, weight, (OH, OW), groups), PH, PW, *x.stride(), *weight.stride(), *out.stride(),
            *_conv2d._window(stride, padding, dilation), *pool_kernel_size, *pool_stride, *pool_padding,
            *param_args(alpha, beta),
            HAS_BIAS=bias is not None, ACT=ACT_CODE[activation],
            PRECISION=dot_precision(x.dtype, _conv2d._allow_tf32()), ACC_DTYPE=acc_dtype(x.dtype))
    return out, index


@custom_op("conv2d_maxpool_backward")
def conv2d_maxpool_backward(grad_out, x, weight, bias, out, index, stride, padding, dilation, groups, activation,
                            alpha, beta, pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode, output_mask):
    """(grad_x, grad_weight, grad_bias) of conv2d_maxpool; a result not selected by output_mask (or grad_bias
    without a bias) is None."""
    check_dtype(x, "conv2d_maxpool_backward")
    check_saved_output(out, activation, "conv2d_maxpool_backward")
    check_activation_args(activation, alpha, beta, "conv2d_maxpool_backward")
    need_b = output_mask[2] and bias is not None
    if not (output_mask[0] or output_mask[1] or need_b):
        return None, None, None
    conv_shape = conv_output_shape(x, weight, stride, padding, dilation)
    N, OC, OH, OW = conv_shape
    act = ACT_CODE[activation]
    from_z = activation in NEEDS_PREACTIVATION
    # grad_out, the saved output and the index are read through the same strides.
    fmt = torch.contiguous_format
    g = grad_out.contiguous(memory_format=fmt)
    s = out.contiguous(memory_format=fmt) if activation in NEEDS_OUTPUT else g
    idx = index.contiguous(memory_format=fmt)
    dz = torch.empty(conv_shape, dtype=x.dtype, device=x.device)  # NCHW, the operand of conv2d's backward
    z = dz
    if from_z:  # the pre-activation, recomputed by conv2d's forward kernel (no activation)
        z = torch.empty(conv_shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                        device=x.device)
        _conv2d._launch_forward(x, weight, bias, z, None, stride, padding, dilation, groups, 0, (0.0, 0.0), 0)
    total = dz.numel()
    if total:
        windows = [-(-k // s_) for k, s_ in zip(pool_kernel_size, pool_stride)]
        with device_guard(x):
            _conv2d_maxpool_route_kernel[lambda meta: (triton.cdiv(total, meta["BLOCK"]),)](
                g, s, idx, z, dz, total, OC, OH, OW, *g.shape[2:], *g.stride(), *pool_kernel_size, *pool_stride,
                *pool_padding, *windows, *param_args(alpha, beta),
                ACT=act, FROM_Z=from_z, ACC_DTYPE=acc_dtype(x.dtype))
    # conv2d's backward with activation "none": dz is the gradient of its (pre-activation) output.
    mask = [output_mask[0], output_mask[1], need_b]
    return torch.ops.dlkernels_triton.conv2d_backward(dz, x, weight, bias, None, stride, padding, dilation, groups,
                                                      "none", 0.0, 0.0, mask)
