"""conv2d in Triton as implicit GEMMs: custom ops dlkernels_triton::conv2d (conv2d_forward) and
::conv2d_backward (conv2d_backward); their schemas, fake kernels and autograd are dlkernels.contract's.

No im2col buffer: each kernel computes the input (or output) coordinates of its tile on the fly and loads
straight from the 4-D tensors through their strides, so NCHW and channels_last inputs take the same code
(channels_last makes the channel loads contiguous). Per group g, with P = N*OH*OW output pixels and
Cg = C/groups, OCg = OC/groups:

  forward    out[p, oc]         = sum_{kh,kw,c} x[n, c, ih, iw] * w[oc, c, kh, kw]    GEMM P x OCg,  K = kh*kw*Cg
  grad x     dx[q, c]           = sum_{kh,kw,oc} dz[n, oc, oh, ow] * w[oc, c, kh, kw]  GEMM (N*H*W) x Cg, K = kh*kw*OCg
  grad w     dw[oc, (c,kh,kw)]  = sum_p dz[p, oc] * x[n, c, ih, iw]                    GEMM OCg x (Cg*kh*kw), K = P

The reduction loops run over (kh, kw) outside and channel slices inside, so the innermost loop has no
division. Fusions are those of linear_act.py: bias + activation in the forward epilogue; dz = g * act'(y)
formed on load for relu/sigmoid/tanh/none; for gelu/gelu_tanh/silu the pre-activation is recomputed by
the forward kernel with an epilogue that writes dz (nothing saved in the forward); grad_bias summed by the
grad-w kernel from the dz tiles it loads anyway. The grad-w reduction over P is split over SPLIT_P
programs when its output alone is too small to fill the GPU (float32 partials, summed afterwards).
"""
import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from ..contract import conv_output_shape, empty_like_format
from ._common import (ACT_CODE, NEEDS_OUTPUT, NEEDS_PREACTIVATION, acc_dtype, act_param, activation_grad,
                      apply_activation, autotune, cdiv, check_activation_args, check_dtype, check_saved_output, config,
                      param_args, custom_op, device_guard, dot, dot_precision, grad_operand)

