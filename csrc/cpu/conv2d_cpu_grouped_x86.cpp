// The x86 kernels of the direct grouped convolution: the loops of conv2d_cpu_grouped_kernels.h compiled in a
// target region per ISA, each in a namespace of its own. Both use 256-bit vectors (8 floats, 4 doubles): a
// group of 8 channels is then whole vectors, where 512-bit ones would mix two groups in one vector; the
// AVX-512 build gains its 32 registers, encodings and masked moves.
#include "cpu/conv2d_cpu_grouped_x86.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>

#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace gr_avx512 {

constexpr int kGrPixels = 16;  // accumulators: 32 vector registers
#include "cpu/conv2d_cpu_grouped_kernels.h"

template <class VO>
const GroupedKernels<typename VO::T>& kernels() {
  static const GroupedKernels<typename VO::T> k{gr_forward<VO>, gr_grad_input<VO>, gr_grad_weight<VO>};
  return k;
}

}  // namespace gr_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace gr_avx2 {

constexpr int kGrPixels = 8;  // accumulators: 16 vector registers
#include "cpu/conv2d_cpu_grouped_kernels.h"

template <class VO>
const GroupedKernels<typename VO::T>& kernels() {
  static const GroupedKernels<typename VO::T> k{gr_forward<VO>, gr_grad_input<VO>, gr_grad_weight<VO>};
  return k;
}

}  // namespace gr_avx2
#pragma GCC pop_options

template <>
const GroupedKernels<float>& grouped_kernels_avx512<float>() {
  return gr_avx512::kernels<vo_avx512::F32x8>();
}
template <>
const GroupedKernels<double>& grouped_kernels_avx512<double>() {
  return gr_avx512::kernels<vo_avx512::F64x4>();
}
template <>
const GroupedKernels<float>& grouped_kernels_avx2<float>() {
  return gr_avx2::kernels<vo_avx2::F32>();
}
template <>
const GroupedKernels<double>& grouped_kernels_avx2<double>() {
  return gr_avx2::kernels<vo_avx2::F64>();
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
