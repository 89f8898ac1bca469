// The x86 kernels of max_pool2d's forward on the CPU (AVX-512 and AVX2 intrinsics), for float inputs: NCHW
// chunks of outputs along a row and channels_last groups of channels. max_pool2d_cpu.cpp walks the rows or
// positions, chooses these at run time and does every output they leave with the scalar rule.
#include "cpu/max_pool2d_cpu_x86.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#if defined(__x86_64__)
namespace dlkernels {
namespace cpu {
namespace {

// The vectorised forward for float NCHW, stride 1 or 2 along W: the same per-output rule, L outputs at a
// time (one per lane). Window positions are visited in the same row-major order as in the scalar loops of
// max_pool2d_cpu.cpp and the select is (v > max) | isnan(v), so values, ties and NaNs come out exactly as
// there; the scalar loops still do the outputs whose window leaves the row (padding), other strides, and
// CPUs without AVX2. Stride 2 loads
// two vectors and keeps their even lanes, so every input element of a row is read once per window row.
// Each running max is a chain of dependent compare/select steps, one per window position, so a call works
// on U independent chunks at once to overlap the chains.
// (Written with intrinsics: GCC 12 scalarises vector-extension compares and selects here.)

// Outputs [ow0[u], ow0[u] + 16), u < U, of one output row whose input rows are [ih0, ih1) (step dh), all
// window columns inside the row. Short (U = 1): the chunk has only n_last < 16 outputs (short rows, e.g. the
// 14 outputs of a 28-wide row, and the last outputs of a stride-2 row); its lanes past the window columns of
// those outputs are masked off (not read) and load as -inf, which never replaces a maximum, and its stores
// are masked to the n_last outputs. Full chunks load and store without masks, which are slower even with
// every lane on.
template <int SW, bool WithIndices, int U, bool Short = false>
DLK_TARGET_AVX512 void pool_chunks_avx512(const float* src, const PoolShape& p, int64_t ih0, int64_t ih1,
                                          const int64_t* ow0, int n_last, float* out, int64_t* ind) {
  const __m512i lane = _mm512_setr_epi32(0, SW, 2 * SW, 3 * SW, 4 * SW, 5 * SW, 6 * SW, 7 * SW, 8 * SW, 9 * SW, 10 * SW,
                                         11 * SW, 12 * SW, 13 * SW, 14 * SW, 15 * SW);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  static_assert(!Short || U == 1, "a short chunk is called alone");
  // A short chunk's lanes: of its first and second load (a tap reads (n_last - 1) * SW + 1 elements), and of
  // its stores.
  const int used = Short ? (n_last - 1) * SW + 1 : 16 * SW;
  const __mmask16 lo_mask = static_cast<__mmask16>((1u << std::min(used, 16)) - 1);
  const __mmask16 hi_mask = static_cast<__mmask16>((1u << std::max(used - 16, 0)) - 1);
  const __mmask16 out_mask = static_cast<__mmask16>((1u << (Short ? n_last : 16)) - 1);
  __m512 m[U];
  __m512i mi[U];
  for (int u = 0; u < U; ++u) {
    m[u] = neg_inf;
    mi[u] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(ih0 * p.W + ow0[u] * SW - p.pw)), lane);
  }
  for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
    for (int64_t kw = 0; kw < p.kw; ++kw) {
      const int64_t tap = ih * p.W - p.pw + kw * p.dw;
      for (int u = 0; u < U; ++u) {
        const int64_t off = tap + ow0[u] * SW;  // lane 0's input element
        const float* q = src + off;
        const __m512 a = Short ? _mm512_mask_loadu_ps(neg_inf, lo_mask, q) : _mm512_loadu_ps(q);
        const __m512 b = SW == 1 ? a : Short ? _mm512_mask_loadu_ps(neg_inf, hi_mask, q + 16) : _mm512_loadu_ps(q + 16);
        const __m512 v = SW == 1 ? a : _mm512_permutex2var_ps(a, even, b);
        const __mmask16 take = _mm512_cmp_ps_mask(v, m[u], _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m[u] = _mm512_mask_mov_ps(m[u], take, v);
        if (WithIndices) {
          const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(off)), lane);
          mi[u] = _mm512_mask_mov_epi32(mi[u], take, idx);
        }
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    if (Short) {
      _mm512_mask_storeu_ps(out + ow0[u], out_mask, m[u]);
    } else {
      _mm512_storeu_ps(out + ow0[u], m[u]);
    }
    if (WithIndices) {
      _mm512_mask_storeu_epi64(ind + ow0[u], static_cast<__mmask8>(out_mask),
                               _mm512_cvtepi32_epi64(_mm512_castsi512_si256(mi[u])));
      _mm512_mask_storeu_epi64(ind + ow0[u] + 8, static_cast<__mmask8>(out_mask >> 8),
                               _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(mi[u], 1)));
    }
  }
}

