// The x86 kernels of the direct depthwise convolution: the loops of conv2d_cpu_depthwise_kernels.h over
// AVX-512 and AVX2+FMA vector ops, each set compiled in a target region of its own (functions defined there,
// templates included, get that ISA), in a namespace of its own.
#include "cpu/conv2d_cpu_depthwise_x86.h"

#include <cstdint>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>

#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace dw_avx512 {

using F32 = vo_avx512::F32;
using F64 = vo_avx512::F64;

#include "cpu/conv2d_cpu_depthwise_kernels.h"

template <class VO>
const DwKernels<typename VO::T>& kernels() {
  static const DwKernels<typename VO::T> k{dw_forward_planes<VO>, dw_grad_input_planes<VO>, dw_grad_weight_rows<VO>,
                                           dw_forward_cl<VO>,     dw_grad_input_cl<VO>,     dw_grad_weight_cl<VO>,
                                           dw_forward_nhwc<VO>};
  return k;
}

}  // namespace dw_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace dw_avx2 {

using F32 = vo_avx2::F32;
using F64 = vo_avx2::F64;

#include "cpu/conv2d_cpu_depthwise_kernels.h"

template <class VO>
const DwKernels<typename VO::T>& kernels() {
  static const DwKernels<typename VO::T> k{dw_forward_planes<VO>, dw_grad_input_planes<VO>, dw_grad_weight_rows<VO>,
                                           dw_forward_cl<VO>,     dw_grad_input_cl<VO>,     dw_grad_weight_cl<VO>,
                                           dw_forward_nhwc<VO>};
  return k;
}

}  // namespace dw_avx2
#pragma GCC pop_options

template <>
const DwKernels<float>& dw_kernels_avx512<float>() {
  return dw_avx512::kernels<dw_avx512::F32>();
}
template <>
const DwKernels<double>& dw_kernels_avx512<double>() {
  return dw_avx512::kernels<dw_avx512::F64>();
}
template <>
const DwKernels<float>& dw_kernels_avx2<float>() {
  return dw_avx2::kernels<dw_avx2::F32>();
}
template <>
const DwKernels<double>& dw_kernels_avx2<double>() {
  return dw_avx2::kernels<dw_avx2::F64>();
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
