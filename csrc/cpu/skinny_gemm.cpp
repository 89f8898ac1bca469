// Float GEMMs with a skinny side (at most 4 rows of C, or an inner dimension of at most 4), where the packed
// GEMM of gemm.h wastes most of its MR x NR tile and repacks a large operand for a few multiply-adds per
// element: Linear at batch sizes 1 to 4, forward and backward. These stream the large operand once, in
// place, and are memory-bound. See skinny_gemm_f32 in gemm.h for the shapes.
//
// Every element of C sums its K terms in the same order whatever the thread count (each is owned by one
// task): results are deterministic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/gemm.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {
namespace {

constexpr int kMaxSkinny = 4;  // rows of C, or inner dimension, that count as skinny

#if defined(__x86_64__)
// Dot form: C[i, j] = sum_k A[i * a_sm + k] * B[j * b_sn + k] for i < MR, j in [j, j + NJ): MR x NJ dot
// products side by side, 16 k at a time, the last partial vector masked.
template <int MR, int NJ>
DLK_TARGET_AVX512 void dot_tile_avx512(int64_t K, const float* A, int64_t a_sm, const float* B, int64_t b_sn,
                                       float* C, int64_t ldc, int64_t j) {
  __m512 acc[MR][NJ];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    __m512 a[MR];
    for (int r = 0; r < MR; ++r) a[r] = _mm512_maskz_loadu_ps(mask, A + r * a_sm + k);
    for (int c = 0; c < NJ; ++c) {
      const __m512 b = _mm512_maskz_loadu_ps(mask, B + (j + c) * b_sn + k);
      for (int r = 0; r < MR; ++r) acc[r][c] = _mm512_fmadd_ps(a[r], b, acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) C[r * ldc + j + c] = _mm512_reduce_add_ps(acc[r][c]);
  }
}

// 8 k at a time; the k past the last multiple of 8 are added after the vector sum.
template <int MR, int NJ>
DLK_TARGET_AVX2 void dot_tile_avx2(int64_t K, const float* A, int64_t a_sm, const float* B, int64_t b_sn,
                                   float* C, int64_t ldc, int64_t j) {
  __m256 acc[MR][NJ];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  const int64_t kv = K / 8 * 8;
  for (int64_t k = 0; k < kv; k += 8) {
    __m256 a[MR];
    for (int r = 0; r < MR; ++r) a[r] = _mm256_loadu_ps(A + r * a_sm + k);
    for (int c = 0; c < NJ; ++c) {
      const __m256 b = _mm256_loadu_ps(B + (j + c) * b_sn + k);
      for (int r = 0; r < MR; ++r) acc[r][c] = _mm256_fmadd_ps(a[r], b, acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r][c]), _mm256_extractf128_ps(acc[r][c], 1));
      const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
      float s = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
      for (int64_t k = kv; k < K; ++k) s += A[r * a_sm + k] * B[(j + c) * b_sn + k];
      C[r * ldc + j + c] = s;
    }
  }
}

// Axpy form: C[i, j] = sum_k A(i, k) * B[k * b_sk + j] with A(i, k) = A[i * a_sm + k * a_sk], for i < MR
// and the columns [j, j + 64): 4 vectors per row in registers, the columns past n masked.
template <int MR>
DLK_TARGET_AVX512 void axpy_strip_avx512(int64_t K, const float* A, int64_t a_sm, int64_t a_sk, const float* B,
                                         int64_t b_sk, float* C, int64_t ldc, int64_t j, int64_t n) {
  __mmask16 mask[4];
  for (int v = 0; v < 4; ++v) {
    const int64_t left = std::clamp<int64_t>(n - j - 16 * v, 0, 16);
    mask[v] = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  }
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[4];
    for (int v = 0; v < 4; ++v) b[v] = _mm512_maskz_loadu_ps(mask[v], B + k * b_sk + j + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * a_sm + k * a_sk]);
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(C + r * ldc + j + 16 * v, mask[v], acc[r][v]);
  }
}

// 4 vectors of 8 per row (32 columns); a strip with fewer columns goes through a zero-padded copy.
template <int MR>
DLK_TARGET_AVX2 void axpy_strip_avx2(int64_t K, const float* A, int64_t a_sm, int64_t a_sk, const float* B,
                                     int64_t b_sk, float* C, int64_t ldc, int64_t j, int64_t n) {
  const int64_t cols = std::min<int64_t>(32, n - j);
  __m256 acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  alignas(32) float pad[32] = {};
  for (int64_t k = 0; k < K; ++k) {
    const float* row = B + k * b_sk + j;
    if (cols < 32) {
      std::copy(row, row + cols, pad);
      row = pad;
    }
    __m256 b[4];
    for (int v = 0; v < 4; ++v) b[v] = _mm256_loadu_ps(row + 8 * v);
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_set1_ps(A[r * a_sm + k * a_sk]);
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    alignas(32) float out[32];
    for (int v = 0; v < 4; ++v) _mm256_store_ps(out + 8 * v, acc[r][v]);
    std::copy(out, out + cols, C + r * ldc + j);
  }
}

