// The x86 kernels of the sparse backward of conv2d_maxpool (conv2d_maxpool_cpu_backward_x86.cpp), called by
// the glue in conv2d_maxpool_cpu_backward.cpp: the loops of conv2d_maxpool_cpu_backward_kernels.h compiled for
// AVX-512 and AVX2+FMA.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

// One ISA's kernels for element type T (conv2d_maxpool_cpu_backward_kernels.h says what each computes).
template <typename T>
struct SparseBlockKernels {
  void (*gather_lists)(int64_t len, int64_t runs, const int64_t* src_runs, const int64_t* dst_runs, int64_t lists,
                       const int64_t* start, const int64_t* dst_off, const int64_t* off, const T* g, const T* src,
                       T* dst);
  T (*patch_dot)(int64_t len, int64_t runs, const T* a, const int64_t* a_off, const T* b, const int64_t* b_off);
};

// The AVX-512 and AVX2 sets for float and double (defined where x86 code is built; see kernels_for_isa).
template <typename T>
DLK_INTERNAL const SparseBlockKernels<T>& sparse_block_kernels_avx512();
template <typename T>
DLK_INTERNAL const SparseBlockKernels<T>& sparse_block_kernels_avx2();

}  // namespace cpu
}  // namespace dlkernels
