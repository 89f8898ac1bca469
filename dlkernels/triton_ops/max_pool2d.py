"""max_pool2d in Triton, as custom ops dlkernels_triton::max_pool2d (max_pool2d_forward),
::max_pool2d_with_indices (max_pool2d_with_indices_forward) and ::max_pool2d_backward (max_pool2d_backward),
with PyTorch's exact semantics (schemas, fake kernels and autograd are dlkernels.contract's):

- the window start is moved into the input by whole dilation steps (padding is never read), the window end
  clamped to the input;
- the running max starts at -inf with the index of the first in-bounds element, and is replaced when
  `val > max or isnan(val)` (so NaN wins, and among NaNs the last one; among equal values the first);
- indices are flat offsets into each (H, W) plane.

Each program handles BLOCK outputs (forward) or BLOCK inputs (backward), numbered in the memory order of the
tensor it writes (NCHW or channels_last), so stores are contiguous and, for channels_last, loads too.

The backward is a gather, not a scatter: each input element visits the output windows that can contain
it and adds the gradients whose index points at it, in increasing (oh, ow) order, which is the order in
which PyTorch adds them. No atomics, no zero-fill pass, deterministic, and bit-identical to PyTorch in
float32/float64 (16-bit types are added in float32 and rounded once).
"""
import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from ..contract import empty_like_format, pool_output_shape
from ._common import autotune, check_dtype, config, custom_op, device_guard

# Memory-bound: large blocks of independent outputs per program, enough warps in flight to cover the
# latency of HBM3 on Hopper; the autotuner picks per shape and layout.
POOL_CONFIGS = [
    config(BLOCK=512, num_warps=4, num_stages=1),
    config(BLOCK=1024, num_warps=4, num_stages=1),
    config(BLOCK=1024, num_warps=8, num_stages=1),
    config(BLOCK=2048, num_warps=8, num_stages=1),
]
DEFAULT_CONFIG = config(BLOCK=1024, num_warps=4, num_stages=1)  # autotuning off
INTERPRETER_CONFIG = config(BLOCK=256, num_warps=4, num_stages=1)


