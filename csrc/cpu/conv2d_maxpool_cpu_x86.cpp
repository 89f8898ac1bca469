// The x86 pooling kernels of conv2d_maxpool's forward (AVX-512 and AVX2 intrinsics; GCC 12 scalarises
// vector-extension compares and selects), for float and the 2x2 window of stride 2 without padding.
#include "cpu/conv2d_maxpool_cpu_x86.h"

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

// The four taps of L windows: a (row 0, even column), b (row 0, odd), c (row 1, even), d (row 1, odd). The
// first tap always replaces the -inf start (or keeps it, with the same index 0), so it is the start.
#define DLK_POOL_2X2(NAME, TARGET, L, VF, VI, LOADU, EVEN, ODD, TAKE, BLEND, BLEND_I, SET1_I, STORE, STORE_I)          \
  TARGET void NAME(const BlockShape& b, const float* rows, int64_t ld, int64_t r0, int64_t q0, int64_t q1, float* mv,  \
                   int32_t* mi) {                                                                                      \
    const int64_t OH = b.conv.OH, OW = b.conv.OW, PW = b.PW;                                                           \
    const int64_t full = OW / 2; /* windows with both columns inside */                                                \
    const VI one = SET1_I(1), two = SET1_I(2), three = SET1_I(3);                                                      \
    for (int64_t q = q0; q < q1; ++q) {                                                                                \
      float* m_row = mv + (q - q0) * PW;                                                                               \
      int32_t* i_row = mi + (q - q0) * PW;                                                                             \
      int64_t pw = 0;                                                                                                  \
      if (2 * q + 1 < OH) {                                                                                            \
        const float* top = rows + (2 * q - r0) * ld;                                                                   \
        const float* bottom = top + ld;                                                                                \
        for (; pw + L <= full; pw += L) {                                                                              \
          const VF t0 = LOADU(top + 2 * pw), t1 = LOADU(top + 2 * pw + L);                                             \
          const VF u0 = LOADU(bottom + 2 * pw), u1 = LOADU(bottom + 2 * pw + L);                                       \
          VF m = EVEN(t0, t1);                                                                                         \
          VI id = SET1_I(0);                                                                                           \
          const VF vb = ODD(t0, t1), vc = EVEN(u0, u1), vd = ODD(u0, u1);                                              \
          auto take = TAKE(vb, m);                                                                                     \
          m = BLEND(take, m, vb), id = BLEND_I(take, id, one);                                                         \
          take = TAKE(vc, m);                                                                                          \
          m = BLEND(take, m, vc), id = BLEND_I(take, id, two);                                                         \
          take = TAKE(vd, m);                                                                                          \
          m = BLEND(take, m, vd), id = BLEND_I(take, id, three);                                                       \
          STORE(m_row + pw, m);                                                                                        \
          STORE_I(i_row + pw, id);                                                                                     \
        }                                                                                                              \
      }                                                                                                                \
      for (; pw < PW; ++pw) window_2x2(rows, ld, r0, OH, OW, q, pw, m_row + pw, i_row + pw);                           \
    }                                                                                                                  \
  }

// AVX-512: 16 windows from two 16-float loads per row.
#define DLK_EVEN512(A, B)                                                                                              \
  _mm512_permutex2var_ps(A, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), B)
#define DLK_ODD512(A, B)                                                                                               \
  _mm512_permutex2var_ps(A, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), B)
#define DLK_TAKE512(V, M) (_mm512_cmp_ps_mask(V, M, _CMP_GT_OQ) | _mm512_cmp_ps_mask(V, V, _CMP_UNORD_Q))
#define DLK_BLEND512(K, A, B) _mm512_mask_blend_ps(K, A, B)
#define DLK_BLENDI512(K, A, B) _mm512_mask_blend_epi32(K, A, B)
#define DLK_STOREI512(P, V) _mm512_storeu_si512(reinterpret_cast<void*>(P), V)
DLK_POOL_2X2(conv2d_maxpool_pool_2x2_avx512, DLK_TARGET_AVX512, 16, __m512, __m512i, _mm512_loadu_ps, DLK_EVEN512,
             DLK_ODD512, DLK_TAKE512, DLK_BLEND512, DLK_BLENDI512, _mm512_set1_epi32, _mm512_storeu_ps, DLK_STOREI512)

// AVX2: 8 windows from two 8-float loads per row (in-lane shuffles, then the 64-bit quarters put in order).
#define DLK_EVEN256(A, B)                                                                                              \
  _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(A, B, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8))
#define DLK_ODD256(A, B)                                                                                               \
  _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(A, B, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8))
#define DLK_TAKE256(V, M) _mm256_or_ps(_mm256_cmp_ps(V, M, _CMP_GT_OQ), _mm256_cmp_ps(V, V, _CMP_UNORD_Q))
#define DLK_BLEND256(K, A, B) _mm256_blendv_ps(A, B, K)
#define DLK_BLENDI256(K, A, B) _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(A), _mm256_castsi256_ps(B), K))
#define DLK_STOREI256(P, V) _mm256_storeu_si256(reinterpret_cast<__m256i*>(P), V)
DLK_POOL_2X2(conv2d_maxpool_pool_2x2_avx2, DLK_TARGET_AVX2, 8, __m256, __m256i, _mm256_loadu_ps, DLK_EVEN256,
             DLK_ODD256, DLK_TAKE256, DLK_BLEND256, DLK_BLENDI256, _mm256_set1_epi32, _mm256_storeu_ps, DLK_STOREI256)

#undef DLK_POOL_2X2
#undef DLK_EVEN512
#undef DLK_ODD512
#undef DLK_TAKE512
#undef DLK_BLEND512
#undef DLK_BLENDI512
#undef DLK_STOREI512
#undef DLK_EVEN256
#undef DLK_ODD256
#undef DLK_TAKE256
#undef DLK_BLEND256
#undef DLK_BLENDI256
#undef DLK_STOREI256

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
