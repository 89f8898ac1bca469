// The x86 kernels of the direct grouped convolution (conv2d_cpu_grouped_x86.cpp), called by the glue in
// conv2d_cpu_grouped.cpp: the loops of conv2d_cpu_grouped_kernels.h compiled for AVX-512 and AVX2+FMA.
#pragma once

#include <cstdint>

#include "common/op_args.h"
#include "cpu/conv2d_cpu_grouped.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

// One ISA's kernels for element type T. The forward and grad_x run the items (image, block of groups)
// [i0, i1), grad_w the blocks of groups [i0, i1) over the whole batch, each with `buf` as its scratch
// (GroupedGeom::scratch elements, gw_scratch for grad_w; zeroed once). wf: the weights as
// [groups][taps][Cg][Kg]; wb: as [groups][taps][Kg][Cg].
template <typename T>
struct GroupedKernels {
  void (*forward)(const ConvShape& s, const GroupedGeom& g, const T* x, const T* wf, const T* bias, T* z, bool relu,
                  int64_t i0, int64_t i1, T* buf);
  void (*grad_input)(const ConvShape& s, const GroupedGeom& g, const T* gz, const T* wb, T* gx, int64_t i0, int64_t i1,
                     T* buf);
  void (*grad_weight)(const ConvShape& s, const GroupedGeom& g, const T* gz, const T* x, T* gw, int64_t i0, int64_t i1,
                      T* buf);
};

// The AVX-512 and AVX2 sets for float and double (defined where x86 code is built; see kernels_for_isa).
template <typename T>
DLK_INTERNAL const GroupedKernels<T>& grouped_kernels_avx512();
template <typename T>
DLK_INTERNAL const GroupedKernels<T>& grouped_kernels_avx2();

}  // namespace cpu
}  // namespace dlkernels
