// The x86 kernels of the direct depthwise convolution (conv2d_cpu_depthwise_x86.cpp), called by the glue in
// conv2d_cpu_depthwise.cpp: the loops of conv2d_cpu_depthwise_kernels.h compiled for AVX-512 and AVX2+FMA.
#pragma once

#include <cstdint>

#include "common/op_args.h"
#include "cpu/conv2d_cpu_depthwise.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

// One ISA's kernels for element type T; each runs the planes (or weight rows) [p0, p1) with `buf` as its
// zeroed scratch (DwGeom's sizes).
template <typename T>
struct DwKernels {
  void (*forward)(const ConvShape& s, const DwGeom& g, const T* x, const T* w, const T* bias, T* z, bool relu,
                  int64_t p0, int64_t p1, T* buf);
  void (*grad_input)(const ConvShape& s, const DwGeom& g, const T* gz, const T* w, T* gx, int64_t p0, int64_t p1,
                     T* buf);
  void (*grad_weight)(const ConvShape& s, const DwGeom& g, const T* gz, const T* x, T* gw, int64_t k0, int64_t k1,
                      T* buf);
  // The channels-last kernels of small planes (dw_channels_last): items (image, block of channels) [i0, i1)
  // of the forward and grad_x, blocks of channels [i0, i1) of grad_w; wt: the weights as [taps][Cp].
  void (*forward_cl)(const ConvShape& s, const DwGeom& g, const T* x, const T* wt, const T* bias, T* z, bool relu,
                     int64_t i0, int64_t i1, T* buf);
  void (*grad_input_cl)(const ConvShape& s, const DwGeom& g, const T* gz, const T* wt, T* gx, int64_t i0, int64_t i1,
                        T* buf);
  void (*grad_weight_cl)(const ConvShape& s, const DwGeom& g, const T* gz, const T* x, T* gw, int64_t i0, int64_t i1,
                         T* buf);
  // The forward on channels-last x and z as they lie (DwGeom::nhwc), items (image, band of `band` output rows)
  // [i0, i1); wt: [taps][Cp], bt: [Cp] or null; buf: ((KH - 1) * dh + 1) * (W + 2 * pw) * Cp elements, zeroed.
  void (*forward_nhwc)(const ConvShape& s, const T* x, const T* wt, int64_t Cp, const T* bt, T* z, bool relu,
                       int64_t band, int64_t i0, int64_t i1, T* buf);
};

// The AVX-512 and AVX2 sets for float and double (defined where x86 code is built; see kernels_for_isa).
template <typename T>
DLK_INTERNAL const DwKernels<T>& dw_kernels_avx512();
template <typename T>
DLK_INTERNAL const DwKernels<T>& dw_kernels_avx2();

}  // namespace cpu
}  // namespace dlkernels
