// The direct convolution for few channels on the CPU (conv2d_cpu_small.cpp): groups == 1, few input and output
// channels (conv2d_is_small), forward and backward without a GEMM. conv2d_cpu.cpp and
// the conv2d_maxpool block send such shapes here: as a GEMM their reduction is C * KH * KW long (9 for a
// 3x3 on one channel, 90 on ten) and there are only K rows of weights, so packing the im2col panels costs
// as much as the multiply-adds. Here each output row is computed in place from a zero-padded copy of the
// image, vectorised along the width, with the accumulators of a tile of output channels in registers and
// the weights broadcast.
#pragma once

#include <c10/util/FunctionRef.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/op_args.h"

namespace dlkernels {
namespace cpu {

// A convolution with stride sw > 1 along W (dilation 1 there) as one of stride 1 along W over sw times the
// channels: input channel (c, r) is the phase of x's columns sw * v + r - pw (padding included, zero outside the
// image), and its kernel column q is w's column sw * q + r (zero past KW). Output column ow, tap q reads the
// phase column ow + q, that is x's column sw * ow - pw + (sw * q + r): the original tap sw * q + r. The direct
// kernels then read each tap's inputs as one contiguous run, like a stride-1 convolution; the taps padded to a
// multiple of sw (3 -> 4 for a 3x3 of stride 2) cost less than packing im2col panels for the strided GEMM.
inline ConvShape small_kernel_shape(const ConvShape& s) {
  if (s.sw == 1) return s;
  ConvShape k = s;
  k.C = k.Cg = s.C * s.sw;
  k.KW = (s.KW + s.sw - 1) / s.sw;
  k.W = std::max((s.W + s.pw + s.sw - 1) / s.sw, s.OW + k.KW - 1);
  k.sw = 1, k.pw = 0, k.dw = 1;
  return k;
}

// Shapes the direct kernels take: where they measured faster than the implicit GEMM, forward and backward (up to 16
// outputs from up to 64 inputs, or 32 from up to 16; at 32 x 32 the two are even, beyond it the GEMM's register tile is
// full and its packing is spread over enough multiply-adds). 1x1 kernels are a plain GEMM without packing. One output
// channel too (a grad_x of one input channel is such a convolution): the GEMM pads it to a whole row panel and packs
// every input element for one multiply-add. Strides along W run as small_kernel_shape's phases where the kernel is at
// least as wide as the stride (narrower kernels would skip columns: mostly zero taps).
inline bool conv2d_is_small(const ConvShape& s) {
  if (s.groups != 1 || s.KH * s.KW == 1) return false;
  if (s.sw > 1 && (s.dw != 1 || s.KW < s.sw)) return false;
  const ConvShape k = small_kernel_shape(s);
  return (k.K <= 16 && k.C <= 64) || (k.K <= 32 && k.C <= 16);
}

// The buffer geometry of the kernels (see conv2d_cpu_small_kernels.h): each input plane zero-padded into
// rows of RS elements (a multiple of 16 with room for the vector reads past the row's last output), `plane`
// elements apart; the output channels in `tiles` tiles of KB (the forward's register tile; the packed
// weights are zero past K); a grad_w task takes one input channel and GT taps (9; fewer taps are padded),
// in register tiles of GK output channels x GT taps. Column v of a padded row holds x's column phases * v + r
// - xpw of channel c, for the kernel's input channel c * phases + r (small_kernel_shape: phases = sw, xpw =
// pw; without stride phases = 1 and xpw = pw); xw: x's row length.
struct SmallGeom {
  int64_t RS, plane, KB, tiles, GK, GT, phases, xw, xpw;
};

// The post-processing of finished output rows, as conv2d_cpu.cpp's tile epilogue: post(p0, j0, m, n, c, ld)
// for the m output planes from p0 (= n * K + k), positions [j0, j0 + n) of each, at c + i * ld.
template <typename T>
using SmallPost = c10::function_ref<void(int64_t, int64_t, int, int, T*, int64_t)>;

// A convolution prepared for the direct forward: the geometry and the weights of the kernel shape k
// (small_kernel_shape(s)) packed per tile as [tile][c][kh][kw][KB] (zeros past K), the bias as [tiles * KB].
// T: float or double.
template <typename T>
struct SmallConv {
  ConvShape s, k;
  SmallGeom g;
  std::vector<T> wp, bp;
  // Elements of the per-thread input buffer of fill(); zero it once: fill writes only the image positions.
  int64_t scratch() const { return k.C * g.plane; }
  // Copies image xn [C, H, W] into buf.
  void fill(const T* xn, T* buf) const;
  // Output rows [oh0, oh1) of every output channel from the image in buf, bias added (relu if asked):
  // channel k's row oh at out + k * ldk + (oh - oh0) * OW.
  void rows(const T* buf, int64_t oh0, int64_t oh1, T* out, int64_t ldk, bool relu) const;
};
template <typename T>
SmallConv<T> small_conv(const ConvShape& s, const T* w, const T* bias);

// z [N, K, OH, OW] = conv(x, w) + bias (relu if asked), then *post on each finished block of rows when post is
// given; bias may be null. NCHW-contiguous buffers.
template <typename T>
void small_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* z, bool relu,
                   const SmallPost<T>* post);
// Whether small_grad_weight_by_outputs takes s: groups 1, up to 4 input channels (the 3-channel stems and the
// first layers of VGG-like models, whatever their outputs and stride), a kernel larger than 1x1, and the outputs
// in whole vectors of the ISA (not in the portable build).
template <typename T>
bool small_grad_weight_by_outputs_applies(const ConvShape& s);
// gw [K, C, KH, KW] from gz and x, vectorised along the outputs with the sums of a tile of taps in registers (see
// conv2d_cpu_small_kernels.h); every element written, the images added in order.
template <typename T>
void small_grad_weight_by_outputs(const ConvShape& s, const T* gz, const T* x, T* gw);
// gw [K, C, KH, KW] from gz and x; every element written, in an order that does not depend on the threads.
template <typename T>
void small_grad_weight(const ConvShape& s, const T* gz, const T* x, T* gw);

}  // namespace cpu
}  // namespace dlkernels
