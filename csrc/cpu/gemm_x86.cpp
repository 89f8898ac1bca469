// The x86 GEMM kernels (AVX-512 and AVX2+FMA intrinsics): the register-blocked micro-kernels and the 8 x 8
// transposing packer. gemm.cpp chooses among them at run time; see gemm.h for the blocking around them.
#include "cpu/gemm_x86.h"

#include "cpu/gemm.h"

#if defined(__x86_64__)
namespace dlkernels {
namespace cpu {

// The x86 micro-kernels, one macro expanded per ISA and type (intrinsics: see simd.h for why). Per k: NV
// vector loads of B, MR broadcasts of A, MR * NV FMAs into register accumulators. The tile is NV * LANES
// columns wide; B's row k is at b + k * ldb: ldb = BS, the packed panel's width (BS > NV * LANES for the
// half-width kernels of the last panel), or B's own row stride when the `_rows` kernels read it in place.
#define DLK_X86_MICRO(NAME, TARGET, T, VEC, MR, NV, BS, LANES, SETZERO, LOADU, STOREU, SET1, FMADD, ADD, MAX)          \
  template <bool PREFETCH>                                                                                             \
  TARGET DLK_ALWAYS_INLINE void NAME##_impl(int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,        \
                                            int64_t ldc, int m, int n, bool load_c, const T* bias_m, const T* bias_n,  \
                                            bool relu) {                                                               \
    constexpr int NR = NV * LANES;                                                                                     \
    VEC acc[MR][NV];                                                                                                   \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i) {                                                            \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[i][v] = SETZERO();                                      \
    }                                                                                                                  \
    /* A(i, k) is a[k * MR + i] (packed) or a[i * lda + k] (in place, rows past m read as row 0) */                    \
    const T* arow[MR];                                                                                                 \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i) arow[i] = lda == 0 ? a + i : a + (i < m ? i : 0) * lda;      \
    const int64_t astep = lda == 0 ? MR : 1;                                                                           \
    for (int64_t k = 0; k < kc; ++k) {                                                                                 \
      VEC bv[NV];                                                                                                      \
      if constexpr (PREFETCH) { /* the row's first and last lines (a prefetch never faults) */                         \
        _mm_prefetch(reinterpret_cast<const char*>(b + (k + kBRowsPrefetch) * ldb), _MM_HINT_T0);                      \
        _mm_prefetch(reinterpret_cast<const char*>(b + (k + kBRowsPrefetch) * ldb + NR - 1), _MM_HINT_T0);             \
      }                                                                                                                \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) bv[v] = LOADU(b + k * ldb + v * LANES);                     \
      _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i) {                                                          \
        const VEC av = SET1(arow[i][k * astep]);                                                                       \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[i][v] = FMADD(av, bv[v], acc[i][v]);                  \
      }                                                                                                                \
    }                                                                                                                  \
    if (m == MR && n == NR) {                                                                                          \
      for (int i = 0; i < MR; ++i) {                                                                                   \
        T* row = c + i * ldc;                                                                                          \
        for (int v = 0; v < NV; ++v) {                                                                                 \
          VEC r = acc[i][v];                                                                                           \
          if (load_c) r = ADD(r, LOADU(row + v * LANES));                                                              \
          if (bias_m) r = ADD(r, SET1(bias_m[i]));                                                                     \
          if (bias_n) r = ADD(r, LOADU(bias_n + v * LANES));                                                           \
          if (relu) r = MAX(SETZERO(), r); /* max(0, x) returns x when x is NaN or -0.0, as x < 0 ? 0 : x */           \
          STOREU(row + v * LANES, r);                                                                                  \
        }                                                                                                              \
      }                                                                                                                \
    } else {                                                                                                           \
      alignas(64) T tile[MR * NR];                                                                                     \
      for (int i = 0; i < MR; ++i) {                                                                                   \
        for (int v = 0; v < NV; ++v) STOREU(tile + i * NR + v * LANES, acc[i][v]);                                     \
      }                                                                                                                \
      finish_edge_tile(tile, NR, c, ldc, m, n, load_c, bias_m, bias_n, relu);                                          \
    }                                                                                                                  \
  }                                                                                                                    \
  TARGET void NAME(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t ldc, int m, int n, bool load_c,      \
                   const T* bias_m, const T* bias_n, bool relu) {                                                      \
    NAME##_impl<false>(kc, a, lda, b, BS, c, ldc, m, n, load_c, bias_m, bias_n, relu);                                 \
  }
