// The x86 kernels of the skinny float GEMMs (skinny_gemm_x86.cpp, AVX-512 and AVX2+FMA intrinsics), in one
// table per ISA; the driver in skinny_gemm.cpp splits C into tasks and calls them.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

constexpr int kMaxSkinny = 4;  // rows of C, or inner dimension, that count as skinny

#if defined(__x86_64__)
// Dot form (dot4: 4 columns of C at a time, dot1: one): C[i, j] = sum_e sum_k A[e * a_sb + i * a_sm + k] *
// B[e * b_sb + j * b_sn + k] for the MR rows and the columns from j, e < batch, called as dot(K, A, a_sm, B, b_sn,
// C, ldc, j, batch, a_sb, b_sb).
// Axpy form: C[i, j] = sum_k A[i * a_sm + k * a_sk] * B[k * b_sk + j] for the MR rows and the columns [j, n)
// in strips of at most `strip` columns, added to C when `load`, called as axpy(K, A, a_sm, a_sk, B, b_sk, C, ldc,
// j, n, load).
// The kernels of one ISA, by MR - 1 (and NJ 4 or 1 for the dot form).
struct SkinnyKernels {
  using Dot = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, int64_t,
                       int64_t, int64_t);
  using Axpy = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                        int64_t, bool);
  Dot dot4[kMaxSkinny], dot1[kMaxSkinny];
  Axpy axpy[kMaxSkinny];
  int64_t strip;  // columns per axpy strip, at most
  // Rows of C (or inner dimension, for the axpy form) that the driver gives the skinny kernels, in blocks of
  // kMaxSkinny rows: 4 on AVX-512, whose packed GEMM has 8-row tiles; 8 on AVX2, whose 6-row tiles pad 5 to 8
  // rows (Linear at batch 8) to 12 and pack the large operand for them.
  int64_t max_rows;
};

// The kernels for this CPU; null on CPUs without AVX2.
DLK_INTERNAL const SkinnyKernels* skinny_kernels();
#endif

}  // namespace cpu
}  // namespace dlkernels