// The kernels of one ISA, by MR - 1 (and NJ 4 or 1 for the dot form).
struct SkinnyKernels {
  using Dot = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t);
  using Axpy = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                        int64_t);
  Dot dot4[kMaxSkinny], dot1[kMaxSkinny];
  Axpy axpy[kMaxSkinny];
  int64_t strip;  // columns per axpy strip
};

const SkinnyKernels* skinny_kernels() {
  static const SkinnyKernels avx512{
      {&dot_tile_avx512<1, 4>, &dot_tile_avx512<2, 4>, &dot_tile_avx512<3, 4>, &dot_tile_avx512<4, 4>},
      {&dot_tile_avx512<1, 1>, &dot_tile_avx512<2, 1>, &dot_tile_avx512<3, 1>, &dot_tile_avx512<4, 1>},
      {&axpy_strip_avx512<1>, &axpy_strip_avx512<2>, &axpy_strip_avx512<3>, &axpy_strip_avx512<4>},
      64};
  static const SkinnyKernels avx2{
      {&dot_tile_avx2<1, 4>, &dot_tile_avx2<2, 4>, &dot_tile_avx2<3, 4>, &dot_tile_avx2<4, 4>},
      {&dot_tile_avx2<1, 1>, &dot_tile_avx2<2, 1>, &dot_tile_avx2<3, 1>, &dot_tile_avx2<4, 1>},
      {&axpy_strip_avx2<1>, &axpy_strip_avx2<2>, &axpy_strip_avx2<3>, &axpy_strip_avx2<4>},
      32};
  switch (cpu_isa()) {
    case Isa::Avx512: return &avx512;
    case Isa::Avx2: return &avx2;
    default: return nullptr;
  }
}
#else
struct SkinnyKernels;
const SkinnyKernels* skinny_kernels() { return nullptr; }
#endif

// Tasks of roughly this many multiply-adds: enough to be worth a thread.
constexpr int64_t kTaskMacs = int64_t(1) << 16;

}  // namespace

bool skinny_gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_sm, int64_t a_sk, const float* B,
                     int64_t b_sk, int64_t b_sn, float* C, int64_t ldc) {
#if defined(__x86_64__)
  const SkinnyKernels* k = skinny_kernels();
  if (k == nullptr || M == 0 || N == 0) return false;
  if (M <= kMaxSkinny && a_sk == 1 && b_sk == 1) {
    // Dot form: every column of C is a dot product with one contiguous column of B (a row of W).
    const int mr = static_cast<int>(M);
    const int64_t grain = std::max<int64_t>(1, kTaskMacs / (std::max<int64_t>(K, 1) * M * 4));
    at::parallel_for(0, (N + 3) / 4, grain, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t j = q * 4;
        if (j + 4 <= N) {
          k->dot4[mr - 1](K, A, a_sm, B, b_sn, C, ldc, j);
        } else {
          for (int64_t jj = j; jj < N; ++jj) k->dot1[mr - 1](K, A, a_sm, B, b_sn, C, ldc, jj);
        }
      }
    });
    return true;
  }
  if (b_sn == 1 && (M <= kMaxSkinny || K <= kMaxSkinny)) {
    // Axpy form: every row of C is a combination of the contiguous rows of B; tasks are (block of up to 4
    // rows, strip of columns), each held in registers over the whole of K.
    const int64_t row_blocks = (M + kMaxSkinny - 1) / kMaxSkinny;
    const int64_t strips = (N + k->strip - 1) / k->strip;
    const int64_t grain = std::max<int64_t>(1, kTaskMacs / (std::max<int64_t>(K, 1) * kMaxSkinny * k->strip));
    at::parallel_for(0, row_blocks * strips, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = (t / strips) * kMaxSkinny, j = (t % strips) * k->strip;
        const int mr = static_cast<int>(std::min<int64_t>(kMaxSkinny, M - i0));
        k->axpy[mr - 1](K, A + i0 * a_sm, a_sm, a_sk, B, b_sk, C + i0 * ldc, ldc, j, N);
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
