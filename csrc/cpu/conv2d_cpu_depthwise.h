// The direct depthwise convolution on the CPU (conv2d_cpu_depthwise.cpp): convolutions whose groups each
// have one input channel (groups == C_in, C_out a multiple of it; also a single-channel input with
// groups == 1), forward and backward, without a GEMM. conv2d_cpu.cpp sends such shapes here: as a GEMM
// each group's product has K = kH * kW (9 for a 3x3), far too short for the micro-kernel's packing to pay.
#pragma once

#include <cstdint>

#include "common/op_args.h"

namespace dlkernels {
namespace cpu {

inline bool conv2d_is_depthwise(const ConvShape& s) { return s.Cg == 1 && s.groups == s.C; }

// The buffer geometry of the kernels (see conv2d_cpu_depthwise_kernels.h): a zero-padded input plane split
// into sw phases of Hp rows of RS elements, and for grad_x each gz plane with QL zeros on the left in rows
// of RSz. Row lengths are multiples of 16 with room for a vector read past the last element.
// The channels-last kernels (dw_channels_last) take CB channels at a time (cl_scratch elements of buffer);
// nhwc: the tensors they read and write are channels-last ([N, H, W, C] in memory), not NCHW.
struct DwGeom {
  int64_t RS, plane, RSz, QL, fwd_scratch, gx_scratch, gw_scratch, CB, cl_scratch;
  bool nhwc;
};

// Whether the forward, grad_input and grad_weight run channels-last, vectorised across channels rather than
// along the output row: one output channel per input channel and rows of at most 8 outputs (7x7, 4x4, 8x8
// planes, and the strided convolutions that give them), which fill at most half a vector, or rows under 16
// with kernels 7 or more wide, most of whose taps read padding (the channels-last kernel skips those). With
// rows of 14 or 16 and smaller kernels the row kernel measured faster. (grad_input of stride 1 is the forward
// of the flipped kernel, channels-last where that forward's rows qualify.)
inline bool dw_channels_last(const ConvShape& s) { return s.Kg == 1 && (s.OW <= 8 || (s.OW < 16 && s.KW >= 7)); }

// z [N, K, OH, OW] = conv(x, w) + bias (relu applied if asked); bias may be null. T: float or double; x and z
// NCHW-contiguous, or channels-last-contiguous when nhwc (then one output channel per input channel, s.Kg ==
// 1: the channels-last kernels read and write them as they lie, without a transposition).
template <typename T>
void depthwise_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* z, bool relu, bool nhwc = false);
// gx [N, C, H, W] from gz = dL/d(pre-activation) [N, K, OH, OW]; every element written. nhwc: as the forward's,
// for gz and gx.
template <typename T>
void depthwise_grad_input(const ConvShape& s, const T* gz, const T* w, T* gx, bool nhwc = false);
// gw [K, 1, KH, KW] from gz and x; every element written. nhwc: as the forward's, for gz and x.
template <typename T>
void depthwise_grad_weight(const ConvShape& s, const T* gz, const T* x, T* gw, bool nhwc = false);

}  // namespace cpu
}  // namespace dlkernels