# Hopper: the pixel dimension is long, the channel dimension usually 64-512: 128-pixel tiles with 64 or 128
# output channels, channel slices of 32/64 (one 3x3 tap of a 64-channel layer per step), 3-4 stages. The
# 128x128 and 128x64 tiles take 8 warps: with 4, the grad-input kernel spills registers.
CONV_CONFIGS = [
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=3),  # few channels per group
    config(BLOCK_M=128, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=3),  # depthwise-like
]
# float32 inputs: the same tiles need twice the shared memory and more registers; K slices of 16 keep the
# TF32 tensor-core path (torch's default for convolutions) free of spills.
CONV_CONFIGS_FP32 = [
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=16, num_warps=8, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=16, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=32, BLOCK_K=16, num_warps=8, num_stages=3),  # few channels per group
    config(BLOCK_M=128, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=3),  # depthwise-like
]
DEFAULT_CONFIG = config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)  # autotuning off
# Under the interpreter every program costs Python time: long pixel tiles, few programs.
INTERPRETER_CONFIG = config(BLOCK_M=128, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
# grad w reduces over pixels (its K); its M and N are channels.
INTERPRETER_CONFIG_GRAD_W = config(BLOCK_M=16, BLOCK_N=16, BLOCK_K=128, num_warps=4, num_stages=1)

_SHAPE_KEY = ["N", "C", "H", "W", "OC", "OH", "OW", "KH", "KW", "GROUPS"]


@autotune(CONV_CONFIGS, DEFAULT_CONFIG, INTERPRETER_CONFIG, key=_SHAPE_KEY + ["ACT", "EPILOGUE"],
          float32_configs=CONV_CONFIGS_FP32)
@triton.jit
def _conv2d_forward_kernel(
    x_ptr, w_ptr, bias_ptr, g_ptr, out_ptr,
    N, C, H, W, OC, OH, OW, KH, KW, GROUPS,
    sxn, sxc, sxh, sxw, swo, swc, swh, sww, son, soc, soh, sow,  # g (EPILOGUE 1) has out's strides
    SH, SW, PH, PW, DH, DW,
    ALPHA, ALPHA_LO, BETA, BETA_LO,  # the activation's parameters (param_args), runtime values
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, EPILOGUE: tl.constexpr,  # 0: act(z); 1: g * act'(z)
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    Cg = C // GROUPS
    OCg = OC // GROUPS
    group = tl.program_id(2)
    p = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels
    oc = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group
    rk = tl.arange(0, BLOCK_K)
    mask_p = p < N * OH * OW
    mask_oc = oc < OCg
    ow = p % OW
    oh = (p // OW) % OH
    n = (p // (OH * OW)).to(tl.int64)
    oc_g = group * OCg + oc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kh in range(KH):
        ih = oh * SH - PH + kh * DH
        for kw in range(KW):
            iw = ow * SW - PW + kw * DW
            inside = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_pix = x_ptr + n * sxn + ih * sxh + iw * sxw + group * Cg * sxc
            w_tap = w_ptr + oc_g.to(tl.int64) * swo + kh * swh + kw * sww
            for c0 in range(0, Cg, BLOCK_K):
                c = c0 + rk
                mask_c = c < Cg
                a = tl.load(x_pix[:, None] + c[None, :] * sxc, mask=inside[:, None] & mask_c[None, :], other=0.0)
                b = tl.load(w_tap[None, :] + c[:, None] * swc, mask=mask_c[:, None] & mask_oc[None, :], other=0.0)
                acc = dot(a, b, acc, PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + oc_g, mask=mask_oc, other=0.0).to(ACC_DTYPE)[None, :]
    out_offs = (n * son + oh * soh + ow * sow)[:, None] + oc_g[None, :] * soc
    out_mask = mask_p[:, None] & mask_oc[None, :]
    alpha = act_param(ALPHA, ALPHA_LO, ACC_DTYPE)
    beta = act_param(BETA, BETA_LO, ACC_DTYPE)
    if EPILOGUE == 0:
        acc = apply_activation(acc, ACT, alpha, beta)
    else:
        acc = tl.load(g_ptr + out_offs, mask=out_mask, other=0.0).to(ACC_DTYPE) * activation_grad(acc, ACT, alpha,
                                                                                                  beta)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@autotune(CONV_CONFIGS, DEFAULT_CONFIG, INTERPRETER_CONFIG, key=_SHAPE_KEY + ["A_ACT"],
          float32_configs=CONV_CONFIGS_FP32)
@triton.jit
def _conv2d_grad_input_kernel(
    g_ptr, s_ptr, w_ptr, gx_ptr,
    N, C, H, W, OC, OH, OW, KH, KW, GROUPS,
    sgn, sgc, sgh, sgw, swo, swc, swh, sww, sxn, sxc, sxh, sxw,  # s has g's strides; sx* are grad_x's
    SH, SW, PH, PW, DH, DW,
    ALPHA, ALPHA_LO, BETA, BETA_LO,
    A_ACT: tl.constexpr, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    Cg = C // GROUPS
    OCg = OC // GROUPS
    group = tl.program_id(2)
    q = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels
    c = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels within the group
    rk = tl.arange(0, BLOCK_K)
    mask_q = q < N * H * W
    mask_c = c < Cg
    iw = q % W
    ih = (q // W) % H
    n = (q // (H * W)).to(tl.int64)
    c_g = group * Cg + c
    alpha = act_param(ALPHA, ALPHA_LO, ACC_DTYPE)
    beta = act_param(BETA, BETA_LO, ACC_DTYPE)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kh in range(KH):
        # Output row oh reads ih at tap kh when oh*SH - PH + kh*DH == ih.
        oh_num = ih + PH - kh * DH
        oh = oh_num // SH
        row_ok = (oh_num >= 0) & (oh_num % SH == 0) & (oh < OH)
        for kw in range(KW):
            ow_num = iw + PW - kw * DW
            ow = ow_num // SW
            ok = mask_q & row_ok & (ow_num >= 0) & (ow_num % SW == 0) & (ow < OW)
            g_pix = n * sgn + oh * sgh + ow * sgw + group * OCg * sgc
            w_tap = w_ptr + c * swc + kh * swh + kw * sww  # weight's dim 1 is the channel within the group
            for o0 in range(0, OCg, BLOCK_K):
                o = o0 + rk
                mask_o = o < OCg
                g_offs = g_pix[:, None] + o[None, :] * sgc
                a = grad_operand(g_ptr + g_offs, s_ptr + g_offs, ok[:, None] & mask_o[None, :], A_ACT, alpha, beta,
                                 ACC_DTYPE)
                b = tl.load(w_tap[None, :] + (group * OCg + o)[:, None].to(tl.int64) * swo,
                            mask=mask_o[:, None] & mask_c[None, :], other=0.0)
                acc = dot(a, b, acc, PRECISION)

    gx_offs = (n * sxn + ih * sxh + iw * sxw)[:, None] + c_g[None, :] * sxc
    tl.store(gx_ptr + gx_offs, acc.to(gx_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_c[None, :])


@autotune(CONV_CONFIGS, DEFAULT_CONFIG, INTERPRETER_CONFIG_GRAD_W,
          key=_SHAPE_KEY + ["A_ACT", "SPLIT_P", "BIAS_GRAD", "DOT"], float32_configs=CONV_CONFIGS_FP32)
@triton.jit
def _conv2d_grad_weight_kernel(
    g_ptr, s_ptr, x_ptr, gw_ptr, gb_ptr,
    N, C, H, W, OC, OH, OW, KH, KW, GROUPS,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,  # s has g's strides
    SH, SW, PH, PW, DH, DW,
    ALPHA, ALPHA_LO, BETA, BETA_LO,
    SPLIT_P,  # the pixel reduction is cut in SPLIT_P chunks; partial results go to gw[split], gb[split]
    A_ACT: tl.constexpr, BIAS_GRAD: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    Cg = C // GROUPS
    OCg = OC // GROUPS
    P = N * OH * OW
    tap = tl.program_id(1) % (KH * KW)
    kh = tap // KW
    kw = tap % KW
    group = tl.program_id(2) % GROUPS
    split = tl.program_id(2) // GROUPS
    oc = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels within the group (rows)
    c = (tl.program_id(1) // (KH * KW)) * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels (columns)
    rk = tl.arange(0, BLOCK_K)
    mask_oc = oc < OCg
    mask_c = c < Cg
    oc_g = group * OCg + oc
    c_g = group * Cg + c
    chunk = tl.cdiv(tl.cdiv(P, SPLIT_P), BLOCK_K) * BLOCK_K
    p_begin = split * chunk
    p_end = tl.minimum(p_begin + chunk, P)
    alpha = act_param(ALPHA, ALPHA_LO, ACC_DTYPE)
    beta = act_param(BETA, BETA_LO, ACC_DTYPE)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    for p0 in range(p_begin, p_end, BLOCK_K):
        p = p0 + rk
        mask_p = p < p_end
        ow = p % OW
        oh = (p // OW) % OH
        n = (p // (OH * OW)).to(tl.int64)
        g_offs = (n * sgn + oh * sgh + ow * sgw)[None, :] + oc_g[:, None].to(tl.int64) * sgc  # dz^T tile
        a = grad_operand(g_ptr + g_offs, s_ptr + g_offs, mask_oc[:, None] & mask_p[None, :], A_ACT, alpha, beta,
                         ACC_DTYPE)
        if BIAS_GRAD:
            bias_acc += tl.sum(a.to(ACC_DTYPE), axis=1)
        if DOT:
            ih = oh * SH - PH + kh * DH
            iw = ow * SW - PW + kw * DW
            inside = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_offs = (n * sxn + ih * sxh + iw * sxw)[:, None] + c_g[None, :].to(tl.int64) * sxc
            b = tl.load(x_ptr + x_offs, mask=inside[:, None] & mask_c[None, :], other=0.0)
            acc = dot(a, b, acc, PRECISION)

    if BIAS_GRAD:  # the bias gradient is the same for every tap and column tile: one program writes it
        if tl.program_id(1) == 0:
            tl.store(gb_ptr + split * OC + oc_g, bias_acc, mask=mask_oc)
    if DOT:
        # gw: (SPLIT_P, OC, Cg, KH, KW), contiguous
        gw_offs = (split * OC + oc_g)[:, None].to(tl.int64) * (Cg * KH * KW) + (c * (KH * KW) + tap)[None, :]
        tl.store(gw_ptr + gw_offs, acc.to(gw_ptr.dtype.element_ty), mask=mask_oc[:, None] & mask_c[None, :])


# ---------------------------------------------------------------------------------------------------------
# Host side


def _allow_tf32():
    # The flag PyTorch's own convolutions follow (on by default), so fp32 "conv" means the same here.
    return torch.backends.cudnn.allow_tf32


def _shape_args(x, weight, out_hw, groups):
    N, C, H, W = x.shape
    return (N, C, H, W, weight.shape[0], *out_hw, weight.shape[2], weight.shape[3], groups)


def _window(stride, padding, dilation):
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


def _launch_forward(x, weight, bias, out, g, stride, padding, dilation, groups, act, params, epilogue):
    N, OC, OH, OW = out.shape
    if out.numel() == 0:
        return
    grid = lambda meta: (triton.cdiv(N * OH * OW, meta["BLOCK_M"]), triton.cdiv(OC // groups, meta["BLOCK_N"]), groups)
    with device_guard(x):
        _conv2d_forward_kernel[grid](
            x, weight, x if bias is None else bias, out if g is None else g, out,
            *_shape_args(x, weight, (OH, OW), groups), *x.stride(), *weight.stride(), *out.stride(),
            *_window(stride, padding, dilation), *param_args(*params),
            HAS_BIAS=bias is not None, ACT=act, EPILOGUE=epilogue,
            PRECISION=dot_precision(x.dtype, _allow_tf32()), ACC_DTYPE=acc_dtype(x.dtype))


@custom_op("conv2d")
def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta):
    check_dtype(x, "conv2d")
    check_activation_args(activation, alpha, beta, "conv2d")
    out = empty_like_format(conv_output_shape(x, weight, stride, padding, dilation), x)
    _launch_forward(x, weight, bias, out, None, stride, padding, dilation, groups, ACT_CODE[activation],
                    (alpha, beta), 0)
    return out


def _split_p(x, P, tiles):
    """How many chunks the grad-w pixel reduction is cut into: enough programs to fill a GPU (~4 waves of
    132 SMs) but chunks of at least 2048 pixels, so the partial sums stay a small extra cost."""
    if x.device.type != "cuda":
        return 1
    return max(1, min(cdiv(528, max(tiles, 1)), P // 2048))


@custom_op("conv2d_backward")
def conv2d_backward(grad_out, x, weight, bias, out, stride, padding, dilation, groups, activation, alpha, beta,
                    output_mask):
    """(grad_x, grad_weight, grad_bias) of conv2d; a result not selected by output_mask (or grad_bias without a
    bias) is None."""
    check_dtype(x, "conv2d_backward")
    check_saved_output(out, activation, "conv2d_backward")
    check_activation_args(activation, alpha, beta, "conv2d_backward")
    need_x, need_w, need_b = output_mask[0], output_mask[1], output_mask[2] and bias is not None
    N, C, H, W = x.shape
    OC, Cg, KH, KW = weight.shape
    OH, OW = grad_out.shape[2:]
    fmt = suggest_memory_format(out if out is not None else grad_out)
    g = grad_out.contiguous(memory_format=fmt)  # g and the saved output are read through the same strides
    act = ACT_CODE[activation]
    if activation in NEEDS_PREACTIVATION:
        dz = torch.empty_like(g)
        if need_x or need_w or need_b:
            _launch_forward(x, weight, bias, dz, g, stride, padding, dilation, groups, act, (alpha, beta), 1)
        a_act, s = 0, dz
    elif activation in NEEDS_OUTPUT:
        dz, a_act, s = g, act, out.contiguous(memory_format=fmt)
    else:  # "none": dz = g
        dz, a_act, s = g, 0, g
    shape = _shape_args(x, weight, (OH, OW), groups)
    window = (*_window(stride, padding, dilation), *param_args(alpha, beta))
    precision, acc = dot_precision(x.dtype, _allow_tf32()), acc_dtype(x.dtype)

    grad_x = empty_like_format(x.shape, x) if need_x else None
    if need_x and grad_x.numel():
        grid = lambda meta: (triton.cdiv(N * H * W, meta["BLOCK_M"]), triton.cdiv(Cg, meta["BLOCK_N"]), groups)
        with device_guard(x):
            _conv2d_grad_input_kernel[grid](
                dz, s, weight, grad_x, *shape, *dz.stride(), *weight.stride(), *grad_x.stride(), *window,
                A_ACT=a_act, PRECISION=precision, ACC_DTYPE=acc)

    grad_w, grad_b = None, None
    if need_w or need_b:
        OCg, P = OC // groups, N * OH * OW
        split = _split_p(x, P, cdiv(OCg, 64) * cdiv(Cg, 64) * KH * KW * groups)
        part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        # Partial sums in the accumulation type (float32 unless float64) when split; else the final result.
        w_part = torch.empty((split, OC, Cg, KH, KW), dtype=part_dtype if split > 1 else x.dtype, device=x.device)
        b_part = torch.empty((split, OC), dtype=part_dtype, device=x.device)
        grid = lambda meta: (triton.cdiv(OCg, meta["BLOCK_M"]),
                             (triton.cdiv(Cg, meta["BLOCK_N"]) * KH * KW) if need_w else 1, groups * split)
        with device_guard(x):
            _conv2d_grad_weight_kernel[grid](
                dz, s, x, w_part, b_part, *shape, *dz.stride(), *x.stride(), *window, split,
                A_ACT=a_act, BIAS_GRAD=need_b, DOT=need_w, PRECISION=precision, ACC_DTYPE=acc)
        if need_w:
            grad_w = w_part.sum(0).to(x.dtype) if split > 1 else w_part[0]
        if need_b:
            grad_b = b_part.sum(0).to(x.dtype)
    return grad_x, grad_w, grad_b