// The same with 8 lanes, full chunks only (n_last is always 8: without masks, the rows' short ends take the
// scalar rule).
template <int SW, bool WithIndices, int U>
DLK_TARGET_AVX2 void pool_chunks_avx2(const float* src, const PoolShape& p, int64_t ih0, int64_t ih1,
                                      const int64_t* ow0, int /*n_last*/, float* out, int64_t* ind) {
  const __m256i lane = _mm256_setr_epi32(0, SW, 2 * SW, 3 * SW, 4 * SW, 5 * SW, 6 * SW, 7 * SW);
  __m256 m[U];
  __m256i mi[U];
  for (int u = 0; u < U; ++u) {
    m[u] = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    mi[u] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(ih0 * p.W + ow0[u] * SW - p.pw)), lane);
  }
  for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
    for (int64_t kw = 0; kw < p.kw; ++kw) {
      const int64_t tap = ih * p.W - p.pw + kw * p.dw;
      for (int u = 0; u < U; ++u) {
        const int64_t off = tap + ow0[u] * SW;
        const float* q = src + off;
        __m256 v;
        if (SW == 1) {
          v = _mm256_loadu_ps(q);
        } else {  // even lanes of (a, b): [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs in order
          const __m256 ab = _mm256_shuffle_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(q + 8), 0x88);
          v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ab), 0xD8));
        }
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, m[u], _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        m[u] = _mm256_blendv_ps(m[u], v, take);
        if (WithIndices) {
          const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(off)), lane);
          mi[u] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(mi[u]), _mm256_castsi256_ps(idx), take));
        }
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    _mm256_storeu_ps(out + ow0[u], m[u]);
    if (WithIndices) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind + ow0[u]),
                          _mm256_cvtepi32_epi64(_mm256_castsi256_si128(mi[u])));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind + ow0[u] + 4),
                          _mm256_cvtepi32_epi64(_mm256_extracti128_si256(mi[u], 1)));
    }
  }
}

// The vectorised forward for float channels_last: the same per-channel rule, L channels at a time, window
// positions in the same row-major order, so values, ties and NaNs match the scalar loop exactly. The window
// of an output position is clipped to the input ([ih0, ih1) x [iw0, iw1), steps dh and dw) by the caller.
// As for NCHW, one call keeps U vectors of channels (U*L channels) in flight.

// Channels [c0, c0 + 16*U), of which only the first `count` exist (the rest are masked off).
template <bool WithIndices, int U>
DLK_TARGET_AVX512 void pool_channels_avx512(const float* src_n, const PoolShape& p, int64_t ih0, int64_t ih1,
                                            int64_t iw0, int64_t iw1, int64_t c0, int64_t count, float* out,
                                            int64_t* ind) {
  __mmask16 lanes[U];
  __m512 m[U];
  __m512i mi[U];
  for (int u = 0; u < U; ++u) {
    const int64_t n = std::min<int64_t>(16, count - 16 * u);
    lanes[u] = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    m[u] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    mi[u] = _mm512_set1_epi32(static_cast<int32_t>(ih0 * p.W + iw0));
  }
  for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
    for (int64_t iw = iw0; iw < iw1; iw += p.dw) {
      const float* q = src_n + (ih * p.W + iw) * p.C + c0;
      const __m512i idx = _mm512_set1_epi32(static_cast<int32_t>(ih * p.W + iw));
      for (int u = 0; u < U; ++u) {
        const __m512 v = _mm512_maskz_loadu_ps(lanes[u], q + 16 * u);
        const __mmask16 take = _mm512_cmp_ps_mask(v, m[u], _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m[u] = _mm512_mask_mov_ps(m[u], take, v);
        if (WithIndices) mi[u] = _mm512_mask_mov_epi32(mi[u], take, idx);
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    const int64_t c = c0 + 16 * u;
    _mm512_mask_storeu_ps(out + c, lanes[u], m[u]);
    if (WithIndices) {
      _mm512_mask_storeu_epi64(ind + c, __mmask8(lanes[u]), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(mi[u])));
      _mm512_mask_storeu_epi64(ind + c + 8, __mmask8(lanes[u] >> 8),
                               _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(mi[u], 1)));
    }
  }
}

// The same with 8 lanes and no masks: channels [c0, c0 + 8*U), all of them present.
template <bool WithIndices, int U>
DLK_TARGET_AVX2 void pool_channels_avx2(const float* src_n, const PoolShape& p, int64_t ih0, int64_t ih1, int64_t iw0,
                                        int64_t iw1, int64_t c0, int64_t /*count*/, float* out, int64_t* ind) {
  __m256 m[U];
  __m256i mi[U];
  for (int u = 0; u < U; ++u) {
    m[u] = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    mi[u] = _mm256_set1_epi32(static_cast<int32_t>(ih0 * p.W + iw0));
  }
  for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
    for (int64_t iw = iw0; iw < iw1; iw += p.dw) {
      const float* q = src_n + (ih * p.W + iw) * p.C + c0;
      const __m256 idx = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(ih * p.W + iw)));
      for (int u = 0; u < U; ++u) {
        const __m256 v = _mm256_loadu_ps(q + 8 * u);
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, m[u], _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        m[u] = _mm256_blendv_ps(m[u], v, take);
        if (WithIndices) mi[u] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(mi[u]), idx, take));
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    const int64_t c = c0 + 8 * u;
    _mm256_storeu_ps(out + c, m[u]);
    if (WithIndices) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind + c), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(mi[u])));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind + c + 4),
                          _mm256_cvtepi32_epi64(_mm256_extracti128_si256(mi[u], 1)));
    }
  }
}

}  // namespace

