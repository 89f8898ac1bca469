// The float GEMMs with a skinny side (skinny_gemm.cpp), which the Linear GEMM tries before the packed one of
// gemm.h.
#pragma once

#include <cstdint>

namespace dlkernels {
namespace cpu {

// C[M, N] = A[M, K] @ B[K, N] for float, A(i, k) = A[i * a_sm + k * a_sk], B(k, j) = B[k * b_sk + j * b_sn],
// C row-major with row stride ldc, when one side is skinny:
//   - M <= 4 (8 on AVX2) and both A's rows and B's columns contiguous along k (a_sk == b_sk == 1): dot
//     products;
//   - M <= 4 or K <= 4 (8 on AVX2), and B's rows contiguous (b_sn == 1): rows of C as combinations of rows
//     of B.
// Returns false, with nothing done, for other shapes and layouts and on CPUs without AVX2.
bool skinny_gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_sm, int64_t a_sk, const float* B,
                     int64_t b_sk, int64_t b_sn, float* C, int64_t ldc);

// C[i, j] = sum_e sum_k A[e * a_sb + i * a_sm + k] * B[e * b_sb + j * b_sn + k] for i < M, j < N, e < batch, float:
// dot products of rows that are contiguous along k, both read in place, summed over a batch of matrix pairs (the
// weight gradient of a pointwise convolution: rows of grad_out and of x are image planes, e the image). Tasks take
// blocks of A's rows; each element is one task's, summed in a fixed order (deterministic). Returns false, with
// nothing done, on CPUs without AVX2.
bool dot_rows_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_sm, const float* B, int64_t b_sn, float* C,
                  int64_t ldc, int64_t batch, int64_t a_sb, int64_t b_sb);

}  // namespace cpu
}  // namespace dlkernels