// The full-width kernel again with B read in place (MicroKernelRowsFn).
#define DLK_X86_MICRO_ROWS(NAME, TARGET, T, NR)                                                                        \
  TARGET void NAME##_rows(int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int m,      \
                          bool load_c, const T* bias_m, const T* bias_n, bool relu) {                                  \
    NAME##_impl<true>(kc, a, lda, b, ldb, c, ldc, m, NR, load_c, bias_m, bias_n, relu);                                \
  }

// AVX-512 (32 registers): 8 x 32 floats / 8 x 16 doubles = 16 accumulators (larger tiles that fit the
// registers were no faster, and 8 rows divide the usual M and channel counts). AVX2 (16 registers): 6 x 16
// floats / 6 x 8 doubles = 12 accumulators.
// The half-width variants (NV = 1) compute the last column panel of a GEMM when it has at most half its
// columns (e.g. 196 = 6 x 32 + 4 positions of a 14x14 image), with the same additions in the same order.
#define DLK_X86_MICRO_WIDTHS(NAME, TARGET, T, VEC, MR, LANES, W, TY)                                                   \
  DLK_X86_MICRO(NAME, TARGET, T, VEC, MR, 2, 2 * LANES, LANES, _mm##W##_setzero_##TY, _mm##W##_loadu_##TY,             \
                _mm##W##_storeu_##TY, _mm##W##_set1_##TY, _mm##W##_fmadd_##TY, _mm##W##_add_##TY, _mm##W##_max_##TY)   \
  DLK_X86_MICRO(NAME##_half, TARGET, T, VEC, MR, 1, 2 * LANES, LANES, _mm##W##_setzero_##TY, _mm##W##_loadu_##TY,      \
                _mm##W##_storeu_##TY, _mm##W##_set1_##TY, _mm##W##_fmadd_##TY, _mm##W##_add_##TY, _mm##W##_max_##TY)   \
  DLK_X86_MICRO_ROWS(NAME, TARGET, T, 2 * LANES)
DLK_X86_MICRO_WIDTHS(micro_f32_avx512, DLK_TARGET_AVX512, float, __m512, 8, 16, 512, ps)
// 10 x 32 floats (20 accumulators) for GEMMs of 10, 20, 30 ... rows, which 8-row panels pad by up to 60%
// (TinyVGG's 10-channel convolutions: 16 rows computed for 10). See micro_kernel_for_rows.
DLK_X86_MICRO_WIDTHS(micro_f32_avx512_m10, DLK_TARGET_AVX512, float, __m512, 10, 16, 512, ps)
DLK_X86_MICRO_WIDTHS(micro_f64_avx512, DLK_TARGET_AVX512, double, __m512d, 8, 8, 512, pd)
DLK_X86_MICRO_WIDTHS(micro_f32_avx2, DLK_TARGET_AVX2, float, __m256, 6, 8, 256, ps)
DLK_X86_MICRO_WIDTHS(micro_f64_avx2, DLK_TARGET_AVX2, double, __m256d, 6, 4, 256, pd)
#undef DLK_X86_MICRO_ROWS
#undef DLK_X86_MICRO_WIDTHS
#undef DLK_X86_MICRO

namespace {
// Columns [0, n) of the 8 x 8 block whose row i is v[i] stored as rows of dst (P apart): interleave pairs of rows,
// then pairs of pairs, then swap 128-bit halves.
DLK_TARGET_AVX2 inline void store_transposed_8x8(const __m256* v, int n, float* dst, int P) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int i = 0; i < 4 && i < n; ++i) _mm256_storeu_ps(dst + i * P, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
  for (int i = 0; i < 4 && 4 + i < n; ++i) {
    _mm256_storeu_ps(dst + (4 + i) * P, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
  }
}

// Rows [0, REM) of S (REM < 8) into dst[k * P + r]: 8 x 8 transposes with the missing rows zero, through a
// buffer, then REM floats per k (a full-width store would run into the next k's rows, which a group of 8 rows
// before this one may already have written). The 6-row A panels of the AVX2 micro-kernel are all such tails:
// element by element they cost more than the products for a 1x1 convolution's weight gradient.
template <int REM>
DLK_TARGET_AVX2 void pack_transpose_tail(const float* const* S, int64_t kc, float* dst, int P) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  alignas(32) float tmp[64];
  __m256 v[8];
  for (int i = REM; i < 8; ++i) v[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, kc - k));
    if (n == 8) {
      for (int i = 0; i < REM; ++i) v[i] = _mm256_loadu_ps(S[i] + k);
    } else {  // masked: nothing read past the rows
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
      for (int i = 0; i < REM; ++i) v[i] = _mm256_maskload_ps(S[i] + k, mask);
    }
    store_transposed_8x8(v, n, tmp, 8);
    for (int c = 0; c < n; ++c) std::memcpy(dst + (k + c) * P, tmp + c * 8, REM * sizeof(float));
  }
}
}  // namespace

