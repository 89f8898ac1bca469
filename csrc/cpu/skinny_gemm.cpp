// Float GEMMs with a skinny side (at most 4 rows of C, or an inner dimension of at most 4; 8 of either on
// AVX2), where the packed GEMM of gemm.h wastes most of its MR x NR tile and repacks a large operand for a few
// multiply-adds per element: Linear at batch sizes 1 to 4 (8 on AVX2), forward and backward. These stream
// the large operand once, in place, and are memory-bound. See skinny_gemm.h for the shapes.
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
// The axpy form's slices of the inner dimension, and its runs of C's columns (times rows: 16 KiB of floats).
constexpr int64_t kSliceK = 8;
constexpr int64_t kRunFloats = 4096;

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
            k->dot4[mr - 1](K, a, a_sm, B, b_sn, c, ldc, j, 1, 0, 0);
          } else {
            for (int64_t jj = j; jj < N; ++jj) k->dot1[mr - 1](K, a, a_sm, B, b_sn, c, ldc, jj, 1, 0, 0);
          }
        }
      }
    });
    return true;
  }
  if (b_sn == 1 && (M <= k->max_rows || K <= k->max_rows)) {
    // Axpy form: every row of C is a combination of the contiguous rows of B. Tasks are (group of rows, run of
    // columns); the group is all of C's rows when they are few (grad_x of a small batch), else a block of
    // kMaxSkinny (grad_w with a short inner dimension). A task walks k in slices of kSliceK rows of B and, per
    // slice, sweeps its run for each block of kMaxSkinny rows of its group: the slice is read from memory once,
    // as kSliceK sequential streams (a strip held over all of a long K read one line per row of B, every line a
    // miss the prefetchers did not see coming), and the group's later row blocks re-read it from L1; the
    // group's run of C (kRunFloats) stays in L1 from slice to slice.
    const int64_t group = M <= k->max_rows ? M : kMaxSkinny;
    const int64_t groups = (M + group - 1) / group;
    const auto strips = [k](int64_t cols) { return (cols + k->strip - 1) / k->strip * k->strip; };
    int64_t run = std::max<int64_t>(k->strip, kRunFloats / group / k->strip * k->strip);
    // Enough runs for every thread to have a task (the values do not depend on the split).
    const int64_t per_group = (at::get_num_threads() + groups - 1) / groups;
    run = std::min(run, strips((N + per_group - 1) / per_group));
    const int64_t runs = (N + run - 1) / run;
    at::parallel_for(0, groups * runs, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g0 = (t / runs) * group, g1 = std::min(M, g0 + group);
        const int64_t j = (t % runs) * run, n = std::min(N, j + run);
        // K == 0: one empty slice, which writes the zeros.
        for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kSliceK) {
          const int64_t kc = std::min(kSliceK, K - k0);
          for (int64_t i0 = g0; i0 < g1; i0 += kMaxSkinny) {
            const int mr = static_cast<int>(std::min<int64_t>(kMaxSkinny, g1 - i0));
            k->axpy[mr - 1](kc, A + i0 * a_sm + k0 * a_sk, a_sm, a_sk, B + k0 * b_sk, b_sk, C + i0 * ldc, ldc, j, n,
                            k0 > 0);
          }
        }
      }
    });
    return true;
  }
#endif
  (void)M, (void)N, (void)K, (void)A, (void)a_sm, (void)a_sk, (void)B, (void)b_sk, (void)b_sn, (void)C, (void)ldc;
  return false;
}

bool dot_rows_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_sm, const float* B, int64_t b_sn, float* C,
                  int64_t ldc, int64_t batch, int64_t a_sb, int64_t b_sb) {
#if defined(__x86_64__)
  const SkinnyKernels* k = skinny_kernels();
  if (k == nullptr) return false;
  const int64_t blocks = (M + kMaxSkinny - 1) / kMaxSkinny;
  const int64_t macs = std::max<int64_t>(1, batch * K * kMaxSkinny * N);
  at::parallel_for(0, blocks, std::max<int64_t>(1, kTaskMacs / macs), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kMaxSkinny;
      const int mr = static_cast<int>(std::min<int64_t>(kMaxSkinny, M - i0));
      const float* a = A + i0 * a_sm;
      float* c = C + i0 * ldc;
      int64_t j = 0;
      for (; j + 4 <= N; j += 4) k->dot4[mr - 1](K, a, a_sm, B, b_sn, c, ldc, j, batch, a_sb, b_sb);
      for (; j < N; ++j) k->dot1[mr - 1](K, a, a_sm, B, b_sn, c, ldc, j, batch, a_sb, b_sb);
    }
  });
  return true;
#else
  (void)M, (void)N, (void)K, (void)A, (void)a_sm, (void)B, (void)b_sn, (void)C, (void)ldc, (void)batch, (void)a_sb,
      (void)b_sb;
  return false;
#endif
}

}  // namespace cpu
}  // namespace dlkernels
