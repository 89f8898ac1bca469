// The x86 kernels of conv2d_maxpool on the CPU (conv2d_maxpool_cpu_x86.cpp), called by conv2d_maxpool_cpu.cpp.
#pragma once

#include <cstdint>

#include "common/op_args.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

#if defined(__x86_64__)
// pool_band of conv2d_maxpool_cpu.cpp for float and the 2x2 window of stride 2 without padding (VGG's and
// TinyVGG's pooling): the conv rows [r0, ...) of one channel (row r at rows + (r - r0) * ld) pooled into rows
// [q0, q1) of maxima mv and window indices mi ((q - q0) * PW + pw). Each window row is two vector loads
// split into its even and odd columns, then the four taps in torch's order with the (v > max) | isnan(v)
// select; the windows that leave the conv output (ceil_mode) take the scalar rule.
DLK_TARGET_AVX512 DLK_INTERNAL void conv2d_maxpool_pool_2x2_avx512(const BlockShape& b, const float* rows, int64_t ld,
                                                                   int64_t r0, int64_t q0, int64_t q1, float* mv,
                                                                   int32_t* mi);
DLK_TARGET_AVX2 DLK_INTERNAL void conv2d_maxpool_pool_2x2_avx2(const BlockShape& b, const float* rows, int64_t ld,
                                                               int64_t r0, int64_t q0, int64_t q1, float* mv,
                                                               int32_t* mi);
#endif

}  // namespace cpu
}  // namespace dlkernels
