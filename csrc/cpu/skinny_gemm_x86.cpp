// The x86 kernels of the skinny float GEMMs (see skinny_gemm.cpp for the driver and skinny_gemm.h for the
// shapes they serve): dot-product and axpy tiles for AVX-512 and AVX2+FMA.
#include "cpu/skinny_gemm_x86.h"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__)
namespace dlkernels {
namespace cpu {
namespace {

// Dot form: C[i, j] = sum_e sum_k A[e * a_sb + i * a_sm + k] * B[e * b_sb + j * b_sn + k] for i < MR, j in [j,
// j + NJ): MR x NJ dot products side by side over `batch` pairs of matrices (e), 16 k at a time, the last partial
// vector masked; one sum per element at the end.
template <int MR, int NJ>
DLK_TARGET_AVX512 void dot_tile_avx512(int64_t K, const float* A, int64_t a_sm, const float* B, int64_t b_sn, float* C,
                                       int64_t ldc, int64_t j, int64_t batch, int64_t a_sb, int64_t b_sb) {
  __m512 acc[MR][NJ];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t e = 0; e < batch; ++e) {
    const float* Ae = A + e * a_sb;
    const float* Be = B + e * b_sb;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
      __m512 a[MR];
      for (int r = 0; r < MR; ++r) a[r] = _mm512_maskz_loadu_ps(mask, Ae + r * a_sm + k);
      for (int c = 0; c < NJ; ++c) {
        const __m512 b = _mm512_maskz_loadu_ps(mask, Be + (j + c) * b_sn + k);
        for (int r = 0; r < MR; ++r) acc[r][c] = _mm512_fmadd_ps(a[r], b, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) C[r * ldc + j + c] = _mm512_reduce_add_ps(acc[r][c]);
  }
}

// 8 k at a time; the k past the last multiple of 8 (of every pair) are added after the vector sum.
template <int MR, int NJ>
DLK_TARGET_AVX2 void dot_tile_avx2(int64_t K, const float* A, int64_t a_sm, const float* B, int64_t b_sn, float* C,
                                   int64_t ldc, int64_t j, int64_t batch, int64_t a_sb, int64_t b_sb) {
  __m256 acc[MR][NJ];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  const int64_t kv = K / 8 * 8;
  for (int64_t e = 0; e < batch; ++e) {
    const float* Ae = A + e * a_sb;
    const float* Be = B + e * b_sb;
    for (int64_t k = 0; k < kv; k += 8) {
      __m256 a[MR];
      for (int r = 0; r < MR; ++r) a[r] = _mm256_loadu_ps(Ae + r * a_sm + k);
      for (int c = 0; c < NJ; ++c) {
        const __m256 b = _mm256_loadu_ps(Be + (j + c) * b_sn + k);
        for (int r = 0; r < MR; ++r) acc[r][c] = _mm256_fmadd_ps(a[r], b, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NJ; ++c) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r][c]), _mm256_extractf128_ps(acc[r][c], 1));
      const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
      float s = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
      for (int64_t e = 0; e < batch; ++e) {
        for (int64_t k = kv; k < K; ++k) s += A[e * a_sb + r * a_sm + k] * B[e * b_sb + (j + c) * b_sn + k];
      }
      C[r * ldc + j + c] = s;
    }
  }
}

// Axpy form: C[i, j] (+)= sum_k A(i, k) * B[k * b_sk + j] with A(i, k) = A[i * a_sm + k * a_sk], for i < MR
// and the columns [j, n) in strips of 64 (4 vectors per row in registers), the columns past n masked; C is
// read first when `load` (the driver's later slices of k). The strips loop here rather than in the driver:
// with an inner dimension of 1 (grad_w of a batch-1 linear) a strip is a few dozen instructions, and a call
// per strip costs more.
template <int MR>
DLK_TARGET_AVX512 void axpy_strip_avx512(int64_t K, const float* A, int64_t a_sm, int64_t a_sk, const float* B,
                                         int64_t b_sk, float* C, int64_t ldc, int64_t j, int64_t n, bool load) {
  for (; j < n; j += 64) {
    __mmask16 mask[4];
    for (int v = 0; v < 4; ++v) {
      const int64_t left = std::clamp<int64_t>(n - j - 16 * v, 0, 16);
      mask[v] = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    }
    __m512 acc[MR][4];
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < 4; ++v)
        acc[r][v] = load ? _mm512_maskz_loadu_ps(mask[v], C + r * ldc + j + 16 * v) : _mm512_setzero_ps();
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
}

// One AVX2 strip of NV vectors of 8 columns from column j, for the MR rows; when Masked (the last, partial
// strip), `mask` (lanes of the NV vectors) keeps its loads and stores inside [j, n). MR x NV accumulators plus
// NV vectors of B and a broadcast stay within the 16 registers: nothing spills.
template <int MR, int NV, bool Masked>
DLK_TARGET_AVX2 DLK_ALWAYS_INLINE void axpy_tile_avx2(int64_t K, const float* A, int64_t a_sm, int64_t a_sk,
                                                      const float* B, int64_t b_sk, float* C, int64_t ldc, int64_t j,
                                                      const __m256i* mask, bool load) {
  __m256 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      float* c = C + r * ldc + j + 8 * v;
      acc[r][v] = !load ? _mm256_setzero_ps() : Masked ? _mm256_maskload_ps(c, mask[v]) : _mm256_loadu_ps(c);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[NV];
    for (int v = 0; v < NV; ++v) {
      const float* row = B + k * b_sk + j + 8 * v;
      b[v] = Masked ? _mm256_maskload_ps(row, mask[v]) : _mm256_loadu_ps(row);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * a_sm + k * a_sk);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      float* c = C + r * ldc + j + 8 * v;
      if (Masked) {
        _mm256_maskstore_ps(c, mask[v], acc[r][v]);
      } else {
        _mm256_storeu_ps(c, acc[r][v]);
      }
    }
  }
}