@triton.jit
def _unflatten(idx, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of flat positions idx in an (N, C, H, W) tensor laid out NCHW or NHWC."""
    if CHANNELS_LAST:
        c = idx % C
        t = idx // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
    else:
        w = idx % W
        t = idx // W
        h = t % H
        t = t // H
        c = t % C
        n = t // C
    return n, c, h, w


@autotune(POOL_CONFIGS, DEFAULT_CONFIG, INTERPRETER_CONFIG,
          key=["total", "C", "KH", "KW", "CHANNELS_LAST", "WITH_INDICES"])
@triton.jit
def _max_pool2d_forward_kernel(
    x_ptr, out_ptr, idx_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    KH, KW, SH, SW, PH, PW, DH, DW,
    CHANNELS_LAST: tl.constexpr, WITH_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, c, oh, ow = _unflatten(offs, C, OH, OW, CHANNELS_LAST)

    h0 = oh * SH - PH
    w0 = ow * SW - PW
    h_end = tl.minimum(h0 + (KH - 1) * DH + 1, H)
    w_end = tl.minimum(w0 + (KW - 1) * DW + 1, W)
    # Move a start in the padding forward by whole dilation steps, into the input.
    h0 += (tl.maximum(-h0, 0) + DH - 1) // DH * DH
    w0 += (tl.maximum(-w0, 0) + DW - 1) // DW * DW

    plane = x_ptr + n * sxn + c * sxc
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    if x_ptr.dtype.element_ty == tl.float64:
        best = best.to(tl.float64)
    best_idx = h0 * W + w0
    for kh in range(KH):
        ih = h0 + kh * DH
        for kw in range(KW):
            iw = w0 + kw * DW
            valid = mask & (ih < h_end) & (iw < w_end)
            val = tl.load(plane + ih * sxh + iw * sxw, mask=valid, other=float("-inf")).to(best.dtype)
            take = valid & ((val > best) | (val != val))
            best = tl.where(take, val, best)
            best_idx = tl.where(take, ih * W + iw, best_idx)
    tl.store(out_ptr + offs, best.to(out_ptr.dtype.element_ty), mask=mask)
    if WITH_INDICES:
        tl.store(idx_ptr + offs, best_idx, mask=mask)


@autotune(POOL_CONFIGS, DEFAULT_CONFIG, INTERPRETER_CONFIG, key=["total", "C", "KH", "KW", "CHANNELS_LAST"])
@triton.jit
def _max_pool2d_grad_input_kernel(
    grad_ptr, idx_ptr, gx_ptr,
    total, C, H, W, OH, OW,
    sgn, sgc, sgh, sgw,  # strides of grad_out, shared by indices
    KH, KW, SH, SW, PH, PW, DH, DW,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, c, ih, iw = _unflatten(offs, C, H, W, CHANNELS_LAST)
    me = ih * W + iw
    base = n * sgn + c * sgc
    acc = tl.zeros((BLOCK,), tl.float32)  # 16-bit gradients are added in float32, float64 in float64
    if gx_ptr.dtype.element_ty == tl.float64:
        acc = acc.to(tl.float64)
    # Input row ih lies in the window of output row oh at kernel row kh when ih = oh*SH - PH + kh*DH.
    # Walking kh downwards visits oh upwards (and kw/ow likewise): PyTorch's order of addition.
    for i in range(KH):
        kh = KH - 1 - i
        oh_num = ih + PH - kh * DH
        oh = oh_num // SH
        row_ok = (oh_num >= 0) & (oh_num % SH == 0) & (oh < OH)
        for j in range(KW):
            kw = KW - 1 - j
            ow_num = iw + PW - kw * DW
            ow = ow_num // SW
            ok = mask & row_ok & (ow_num >= 0) & (ow_num % SW == 0) & (ow < OW)
            at = base + oh * sgh + ow * sgw
            hit = ok & (tl.load(idx_ptr + at, mask=ok, other=-1) == me)
            acc += tl.load(grad_ptr + at, mask=hit, other=0.0).to(acc.dtype)
    tl.store(gx_ptr + offs, acc.to(gx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Host side


def _window_args(kernel_size, stride, padding, dilation):
    return (*kernel_size, *stride, *padding, *dilation)


def _launch_forward(x, kernel_size, stride, padding, dilation, ceil_mode, with_indices):
    check_dtype(x, "max_pool2d")
    fmt = suggest_memory_format(x)
    shape = pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    out = empty_like_format(shape, x)
    indices = empty_like_format(shape, x, torch.int64) if with_indices else out
    total = out.numel()
    if total:
        with device_guard(x):
            _max_pool2d_forward_kernel[lambda meta: (triton.cdiv(total, meta["BLOCK"]),)](
                x, out, indices, total, x.shape[1], x.shape[2], x.shape[3], shape[2], shape[3], *x.stride(),
                *_window_args(kernel_size, stride, padding, dilation),
                CHANNELS_LAST=fmt == torch.channels_last, WITH_INDICES=with_indices)
    return out, indices


@custom_op("max_pool2d")
def max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    return _launch_forward(x, kernel_size, stride, padding, dilation, ceil_mode, with_indices=False)[0]


@custom_op("max_pool2d_with_indices")
def max_pool2d_with_indices_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    return _launch_forward(x, kernel_size, stride, padding, dilation, ceil_mode, with_indices=True)


@custom_op("max_pool2d_backward")
def max_pool2d_backward(grad_out, x, indices, kernel_size, stride, padding, dilation, ceil_mode):
    fmt = suggest_memory_format(x)
    grad_x = empty_like_format(x.shape, x)
    # indices and grad_out are read through the same strides.
    if grad_out.stride() != indices.stride():
        grad_out = grad_out.contiguous(memory_format=suggest_memory_format(indices))
        indices = indices.contiguous(memory_format=suggest_memory_format(indices))
    total = grad_x.numel()
    if total:
        with device_guard(x):
            _max_pool2d_grad_input_kernel[lambda meta: (triton.cdiv(total, meta["BLOCK"]),)](
                grad_out, indices, grad_x, total, x.shape[1], x.shape[2], x.shape[3],
                grad_out.shape[2], grad_out.shape[3], *grad_out.stride(),
                *_window_args(kernel_size, stride, padding, dilation), CHANNELS_LAST=fmt == torch.channels_last)
    return grad_x
