// The x86 kernels of the GEMM (gemm_x86.cpp), AVX-512 and AVX2+FMA intrinsics; gemm.cpp picks one at run time
// from cpu_isa(). Each has the MicroKernelFn signature of gemm.h; the `_half` twins compute tiles of at most
// half the columns (the last, narrow column panel) over the same full-width B panel.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

#if defined(__x86_64__)
#define DLK_DECLARE_X86_MICRO(NAME, TARGET, T)                                                                         \
  TARGET DLK_INTERNAL void NAME(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t ldc, int m, int n,      \
                                bool load_c, const T* bias_m, const T* bias_n, bool relu);
DLK_DECLARE_X86_MICRO(micro_f32_avx512, DLK_TARGET_AVX512, float)           // 8 x 32
DLK_DECLARE_X86_MICRO(micro_f32_avx512_half, DLK_TARGET_AVX512, float)      // 8 x 16
DLK_DECLARE_X86_MICRO(micro_f32_avx512_m10, DLK_TARGET_AVX512, float)       // 10 x 32
DLK_DECLARE_X86_MICRO(micro_f32_avx512_m10_half, DLK_TARGET_AVX512, float)  // 10 x 16
DLK_DECLARE_X86_MICRO(micro_f64_avx512, DLK_TARGET_AVX512, double)          // 8 x 16
DLK_DECLARE_X86_MICRO(micro_f64_avx512_half, DLK_TARGET_AVX512, double)     // 8 x 8
DLK_DECLARE_X86_MICRO(micro_f32_avx2, DLK_TARGET_AVX2, float)               // 6 x 16
DLK_DECLARE_X86_MICRO(micro_f32_avx2_half, DLK_TARGET_AVX2, float)          // 6 x 8
DLK_DECLARE_X86_MICRO(micro_f64_avx2, DLK_TARGET_AVX2, double)              // 6 x 8
DLK_DECLARE_X86_MICRO(micro_f64_avx2_half, DLK_TARGET_AVX2, double)         // 6 x 4
#undef DLK_DECLARE_X86_MICRO
// The full-width kernels with B read in place: the MicroKernelRowsFn signature of gemm.h.
#define DLK_DECLARE_X86_MICRO_ROWS(NAME, TARGET, T)                                                                    \
  TARGET DLK_INTERNAL void NAME##_rows(int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,             \
                                       int64_t ldc, int m, bool load_c, const T* bias_m, const T* bias_n, bool relu);
DLK_DECLARE_X86_MICRO_ROWS(micro_f32_avx512, DLK_TARGET_AVX512, float)
DLK_DECLARE_X86_MICRO_ROWS(micro_f32_avx512_m10, DLK_TARGET_AVX512, float)
DLK_DECLARE_X86_MICRO_ROWS(micro_f64_avx512, DLK_TARGET_AVX512, double)
DLK_DECLARE_X86_MICRO_ROWS(micro_f32_avx2, DLK_TARGET_AVX2, float)
DLK_DECLARE_X86_MICRO_ROWS(micro_f64_avx2, DLK_TARGET_AVX2, double)
#undef DLK_DECLARE_X86_MICRO_ROWS

// pack_transpose_f32 of gemm.h (dst[k * P + r] = S[r][k]) through 8 x 8 transposes in AVX registers.
DLK_TARGET_AVX2 DLK_INTERNAL void pack_transpose_f32_avx2(const float* const* S, int rows, int64_t kc, float* dst,
                                                          int P);
// pack_transpose_ranges_f32 of gemm.h, the same way with masked loads.
DLK_TARGET_AVX2 DLK_INTERNAL void pack_transpose_ranges_f32_avx2(const float* const* S, const int64_t* lo,
                                                                 const int64_t* hi, int64_t kc, float* dst, int P);
#endif

}  // namespace cpu
}  // namespace dlkernels
