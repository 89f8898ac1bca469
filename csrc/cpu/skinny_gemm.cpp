// Float GEMMs with a skinny side (at most 4 rows of C, or an inner dimension of at most 4; the dot form takes 8
// rows on AVX2), where the packed GEMM of gemm.h wastes most of its MR x NR tile and repacks a large operand
// for a few multiply-adds per element: Linear at batch sizes 1 to 4 (8 forward on AVX2), forward and backward.
// These stream the large operand once, in place, and are memory-bound. See skinny_gemm.h for the shapes.
//
// Every element of C sums its K terms in the same order whatever the thread count (each is owned by one
// task): results are deterministic.
#include "cpu/skinny_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/skinny_gemm_x86.h"

namespace dlkernels {
namespace cpu {
namespace {

// Tasks of roughly this many multiply-adds: enough to be worth a thread.
constexpr int64_t kTaskMacs = int64_t(1) << 16;

}  // namespace

bool skinny_gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_sm, int64_t a_sk, const float* B,
                     int64_t b_sk, int64_t b_sn, float* C, int64_t ldc) {
#if defined(__x86_64__)
  const SkinnyKernels* k = skinny_kernels();
  if (k == nullptr || M == 0 || N == 0) return false;
  if (M <= k->max_rows && a_sk == 1 && b_sk == 1) {
    // Dot form: every column of C is a dot product with one contiguous column of B (a row of W). Rows past
    // kMaxSkinny take a second pass over the same columns of B, which are still in L1.
    const int64_t grain = std::max<int64_t>(1, kTaskMacs / (std::max<int64_t>(K, 1) * M * 4));
    at::parallel_for(0, (N + 3) / 4, grain, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t j = q * 4;
        for (int64_t i0 = 0; i0 < M; i0 += kMaxSkinny) {
          const int mr = static_cast<int>(std::min<int64_t>(kMaxSkinny, M - i0));
          const float* a = A + i0 * a_sm;
          float* c = C + i0 * ldc;
          if (j + 4 <= N) {
            k->dot4[mr - 1](K, a, a_sm, B, b_sn, c, ldc, j);
          } else {
            for (int64_t jj = j; jj < N; ++jj) k->dot1[mr - 1](K, a, a_sm, B, b_sn, c, ldc, jj);
          }
        }
      }
    });
    return true;
  }
  if (b_sn == 1 && (M <= kMaxSkinny || K <= kMaxSkinny)) {
    // Axpy form: every row of C is a combination of the contiguous rows of B; tasks are (block of up to 4
    // rows, run of strips of columns), each strip held in registers over the whole of K. A task's strips are
    // as many as make kTaskMacs multiply-adds (all of a row with a short K).
    const int64_t row_blocks = (M + kMaxSkinny - 1) / kMaxSkinny;
    const int64_t run = k->strip * std::max<int64_t>(1, kTaskMacs / (std::max<int64_t>(K, 1) * kMaxSkinny * k->strip));
    const int64_t runs = (N + run - 1) / run;
    at::parallel_for(0, row_blocks * runs, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = (t / runs) * kMaxSkinny, j = (t % runs) * run;
        const int mr = static_cast<int>(std::min<int64_t>(kMaxSkinny, M - i0));
        k->axpy[mr - 1](K, A + i0 * a_sm, a_sm, a_sk, B, b_sk, C + i0 * ldc, ldc, j, std::min(N, j + run));
      }
    });
    return true;
  }
#endif
  (void)M, (void)N, (void)K, (void)A, (void)a_sm, (void)a_sk, (void)B, (void)b_sk, (void)b_sn, (void)C, (void)ldc;
  return false;
}

}  // namespace cpu
}  // namespace dlkernels
