// The x86 im2col packers of the conv2d forward GEMM (AVX-512 and AVX2 masked loads and stores); conv2d_cpu.cpp
// calls them for float and stride 1 along W, panel by panel (the fused conv + max-pool's GEMM), on CPUs that
// have them; and the column-block packer of conv2d_cpu_im2col.h built for each of them.
#include "cpu/conv2d_cpu_x86.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <c10/util/Exception.h>

#include "cpu/conv2d_cpu_im2col.h"

#if defined(__x86_64__)
namespace dlkernels {
namespace cpu {
namespace {

// Lanes [lo, hi) of a vector as a mask.
inline uint32_t lane_mask(int64_t lo, int64_t hi) { return hi <= lo ? 0u : ((1u << hi) - 1) & ~((1u << lo) - 1); }

// The panel row is cut once into pieces of at most one vector, each within one output row (or in the zero
// columns past nr), with its store mask and, per kw, its load mask (the lanes whose column is inside the
// image); then each piece is copied down the panel, one masked load and store per k row, its source
// stepped from k to k without divisions.
struct Im2colPiece {
  int dst_col;      // first panel column
  int64_t oh;       // output row (-1: zero columns)
  int64_t iw_base;  // input column of the first lane, before kw * dw
  uint32_t store;   // lanes of the piece
  uint32_t put;     // lanes stored: all of them when the vector ends inside the panel row (the columns past the
                    // piece's are later pieces', written after it), which spares AVX2 its slow masked store
};

// The pieces' `put` masks, once they are all cut (pieces in column order, NR columns a row).
inline void set_put_masks(Im2colPiece* pieces, int count, int lanes, int NR) {
  for (int q = 0; q < count; ++q) {
    pieces[q].put = pieces[q].dst_col + lanes <= NR ? lane_mask(0, lanes) : pieces[q].store;
  }
}

__attribute__((target("avx2,fma"))) inline __m256i avx2_lanes(uint32_t mask) {  // lane i: bit i of mask
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(mask)), bit), bit);
}

}  // namespace

#define DLK_PACK_IM2COL_S1(NAME, TARGET, LANES, LOAD, STORE)                                                           \
  TARGET void NAME(const ConvShape& s, const float* xg, int64_t j0, int nr, int64_t k0, int64_t kc, float* dst,        \
                   int NR) {                                                                                           \
    constexpr int kMaxPieces = 128;                                                                                    \
    TORCH_INTERNAL_ASSERT(NR <= kMaxPieces / 2);                                                                       \
    Im2colPiece pieces[kMaxPieces];                                                                                    \
    int count = 0;                                                                                                     \
    for (int64_t jj = 0, oh = j0 / s.OW, ow = j0 % s.OW; jj < nr; ow = 0, ++oh) {                                      \
      const int64_t len = std::min<int64_t>(nr - jj, s.OW - ow);                                                       \
      for (int64_t t = 0; t < len; t += LANES) {                                                                       \
        pieces[count++] = {static_cast<int>(jj + t), oh, ow + t - s.pw,                                                \
                           lane_mask(0, std::min<int64_t>(LANES, len - t)), 0u};                                       \
      }                                                                                                                \
      jj += len;                                                                                                       \
    }                                                                                                                  \
    for (int t = nr; t < NR; t += LANES) {                                                                             \
      pieces[count++] = {t, -1, 0, lane_mask(0, std::min<int64_t>(LANES, NR - t)), 0u};                                \
    }                                                                                                                  \
    set_put_masks(pieces, count, LANES, NR);                                                                           \
    std::vector<uint32_t> load(static_cast<size_t>(count) * s.KW);                                                     \
    for (int q = 0; q < count; ++q) {                                                                                  \
      const int64_t n = 32 - __builtin_clz(pieces[q].store);                                                           \
      for (int64_t kw = 0; kw < s.KW; ++kw) {                                                                          \
        const int64_t first = pieces[q].iw_base + kw * s.dw;                                                           \
        load[q * s.KW + kw] =                                                                                          \
            pieces[q].oh < 0 ? 0u                                                                                      \
                             : lane_mask(std::clamp<int64_t>(-first, 0, n), std::clamp<int64_t>(s.W - first, 0, n));   \
      }                                                                                                                \
    }                                                                                                                  \
    /* Piece by piece down the panel: k = (c, kh, kw) steps the source by dw, dh * W or H * W. */                      \
    const int64_t c0 = k0 / (s.KH * s.KW), kh0 = (k0 / s.KW) % s.KH, kw0 = k0 % s.KW;                                  \
    for (int q = 0; q < count; ++q) {                                                                                  \
      const Im2colPiece& piece = pieces[q];                                                                            \
      const uint32_t* load_q = load.data() + q * s.KW;                                                                 \
      const int64_t ih_first = piece.oh * s.sh - s.ph; /* the input row for kh = 0 */                                  \
      float* d = dst + piece.dst_col;                                                                                  \
      int64_t kh = kh0, kw = kw0;                                                                                      \
      int64_t off = c0 * s.H * s.W + (ih_first + kh * s.dh) * s.W + piece.iw_base + kw * s.dw; /* of the source */     \
      bool row_in = piece.oh >= 0 && ih_first + kh * s.dh >= 0 && ih_first + kh * s.dh < s.H;                          \
      for (int64_t k = 0; k < kc; ++k) {                                                                               \
        STORE(d + k * NR, piece.put, LOAD(row_in ? load_q[kw] : 0u, xg + (row_in ? off : 0)));                         \
        off += s.dw;                                                                                                   \
        if (++kw == s.KW) {                                                                                            \
          kw = 0;                                                                                                      \
          off += s.dh * s.W - s.KW * s.dw;                                                                             \
          if (++kh == s.KH) {                                                                                          \
            kh = 0;                                                                                                    \
            off += s.H * s.W - s.KH * s.dh * s.W;                                                                      \
          }                                                                                                            \
          const int64_t ih = ih_first + kh * s.dh;                                                                     \
          row_in = piece.oh >= 0 && ih >= 0 && ih < s.H;                                                               \
        }                                                                                                              \
      }                                                                                                                \
    }                                                                                                                  \
  }

