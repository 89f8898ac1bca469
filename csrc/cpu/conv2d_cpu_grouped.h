// The direct grouped convolution on the CPU (conv2d_cpu_grouped.cpp): convolutions with narrow groups (8 or
// 16 input and output channels per group, as RegNet's and ResNeXt's 3x3 convolutions), forward and backward,
// without a GEMM. As a GEMM, each group's product has 8-16 rows and a reduction of 72-144: the implicit
// im2col packing then costs several times the micro-kernel (each packed element feeds only 8-16 rows), and
// strided shapes pack element by element.
#pragma once

#include <cstdint>

#include "common/op_args.h"

namespace dlkernels {
namespace cpu {

// Groups (not depthwise) of 8 or 16 input and output channels each: the kernels vectorise over a group's
// output channels (forward, grad_w) and input channels (grad_x), 8 floats or 4 doubles per vector.
inline bool conv2d_is_grouped(const ConvShape& s) {
  auto narrow = [](int64_t n) { return n == 8 || n == 16; };
  return s.groups > 1 && narrow(s.Cg) && narrow(s.Kg);
}

// The kernels' blocking: GB groups at a time (GB * Cg input channels, GB * Kg output channels, about 64 of
// each) in Hp x Wp zero-padded planes, grad_w NB images at a time; scratch, gw_scratch: the elements of a
// thread's buffer for the forward and grad_x (one image), and for grad_w (NB images and the sums).
struct GroupedGeom {
  int64_t GB, blocks, CBi, CBo, Hp, Wp, NB, scratch, gw_scratch;
};

// z [N, K, OH, OW] = conv(x, w) + bias (relu applied if asked); bias may be null. T: float or double;
// all buffers NCHW-contiguous.
template <typename T>
void grouped_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* z, bool relu);
// gx [N, C, H, W] from gz = dL/d(pre-activation) [N, K, OH, OW]; every element written.
template <typename T>
void grouped_grad_input(const ConvShape& s, const T* gz, const T* w, T* gx);
// gw [K, Cg, KH, KW] from gz and x; every element written.
template <typename T>
void grouped_grad_weight(const ConvShape& s, const T* gz, const T* x, T* gw);

}  // namespace cpu
}  // namespace dlkernels
