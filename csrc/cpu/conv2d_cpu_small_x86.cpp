// The x86 kernels of the direct few-channel convolution: the loops of conv2d_cpu_small_kernels.h over the
// AVX-512 and AVX2+FMA vector ops of cpu/vector_ops.h, each set compiled in a target region of its own
// (functions defined there, templates included, get that ISA), in a namespace of its own.
#include "cpu/conv2d_cpu_small_x86.h"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__)
#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace sc_avx512 {

#include "cpu/conv2d_cpu_small_kernels.h"

template <class VO>
const SmallKernels<typename VO::T>& kernels() {
  static const SmallKernels<typename VO::T> k{sc_fill<VO>,
                                              sc_rows<VO>,
                                              sc_grad_weight<VO>,
                                              VO::L,
                                              {kByOutputsTaps<VO>[0], kByOutputsTaps<VO>[1]},
                                              sc_grad_weight_by_outputs_isa<VO>};
  return k;
}

}  // namespace sc_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace sc_avx2 {

#include "cpu/conv2d_cpu_small_kernels.h"

template <class VO>
const SmallKernels<typename VO::T>& kernels() {
  static const SmallKernels<typename VO::T> k{sc_fill<VO>,
                                              sc_rows<VO>,
                                              sc_grad_weight<VO>,
                                              VO::L,
                                              {kByOutputsTaps<VO>[0], kByOutputsTaps<VO>[1]},
                                              sc_grad_weight_by_outputs_isa<VO>};
  return k;
}

}  // namespace sc_avx2
#pragma GCC pop_options

template <>
const SmallKernels<float>& small_kernels_avx512<float>() {
  return sc_avx512::kernels<vo_avx512::F32>();
}
template <>
const SmallKernels<double>& small_kernels_avx512<double>() {
  return sc_avx512::kernels<vo_avx512::F64>();
}
template <>
const SmallKernels<float>& small_kernels_avx2<float>() {
  return sc_avx2::kernels<vo_avx2::F32>();
}
template <>
const SmallKernels<double>& small_kernels_avx2<double>() {
  return sc_avx2::kernels<vo_avx2::F64>();
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