// Strips of 32 columns for one or two rows, of 16 for three or four (the accumulators' registers).
template <int MR>
DLK_TARGET_AVX2 void axpy_strip_avx2(int64_t K, const float* A, int64_t a_sm, int64_t a_sk, const float* B,
                                     int64_t b_sk, float* C, int64_t ldc, int64_t j, int64_t n, bool load) {
  constexpr int NV = MR <= 2 ? 4 : 2;
  const __m256i full[NV] = {};
  for (; j + 8 * NV <= n; j += 8 * NV) axpy_tile_avx2<MR, NV, false>(K, A, a_sm, a_sk, B, b_sk, C, ldc, j, full, load);
  if (j < n) {
    __m256i mask[NV];
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int v = 0; v < NV; ++v) {
      const int left = static_cast<int>(std::clamp<int64_t>(n - j - 8 * v, 0, 8));
      mask[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane);
    }
    axpy_tile_avx2<MR, NV, true>(K, A, a_sm, a_sk, B, b_sk, C, ldc, j, mask, load);
  }
}

}  // namespace

const SkinnyKernels* skinny_kernels() {
  static const SkinnyKernels avx512{
      {&dot_tile_avx512<1, 4>, &dot_tile_avx512<2, 4>, &dot_tile_avx512<3, 4>, &dot_tile_avx512<4, 4>},
      {&dot_tile_avx512<1, 1>, &dot_tile_avx512<2, 1>, &dot_tile_avx512<3, 1>, &dot_tile_avx512<4, 1>},
      {&axpy_strip_avx512<1>, &axpy_strip_avx512<2>, &axpy_strip_avx512<3>, &axpy_strip_avx512<4>},
      64,
      kMaxSkinny};
  static const SkinnyKernels avx2{
      {&dot_tile_avx2<1, 4>, &dot_tile_avx2<2, 4>, &dot_tile_avx2<3, 4>, &dot_tile_avx2<4, 4>},
      {&dot_tile_avx2<1, 1>, &dot_tile_avx2<2, 1>, &dot_tile_avx2<3, 1>, &dot_tile_avx2<4, 1>},
      {&axpy_strip_avx2<1>, &axpy_strip_avx2<2>, &axpy_strip_avx2<3>, &axpy_strip_avx2<4>},
      32,
      2 * kMaxSkinny};
  switch (cpu_isa()) {
    case Isa::Avx512: return &avx512;
    case Isa::Avx2: return &avx2;
    default: return nullptr;
  }
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