#define DLK_LOAD512(MASK, P) _mm512_maskz_loadu_ps(static_cast<__mmask16>(MASK), P)
#define DLK_STORE512(P, MASK, V) _mm512_mask_storeu_ps(P, static_cast<__mmask16>(MASK), V)
#define DLK_LOAD256(MASK, P) ((MASK) == 0xFFu ? _mm256_loadu_ps(P) : _mm256_maskload_ps(P, avx2_lanes(MASK)))
#define DLK_STORE256(P, MASK, V)                                                                                       \
  ((MASK) == 0xFFu ? _mm256_storeu_ps(P, V) : _mm256_maskstore_ps(P, avx2_lanes(MASK), V))
DLK_PACK_IM2COL_S1(conv2d_pack_im2col_f32_s1_avx512, DLK_TARGET_AVX512, int64_t(16), DLK_LOAD512, DLK_STORE512)
DLK_PACK_IM2COL_S1(conv2d_pack_im2col_f32_s1_avx2, DLK_TARGET_AVX2, int64_t(8), DLK_LOAD256, DLK_STORE256)
#undef DLK_LOAD512
#undef DLK_STORE512
#undef DLK_LOAD256
#undef DLK_STORE256
#undef DLK_PACK_IM2COL_S1

// The column-block packer, compiled for the target (its copies inlined: flatten).
#define DLK_PACK_IM2COL_BLOCK(NAME, TARGET)                                                                            \
  TARGET bool NAME(const float* planes, int64_t image, const int64_t* tab, int64_t row_step, int64_t Hx, int64_t Wx,   \
                   int64_t OW, int64_t P, int64_t j0, int64_t n, int64_t k0, int64_t kc, float* dst, int NR) {         \
    switch (NR) {                                                                                                      \
      case 16: return pack_im2col_block<16>(planes, image, tab, row_step, Hx, Wx, OW, P, j0, n, k0, kc, dst), true;    \
      case 32: return pack_im2col_block<32>(planes, image, tab, row_step, Hx, Wx, OW, P, j0, n, k0, kc, dst), true;    \
      default: return false;                                                                                           \
    }                                                                                                                  \
  }
DLK_PACK_IM2COL_BLOCK(conv2d_pack_im2col_block_f32_avx512, DLK_TARGET_AVX512)
DLK_PACK_IM2COL_BLOCK(conv2d_pack_im2col_block_f32_avx2, DLK_TARGET_AVX2)
#undef DLK_PACK_IM2COL_BLOCK