// Many channels (more than the registers hold): window positions outer, channels inner, the running
// maxima kept in `out` and the running indices in `idx` (int32, C of them) in L1. Each tap's channels are
// then read as one sequential run, where interleaving the taps in register-sized groups reads several
// short runs at once, which the hardware prefetchers follow less well when the input comes from memory.
template <bool WithIndices>
DLK_TARGET_AVX512 void max_pool2d_position_taps_avx512(const float* src_n, const PoolShape& p, int64_t ih0, int64_t ih1,
                                                       int64_t iw0, int64_t iw1, float* out, int64_t* ind,
                                                       int32_t* idx) {
  const int64_t C = p.C;
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i first = _mm512_set1_epi32(static_cast<int32_t>(ih0 * p.W + iw0));
  auto lanes = [C](int64_t c) { return C - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (C - c)) - 1); };
  for (int64_t c = 0; c < C; c += 16) {
    _mm512_mask_storeu_ps(out + c, lanes(c), neg_inf);
    if (WithIndices) _mm512_mask_storeu_epi32(idx + c, lanes(c), first);
  }
  for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
    for (int64_t iw = iw0; iw < iw1; iw += p.dw) {
      const float* q = src_n + (ih * p.W + iw) * C;
      const __m512i tap = _mm512_set1_epi32(static_cast<int32_t>(ih * p.W + iw));
      for (int64_t c = 0; c < C; c += 16) {
        const __mmask16 l = lanes(c);
        const __m512 v = _mm512_maskz_loadu_ps(l, q + c);
        const __m512 m = _mm512_maskz_loadu_ps(l, out + c);
        const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        _mm512_mask_storeu_ps(out + c, take & l, v);
        if (WithIndices) _mm512_mask_storeu_epi32(idx + c, take & l, tap);
      }
    }
  }
  if (WithIndices) {
    for (int64_t c = 0; c < C; c += 8) {
      const __mmask8 l = C - c >= 8 ? __mmask8(0xFF) : __mmask8((1u << (C - c)) - 1);
      _mm512_mask_storeu_epi64(ind + c, l, _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(l, idx + c)));
    }
  }
}

template <int SW, bool WithIndices>
PoolChunkKernels max_pool2d_chunk_kernels(bool avx512) {
  if (avx512) {
    return {{&pool_chunks_avx512<SW, WithIndices, 1>, &pool_chunks_avx512<SW, WithIndices, 2>,
             &pool_chunks_avx512<SW, WithIndices, 3>, &pool_chunks_avx512<SW, WithIndices, 4>},
            16,
            &pool_chunks_avx512<SW, WithIndices, 1, true>};
  }
  return {{&pool_chunks_avx2<SW, WithIndices, 1>, &pool_chunks_avx2<SW, WithIndices, 2>,
           &pool_chunks_avx2<SW, WithIndices, 3>, &pool_chunks_avx2<SW, WithIndices, 4>},
          8,
          nullptr};
}
template PoolChunkKernels max_pool2d_chunk_kernels<1, false>(bool);
template PoolChunkKernels max_pool2d_chunk_kernels<1, true>(bool);
template PoolChunkKernels max_pool2d_chunk_kernels<2, false>(bool);
template PoolChunkKernels max_pool2d_chunk_kernels<2, true>(bool);

template <bool WithIndices>
PoolChannelKernels max_pool2d_channel_kernels(bool avx512) {
  if (avx512) {
    return {{&pool_channels_avx512<WithIndices, 1>, &pool_channels_avx512<WithIndices, 2>,
             &pool_channels_avx512<WithIndices, 3>, &pool_channels_avx512<WithIndices, 4>},
            16};
  }
  return {{&pool_channels_avx2<WithIndices, 1>, &pool_channels_avx2<WithIndices, 2>,
           &pool_channels_avx2<WithIndices, 3>, &pool_channels_avx2<WithIndices, 4>},
          8};
}
template PoolChannelKernels max_pool2d_channel_kernels<false>(bool);
template PoolChannelKernels max_pool2d_channel_kernels<true>(bool);

template void max_pool2d_position_taps_avx512<false>(const float*, const PoolShape&, int64_t, int64_t, int64_t, int64_t,
                                                     float*, int64_t*, int32_t*);
template void max_pool2d_position_taps_avx512<true>(const float*, const PoolShape&, int64_t, int64_t, int64_t, int64_t,
                                                    float*, int64_t*, int32_t*);

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
