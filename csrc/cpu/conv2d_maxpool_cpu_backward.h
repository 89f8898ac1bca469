// The sparse backward of the fused conv2d_maxpool block on the CPU (conv2d_maxpool_cpu_backward.cpp), called
// by conv2d_maxpool_backward (conv2d_maxpool_cpu.cpp).
//
// dL/dz (z the pre-activation) is zero except at each pooling window's maximum, so the conv's gradients need
// only the routed (position, value) pairs: grad_w[k] = sum over the maxima of plane k of value * the input
// patch there, grad_x = sum over the maxima of value * w[k] placed at the patch, about 1 / window of the dense
// passes' work. The input is copied once into a zero-padded channels-last buffer and the weights into
// [K, KH, KW, Cg], so that a patch and a weight row are runs of contiguous channels (KW * C of them per kernel
// row when there are no groups and no dilation along W): grad_w sums, for one output channel and one band of
// pooled rows, value * patch run over the band's maxima in registers; grad_x sums, at one conv position,
// value * weight run over the channels whose maximum sits there, and adds the result to the padded input
// gradient once.
//
// Deterministic: grad_w is split over output channels and grad_x over images, and each sums its terms in a
// fixed order (images, bands, windows in pooled order; at one conv position, channels in order), so the bits
// do not depend on the thread count. They are not the dense passes' bits (another summation order).
#pragma once

#include <cstdint>
#include <vector>

#include "common/op_args.h"
#include "cpu/conv2d_maxpool_cpu_backward_x86.h"

namespace dlkernels {
namespace cpu {

// Whether the sparse backward is taken for this block: where the windows' maxima are at most half of the conv
// positions (windows that overlap heavily leave little to skip) and a run of channels fills a vector (a
// depthwise or few-channel conv gathers runs too short to pay for their bookkeeping; its dense passes are
// direct kernels).
bool conv2d_maxpool_sparse_backward_wins(const BlockShape& b);

// The routed values: for plane (n, k) and pooled position o, at [(n * K + k) * PH * PW + o], the conv
// position h * OW + w of the window's maximum (-1: none) and dL/dz there.
template <typename acc_t>
class SparseBlockBackward {
 public:
  // x [N, C, H, W] and w [K, Cg, KH, KW]: NCHW-contiguous acc_t buffers that outlive this object. patches:
  // grad_weight or preactivation will be called; rows: grad_input or preactivation.
  SparseBlockBackward(const BlockShape& b, const acc_t* x, const acc_t* w, bool patches, bool rows);

  // z - bias at conv position (h, w) of plane (n, k).
  acc_t preactivation(int64_t n, int64_t k, int64_t h, int64_t w) const;

  // gw [K, Cg, KH, KW] and gx [N, C, H, W] (NCHW-contiguous acc_t), written in full.
  void grad_weight(const int32_t* pos, const acc_t* val, acc_t* gw) const;
  void grad_input(const int32_t* pos, const acc_t* val, acc_t* gx) const;

 private:
  // Where the patch of conv position (h, w) starts in xp_ (and its input gradient in a buffer like it).
  int64_t patch_base(int64_t n, int64_t group, int64_t h, int64_t w) const {
    const ConvShape& s = b_.conv;
    return ((n * hp_ + h * s.sh) * wp_ + w * s.sw) * s.C + group * s.Cg;
  }

  BlockShape b_;
  int64_t hp_, wp_;                       // the padded input's height and width
  int64_t run_len_;                       // channels per run
  int64_t row_len_;                       // a weight row, KH * KW * Cg
  std::vector<int64_t> x_runs_, w_runs_;  // each run's start in a patch of xp_ and in a row of w_rows_
  std::vector<acc_t> xp_;                 // [N, H + 2 ph, W + 2 pw, C], zero padding
  std::vector<acc_t> w_rows_;             // [K, KH, KW, Cg]
  const SparseBlockKernels<acc_t>& kernels_;
};

}  // namespace cpu
}  // namespace dlkernels