// One input row into its sw column phases (phase_split of conv2d_cpu.cpp): dst[b * phase + v] = row[b + sw * v] for
// v < Wq = ceil(W / sw), zero past the row. Whole vectors of each phase come from sw vectors of the row through
// two-source permutes (the even and the odd lanes of a pair, twice for a stride of 4), not one element at a time.
DLK_TARGET_AVX512 bool conv2d_phase_split_row_f32_avx512(const float* row, int64_t W, int64_t sw, float* dst,
                                                         int64_t phase) {
  if (sw != 2 && sw != 4) return false;
  const int64_t Wq = (W + sw - 1) / sw;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  auto load = [row, W](int64_t i) DLK_TARGET_AVX512 {  // 16 elements from row[i], zeros past W
    const int64_t left = W - i;
    return left >= 16 ? _mm512_loadu_ps(row + i)
                      : _mm512_maskz_loadu_ps(static_cast<__mmask16>(left <= 0 ? 0u : (1u << left) - 1), row + i);
  };
  for (int64_t v = 0; v < Wq; v += 16) {
    const int64_t left = Wq - v;
    const __mmask16 m = static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1);
    const int64_t i = sw * v;
    if (sw == 2) {
      const __m512 a = load(i), b = load(i + 16);
      _mm512_mask_storeu_ps(dst + v, m, _mm512_permutex2var_ps(a, even, b));
      _mm512_mask_storeu_ps(dst + phase + v, m, _mm512_permutex2var_ps(a, odd, b));
    } else {
      const __m512 a = load(i), b = load(i + 16), c = load(i + 32), d = load(i + 48);
      const __m512 ev0 = _mm512_permutex2var_ps(a, even, b),
                   od0 = _mm512_permutex2var_ps(a, odd, b);  // 0 mod 2, 1 mod 2
      const __m512 ev1 = _mm512_permutex2var_ps(c, even, d), od1 = _mm512_permutex2var_ps(c, odd, d);
      _mm512_mask_storeu_ps(dst + v, m, _mm512_permutex2var_ps(ev0, even, ev1));
      _mm512_mask_storeu_ps(dst + phase + v, m, _mm512_permutex2var_ps(od0, even, od1));
      _mm512_mask_storeu_ps(dst + 2 * phase + v, m, _mm512_permutex2var_ps(ev0, odd, ev1));
      _mm512_mask_storeu_ps(dst + 3 * phase + v, m, _mm512_permutex2var_ps(od0, odd, od1));
    }
  }
  return true;
}

// The same with AVX2 for whole vectors of each phase (8 lanes; the even and odd lanes of a pair by an in-lane
// shuffle and a cross-lane permute), the rest of the row element by element: AVX2's masked stores are slow on
// some CPUs.
DLK_TARGET_AVX2 bool conv2d_phase_split_row_f32_avx2(const float* row, int64_t W, int64_t sw, float* dst,
                                                     int64_t phase) {
  if (sw != 2 && sw != 4) return false;
  const int64_t Wq = (W + sw - 1) / sw;
  // Lanes 0-3 of the result from a, 4-7 from b: a's even (odd) lanes, then b's.
  auto evens = [](__m256 a, __m256 b) DLK_TARGET_AVX2 {
    return _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
  };
  auto odds = [](__m256 a, __m256 b) DLK_TARGET_AVX2 {
    return _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
  };
  int64_t v = 0;
  for (; sw * (v + 8) <= W; v += 8) {
    const float* r = row + sw * v;
    if (sw == 2) {
      const __m256 a = _mm256_loadu_ps(r), b = _mm256_loadu_ps(r + 8);
      _mm256_storeu_ps(dst + v, evens(a, b));
      _mm256_storeu_ps(dst + phase + v, odds(a, b));
    } else {
      const __m256 a = _mm256_loadu_ps(r), b = _mm256_loadu_ps(r + 8), c = _mm256_loadu_ps(r + 16),
                   d = _mm256_loadu_ps(r + 24);
      const __m256 ev0 = evens(a, b), od0 = odds(a, b), ev1 = evens(c, d), od1 = odds(c, d);
      _mm256_storeu_ps(dst + v, evens(ev0, ev1));
      _mm256_storeu_ps(dst + phase + v, evens(od0, od1));
      _mm256_storeu_ps(dst + 2 * phase + v, odds(ev0, ev1));
      _mm256_storeu_ps(dst + 3 * phase + v, odds(od0, od1));
    }
  }
  for (; v < Wq; ++v) {
    for (int64_t b = 0; b < sw; ++b) dst[b * phase + v] = b + sw * v < W ? row[b + sw * v] : 0.0f;
  }
  return true;
}

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
