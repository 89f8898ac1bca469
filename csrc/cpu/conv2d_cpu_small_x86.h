// The x86 kernels of the direct few-channel convolution (conv2d_cpu_small_x86.cpp), called by the glue in
// conv2d_cpu_small.cpp: the loops of conv2d_cpu_small_kernels.h compiled for AVX-512 and AVX2+FMA.
#pragma once

#include <cstdint>

#include "common/op_args.h"
#include "cpu/conv2d_cpu_small.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

// One ISA's kernels for element type T (see conv2d_cpu_small_kernels.h): fill copies the kernel's input planes
// [c0, c0 + count) of an image into a padded buffer, rows computes output rows of every channel, grad_weight runs the
// grad_w tasks [i0, i1) with `buf` (zeroed: g.plane elements, then room for the partial sums) as its scratch.
template <typename T>
struct SmallKernels {
  void (*fill)(const ConvShape& s, const SmallGeom& g, const T* xn, int64_t c0, int64_t count, T* buf);
  void (*rows)(const ConvShape& s, const SmallGeom& g, const T* buf, const T* wp, const T* bp, T* out, int64_t ldk,
               int64_t oh0, int64_t oh1, bool relu);
  void (*grad_weight)(const ConvShape& s, const SmallGeom& g, const T* gz, const T* x, T* gw, int64_t i0, int64_t i1,
                      T* buf);
  // sc_grad_weight_by_outputs: its vectors' lanes and its two tiles of taps, then the tasks [i0, i1) with one.
  int lanes, by_outputs_taps[2];
  void (*grad_weight_by_outputs)(const ConvShape& s, int tile, const T* gz, const T* x, T* part, int64_t i0, int64_t i1,
                                 T* buf);
};

// The AVX-512 and AVX2 sets for float and double (defined where x86 code is built; see kernels_for_isa).
template <typename T>
DLK_INTERNAL const SmallKernels<T>& small_kernels_avx512();
template <typename T>
DLK_INTERNAL const SmallKernels<T>& small_kernels_avx2();

}  // namespace cpu
}  // namespace dlkernels
