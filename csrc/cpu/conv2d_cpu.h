// The parts of the conv2d CPU kernels (conv2d_cpu.cpp) that the fused conv2d_maxpool block
// (conv2d_maxpool_cpu.cpp) shares: its forward packs the same implicit-im2col panels for the same GEMM
// micro-kernel, and its backward ends in the conv's own grad_input / grad_weight passes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/op_args.h"

namespace dlkernels {
namespace cpu {

// Rows [k0, k0 + kc) x columns [j0, j0 + nr) of one image-group's im2col matrix (k = (c, kh, kw), j = (oh,
// ow) flattened) into a B panel of NR columns, zeros past nr and in the padding. xg: the group's first input
// plane (NCHW). acc_t: float or double.
template <typename acc_t>
void conv2d_pack_im2col(const ConvShape& s, const acc_t* xg, int64_t j0, int nr, int64_t k0, int64_t kc, acc_t* dst,
                        int NR);

// z [N, K, OH, OW] = conv2d(x, w) + bias (NCHW-contiguous acc_t buffers; bias may be null): the
// pre-activation, which the backward of gelu-like activations recomputes.
template <typename acc_t>
void conv2d_preactivation_kernel(const ConvShape& s, const acc_t* x, const acc_t* w, const acc_t* bias, acc_t* z);

// grad_x and grad_w of a convolution from gz = dL/d(pre-activation), an NCHW-contiguous [N, K, OH, OW] tensor
// in the accumulation type (float for bf16/fp16, else x's dtype). grad_x (x's shape) and grad_w (weight's)
// are NCHW-contiguous tensors of x's dtype, written in full; an undefined one is not computed. x is read
// only for grad_w, weight only for grad_x.
void conv2d_backward_from_grad_preactivation(const ConvShape& s, const at::Tensor& gz, const at::Tensor& x,
                                             const at::Tensor& weight, const at::Tensor& grad_x,
                                             const at::Tensor& grad_w);

}  // namespace cpu
}  // namespace dlkernels
