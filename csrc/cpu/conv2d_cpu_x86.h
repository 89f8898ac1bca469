// The x86 kernels of conv2d on the CPU (conv2d_cpu_x86.cpp), called by the glue in conv2d_cpu.cpp.
#pragma once

#include <cstdint>

#include "common/op_args.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

#if defined(__x86_64__)
// pack_im2col of conv2d_cpu.cpp for float and stride 1 along W: rows [k0, k0 + kc) x columns [j0, j0 + nr) of
// one image-group's im2col matrix into a B panel of NR columns (zeros past nr and in the padding).
// The same for float and stride 1 with AVX-512 or AVX2 masked loads and stores: each output-row segment of
// a panel row is one or two vectors whose lanes in the padding load as zeros (masked-off lanes are not
// read, so they may lie outside the image). For few channels the packing costs as much as the GEMM, and
// the generic loop above spends most of it in fill/copy calls on segments of a few dozen floats.
DLK_TARGET_AVX512 DLK_INTERNAL void conv2d_pack_im2col_f32_s1_avx512(const ConvShape& s, const float* xg, int64_t j0,
                                                                     int nr, int64_t k0, int64_t kc, float* dst,
                                                                     int NR);
DLK_TARGET_AVX2 DLK_INTERNAL void conv2d_pack_im2col_f32_s1_avx2(const ConvShape& s, const float* xg, int64_t j0,
                                                                 int nr, int64_t k0, int64_t kc, float* dst, int NR);
// pack_im2col_block (conv2d_cpu_im2col.h) for float compiled for AVX-512 or AVX2: the B panels of columns [j0,
// j0 + n) of one image-group's im2col matrix (or the images side by side), rows [k0, k0 + kc). False, and nothing
// done, for a panel width NR other than 16 and 32.
DLK_TARGET_AVX512 DLK_INTERNAL bool conv2d_pack_im2col_block_f32_avx512(const float* planes, int64_t image,
                                                                        const int64_t* tab, int64_t row_step,
                                                                        int64_t Hx, int64_t Wx, int64_t OW, int64_t P,
                                                                        int64_t j0, int64_t n, int64_t k0, int64_t kc,
                                                                        float* dst, int NR);
DLK_TARGET_AVX2 DLK_INTERNAL bool conv2d_pack_im2col_block_f32_avx2(const float* planes, int64_t image,
                                                                    const int64_t* tab, int64_t row_step, int64_t Hx,
                                                                    int64_t Wx, int64_t OW, int64_t P, int64_t j0,
                                                                    int64_t n, int64_t k0, int64_t kc, float* dst,
                                                                    int NR);
// One row of x into its sw column phases, for phase_split of conv2d_cpu.cpp: dst[b * phase + v] = row[b + sw * v]
// for v < ceil(W / sw), zeros past the row. False, and nothing done, for strides other than 2 and 4.
DLK_TARGET_AVX512 DLK_INTERNAL bool conv2d_phase_split_row_f32_avx512(const float* row, int64_t W, int64_t sw,
                                                                      float* dst, int64_t phase);
DLK_TARGET_AVX2 DLK_INTERNAL bool conv2d_phase_split_row_f32_avx2(const float* row, int64_t W, int64_t sw, float* dst,
                                                                  int64_t phase);
#endif

}  // namespace cpu
}  // namespace dlkernels
