// The x86 pooling kernels of conv2d_maxpool's forward (AVX-512 and AVX2 intrinsics; GCC 12 scalarises
// vector-extension compares and selects), for float and the 2x2 window of stride 2 without padding.
#include "cpu/conv2d_maxpool_cpu_x86.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__x86_64__)
namespace dlkernels {
namespace cpu {
namespace {

// One window by the scalar rule: its taps (dh, dw) in row-major order, those outside the conv output skipped.
inline void window_2x2(const float* rows, int64_t ld, int64_t r0, int64_t OH, int64_t OW, int64_t q, int64_t pw,
                       float* mv, int32_t* mi) {
  float m = -std::numeric_limits<float>::infinity();
  int32_t id = 0;
  for (int64_t dh = 0; dh < 2 && 2 * q + dh < OH; ++dh) {
    for (int64_t dw = 0; dw < 2 && 2 * pw + dw < OW; ++dw) {
      const float v = rows[(2 * q + dh - r0) * ld + 2 * pw + dw];
      if (v > m || std::isnan(v)) m = v, id = static_cast<int32_t>(dh * 2 + dw);
    }
  }
  *mv = m;
  *mi = id;
}

}  // namespace

// Both kernels below: per pooled row, chunks of L windows along the row. The first tap (row 0, even column)
// always replaces the -inf start (or keeps it, with the same index 0), so it is the start; then the odd
// column, then row 1's even and odd columns, each by the (v > max) | isnan(v) select. The last chunk of a row
// (fewer than L windows: 14 for a 28-wide conv output) loads only its 2 * rest columns (the lanes past them
// are not read, and their results not stored); windows leaving the conv output (ceil_mode) take window_2x2.

DLK_TARGET_AVX512 void conv2d_maxpool_pool_2x2_avx512(const BlockShape& b, const float* rows, int64_t ld, int64_t r0,
                                                      int64_t q0, int64_t q1, float* mv, int32_t* mi) {
  constexpr int64_t L = 16;
  const int64_t OH = b.conv.OH, OW = b.conv.OW, PW = b.PW, full = OW / 2;  // windows with both columns inside
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const int64_t rest = full % L;  // windows of the last, partial chunk
  const __mmask16 all = 0xFFFF, out_mask = static_cast<__mmask16>((1u << rest) - 1);
  const __mmask16 lo_mask = static_cast<__mmask16>((1u << std::min<int64_t>(2 * rest, L)) - 1);
  const __mmask16 hi_mask = static_cast<__mmask16>((1u << std::max<int64_t>(2 * rest - L, 0)) - 1);
  for (int64_t q = q0; q < q1; ++q) {
    float* m_row = mv + (q - q0) * PW;
    int32_t* i_row = mi + (q - q0) * PW;
    int64_t pw = 0;
    if (2 * q + 1 < OH) {
      const float* top = rows + (2 * q - r0) * ld;
      const float* bottom = top + ld;
      for (; pw < full; pw += L) {
        const bool part = pw + L > full;
        const __mmask16 lo = part ? lo_mask : all, hi = part ? hi_mask : all, st = part ? out_mask : all;
        const float *t = top + 2 * pw, *u = bottom + 2 * pw;
        const __m512 t0 = _mm512_maskz_loadu_ps(lo, t), t1 = _mm512_maskz_loadu_ps(hi, t + L);
        const __m512 u0 = _mm512_maskz_loadu_ps(lo, u), u1 = _mm512_maskz_loadu_ps(hi, u + L);
        __m512 m = _mm512_permutex2var_ps(t0, even, t1);
        __m512i id = _mm512_setzero_si512();
        const __m512 taps[3] = {_mm512_permutex2var_ps(t0, odd, t1), _mm512_permutex2var_ps(u0, even, u1),
                                _mm512_permutex2var_ps(u0, odd, u1)};
        for (int tap = 0; tap < 3; ++tap) {
          const __mmask16 take =
              _mm512_cmp_ps_mask(taps[tap], m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(taps[tap], taps[tap], _CMP_UNORD_Q);
          m = _mm512_mask_blend_ps(take, m, taps[tap]);
          id = _mm512_mask_blend_epi32(take, id, _mm512_set1_epi32(tap + 1));
        }
        _mm512_mask_storeu_ps(m_row + pw, st, m);
        _mm512_mask_storeu_epi32(i_row + pw, st, id);
      }
      pw = full;
    }
    for (; pw < PW; ++pw) window_2x2(rows, ld, r0, OH, OW, q, pw, m_row + pw, i_row + pw);
  }
}

namespace {
// Lanes [0, n) of an AVX2 mask (all bits set in a lane that is on).
__attribute__((target("avx2,fma"))) inline __m256i avx2_first(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// The even (odd) elements of the 16 floats a, b in order: in-lane shuffles, then the 64-bit quarters in order.
__attribute__((target("avx2,fma"))) inline __m256 avx2_even(__m256 a, __m256 b) {
  return _mm256_castpd_ps(
      _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
}
__attribute__((target("avx2,fma"))) inline __m256 avx2_odd(__m256 a, __m256 b) {
  return _mm256_castpd_ps(
      _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
}
}  // namespace

DLK_TARGET_AVX2 void conv2d_maxpool_pool_2x2_avx2(const BlockShape& b, const float* rows, int64_t ld, int64_t r0,
                                                  int64_t q0, int64_t q1, float* mv, int32_t* mi) {
  constexpr int64_t L = 8;
  const int64_t OH = b.conv.OH, OW = b.conv.OW, PW = b.PW, full = OW / 2;
  const int64_t rest = full % L;
  const __m256i all = avx2_first(L), out_mask = avx2_first(rest);
  const __m256i lo_mask = avx2_first(std::min<int64_t>(2 * rest, L)),
                hi_mask = avx2_first(std::max<int64_t>(2 * rest - L, 0));
  for (int64_t q = q0; q < q1; ++q) {
    float* m_row = mv + (q - q0) * PW;
    int32_t* i_row = mi + (q - q0) * PW;
    int64_t pw = 0;
    if (2 * q + 1 < OH) {
      const float* top = rows + (2 * q - r0) * ld;
      const float* bottom = top + ld;
      for (; pw < full; pw += L) {
        const bool part = pw + L > full;
        const __m256i lo = part ? lo_mask : all, hi = part ? hi_mask : all, st = part ? out_mask : all;
        const float *t = top + 2 * pw, *u = bottom + 2 * pw;
        // Masked moves only for the partial chunk: AVX2's masked stores are slow on some cores.
        const __m256 t0 = part ? _mm256_maskload_ps(t, lo) : _mm256_loadu_ps(t);
        const __m256 t1 = part ? _mm256_maskload_ps(t + L, hi) : _mm256_loadu_ps(t + L);
        const __m256 u0 = part ? _mm256_maskload_ps(u, lo) : _mm256_loadu_ps(u);
        const __m256 u1 = part ? _mm256_maskload_ps(u + L, hi) : _mm256_loadu_ps(u + L);
        __m256 m = avx2_even(t0, t1);
        __m256 id = _mm256_setzero_ps();  // the int32 indices, as float bit patterns for blendv
        const __m256 taps[3] = {avx2_odd(t0, t1), avx2_even(u0, u1), avx2_odd(u0, u1)};
        for (int tap = 0; tap < 3; ++tap) {
          const __m256 take =
              _mm256_or_ps(_mm256_cmp_ps(taps[tap], m, _CMP_GT_OQ), _mm256_cmp_ps(taps[tap], taps[tap], _CMP_UNORD_Q));
          m = _mm256_blendv_ps(m, taps[tap], take);
          id = _mm256_blendv_ps(id, _mm256_castsi256_ps(_mm256_set1_epi32(tap + 1)), take);
        }
        if (part) {
          _mm256_maskstore_ps(m_row + pw, st, m);
          _mm256_maskstore_epi32(i_row + pw, st, _mm256_castps_si256(id));
        } else {
          _mm256_storeu_ps(m_row + pw, m);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(i_row + pw), _mm256_castps_si256(id));
        }
      }
      pw = full;
    }
    for (; pw < PW; ++pw) window_2x2(rows, ld, r0, OH, OW, q, pw, m_row + pw, i_row + pw);
  }
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