DLK_TARGET_AVX2 void pack_transpose_ranges_f32_avx2(const float* const* S, const int64_t* lo, const int64_t* hi,
                                                    int64_t kc, float* dst, int P) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 v[8];
  for (int64_t k = 0; k < kc; k += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, kc - k));
    // Row r's lanes t with lo[r] <= k + t < hi[r] (and t < n): masked loads read nothing elsewhere.
    for (int r = 0; r < 8; ++r) {
      const int first = static_cast<int>(std::clamp<int64_t>(lo[r] - k, 0, 8));
      const int last = static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(hi[r], kc) - k, 0, 8));
      const __m256i mask = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(last), lane),
                                            _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(first - 1)));
      v[r] = _mm256_maskload_ps(S[r] + k, mask);
    }
    store_transposed_8x8(v, n, dst + k * P, P);
  }
}

namespace {
// Columns [k, k + n) (n <= 8) of rows S[0..8) into dst[c * P + i] = S[i][k + c]: one 8 x 8 transpose, with masked
// loads (nothing read past the rows) when n < 8.
DLK_TARGET_AVX2 inline void transpose_block_8(const float* const* S, int64_t k, int n, float* dst, int P) {
  __m256 v[8];
  if (n == 8) {
    for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(S[i] + k);
  } else {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int i = 0; i < 8; ++i) v[i] = _mm256_maskload_ps(S[i] + k, mask);
  }
  store_transposed_8x8(v, n, dst, P);
}
}  // namespace

DLK_TARGET_AVX2 void pack_transpose_f32_avx2(const float* const* S, int rows, int64_t kc, float* dst, int P) {
  int r = 0;
  // 16 rows at a time: each destination row gets 16 floats (a whole cache line where aligned) in one go. With
  // 8 rows per sweep over k, every line of dst was written half by one sweep and half by the next, and when P
  // is a power of two (a 1x1 weight's K) the lines of a sweep fall in a few L1 sets and are evicted in between.
  for (; r + 16 <= rows; r += 16) {
    for (int64_t k = 0; k < kc; k += 8) {
      const int n = static_cast<int>(std::min<int64_t>(8, kc - k));
      transpose_block_8(S + r, k, n, dst + k * P + r, P);
      transpose_block_8(S + r + 8, k, n, dst + k * P + r + 8, P);
    }
  }
  for (; r + 8 <= rows; r += 8) {
    for (int64_t k = 0; k < kc; k += 8) {
      transpose_block_8(S + r, k, static_cast<int>(std::min<int64_t>(8, kc - k)), dst + k * P + r, P);
    }
  }
  switch (rows - r) {
    case 1: return pack_transpose_tail<1>(S + r, kc, dst + r, P);
    case 2: return pack_transpose_tail<2>(S + r, kc, dst + r, P);
    case 3: return pack_transpose_tail<3>(S + r, kc, dst + r, P);
    case 4: return pack_transpose_tail<4>(S + r, kc, dst + r, P);
    case 5: return pack_transpose_tail<5>(S + r, kc, dst + r, P);
    case 6: return pack_transpose_tail<6>(S + r, kc, dst + r, P);
    case 7: return pack_transpose_tail<7>(S + r, kc, dst + r, P);
    default: return;
  }
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
