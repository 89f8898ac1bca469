// The x86 kernels of the sparse backward of conv2d_maxpool: the loops of conv2d_maxpool_cpu_backward_kernels.h
// over the AVX-512 and AVX2+FMA vector ops of cpu/vector_ops.h, each set compiled in a target region of its own
// (functions defined there, templates included, get that ISA), in a namespace of its own.
#include "cpu/conv2d_maxpool_cpu_backward_x86.h"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__)
#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace sp_avx512 {

#include "cpu/conv2d_maxpool_cpu_backward_kernels.h"

template <class VO>
const SparseBlockKernels<typename VO::T>& kernels() {
  static const SparseBlockKernels<typename VO::T> k{sp_gather_lists<VO>, sp_patch_dot<VO>};
  return k;
}

}  // namespace sp_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace sp_avx2 {

#include "cpu/conv2d_maxpool_cpu_backward_kernels.h"

template <class VO>
const SparseBlockKernels<typename VO::T>& kernels() {
  static const SparseBlockKernels<typename VO::T> k{sp_gather_lists<VO>, sp_patch_dot<VO>};
  return k;
}

}  // namespace sp_avx2
#pragma GCC pop_options

template <>
const SparseBlockKernels<float>& sparse_block_kernels_avx512<float>() {
  return sp_avx512::kernels<vo_avx512::F32>();
}
template <>
const SparseBlockKernels<double>& sparse_block_kernels_avx512<double>() {
  return sp_avx512::kernels<vo_avx512::F64>();
}
template <>
const SparseBlockKernels<float>& sparse_block_kernels_avx2<float>() {
  return sp_avx2::kernels<vo_avx2::F32>();
}
template <>
const SparseBlockKernels<double>& sparse_block_kernels_avx2<double>() {
  return sp_avx2::kernels<vo_avx2::F64>();
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
