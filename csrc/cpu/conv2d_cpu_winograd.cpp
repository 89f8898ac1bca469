// The Winograd convolution F(2x2, 3x3) (see conv2d_cpu_winograd.h).
//
// Layout. The filter is transformed once per call into 16 A operands (one per entry xi of the 4x4
// transformed tile), each [K x C], packed in the micro-kernel's MR-row panels. The work is split into tasks
// of whole tile rows, counted over the batch (a task's rows run on from one image into the next); a task transforms its
// input tiles into 16 B operands [C x tiles], stored as the micro-kernel's NR-column panels (the tile index is the
// column), then for each panel of NR tiles and each MR-row panel of output channels runs the 16 products into a small
// L1 buffer and transforms them straight into output pixels (bias and relu there). The block is sized so that its 16 B
// operands stay in L2 while every output-channel panel sweeps them.
//
// Input transform B^T d B of a tile d (4x4) at input rows 2th - ph + a and columns 2tw - pw + b. Along a
// tile row the 4 input rows are split once into their even and odd columns (E, O: E[t] is column 2t - pw),
// the row transform (d0 - d2, d1 + d2, d2 - d1, d1 - d3) is applied to E and O, and the column transform is
// then u0 = E[t] - E[t+1], u1 = O[t] + E[t+1], u2 = E[t+1] - O[t], u3 = O[t] - O[t+1]: contiguous loops over
// the tiles of the row, which the compiler vectorises for the target of the calling function.
#include "cpu/conv2d_cpu_winograd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/memory.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {
namespace {

constexpr int kXi = 16;  // entries of a transformed 4x4 tile

// The version of `name` for cpu_isa() among those compiled per ISA: name_avx512, name_avx2 or name_base (the vector
// code of this file is one DLK_ALWAYS_INLINE function per step, wrapped once per ISA).
#if defined(__x86_64__)
#define DLK_WINOGRAD_FOR_ISA(name)                                                                                     \
  (cpu_isa() == Isa::Avx512 ? name##_avx512 : cpu_isa() == Isa::Avx2 ? name##_avx2 : name##_base)
#else
#define DLK_WINOGRAD_FOR_ISA(name) name##_base
#endif

struct WinogradGeom {
  int64_t TH, TW;  // tiles per image (2x2 output pixels each)
  int64_t R;       // tile rows per task, counted over the batch (image n's tile row th is row n * TH + th)
  int64_t tasks;   // tasks over the batch
  int64_t Tpad;    // columns of a task's B operands (R * TW tiles rounded up to whole panels)
  int64_t KP;      // output-channel panels
  int64_t UX;      // floats between the transformed filter's 16 operands (see transform_filter)
  int MR, NR;
  int64_t LDM;  // row stride of the product tiles: NR rounded up to whole 16-float vectors
};

WinogradGeom geometry(const ConvShape& s, const MicroKernel<float>& uk) {
  WinogradGeom g{};
  g.MR = uk.mr, g.NR = uk.nr;
  g.TH = (s.OH + 1) / 2, g.TW = (s.OW + 1) / 2;
  // 16 B operands of C x tiles floats: about 512 KiB, and at least one panel of tiles. Of the row counts
  // that fit, the one that leaves the least of its last panel empty (the micro-kernel computes whole
  // panels), the larger on a tie. Rows run on from one image into the next: small images fill panels too.
  const int64_t target = std::max<int64_t>(g.NR, 8192 / s.C), rows = s.N * g.TH;
  const int64_t most = std::clamp<int64_t>(target / g.TW, 1, rows);
  double best = 0;
  for (int64_t r = 1; r <= most; ++r) {
    const double used = double(r * g.TW) / double((r * g.TW + g.NR - 1) / g.NR * g.NR);
    if (used >= best) best = used, g.R = r;
  }
  g.tasks = (rows + g.R - 1) / g.R;
  g.Tpad = (g.R * g.TW + g.NR - 1) / g.NR * g.NR;
  g.KP = (s.K + g.MR - 1) / g.MR;
  // One line more than the operand: a power-of-two distance would put the 16 write streams of
  // transform_filter in the same cache sets, which thrashed them.
  g.UX = g.KP * s.C * g.MR + 16;
  g.LDM = (g.NR + 15) / 16 * 16;
  return g;
}

// 16 floats as one GCC vector: one AVX-512 register, two AVX2 ones, or four SSE ones, depending on the target
// the calling function is compiled for.
typedef float vf __attribute__((vector_size(64), aligned(4)));
constexpr int kL = 16;
DLK_ALWAYS_INLINE vf ld(const float* p) { return *reinterpret_cast<const vf*>(p); }
DLK_ALWAYS_INLINE void st(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }
// 8 and 4 floats: the tails of rows narrower than 16 tiles (the tiles of a 28x28 plane's row are 14).
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
// Loads and stores of V at any float's alignment (a template argument loses the typedefs' aligned(4)).
template <typename V>
DLK_ALWAYS_INLINE V ldv(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
DLK_ALWAYS_INLINE void stv(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// U: for xi (UX floats apart), for output-channel panel kp, the panel [C][MR] (k-major for the micro-kernel, zero rows
// past K). The filters of 8 rows of a panel (output channels, C * 9 contiguous floats each) are first transposed, a
// block of channels at a time, to [c][tap][8 rows] (8 x 8 register transposes), so that the transform then runs on
// 8-float vectors, one lane per row, and writes each panel's row of MR floats for (xi, c) whole. Filter by filter in
// scalars, the transform cost a large part of the products on small planes (a 7x7 plane has few tiles per filter).
// transform_filter_panels does the panels [kp0, kp1); it is compiled for each ISA so that a vector is one register.
constexpr int64_t kChannelBlock = 64;  // channels per transposed block: 64 x 9 x 8 floats (18 KiB)
DLK_ALWAYS_INLINE void transform_filter_panels(const ConvShape& s, const WinogradGeom& g, const float* w, float* U,
                                               int64_t kp0, int64_t kp1) {
  const int64_t panel = s.C * g.MR;
  alignas(64) float t[kChannelBlock * 9 * 8];
  for (int64_t kp = kp0; kp < kp1; ++kp) {
    const int m = static_cast<int>(std::min<int64_t>(g.MR, s.K - kp * g.MR));
    for (int i0 = 0; i0 < g.MR; i0 += 8) {
      const int rows = std::clamp(m - i0, 0, 8), lanes = std::min(8, g.MR - i0);
      for (int64_t c0 = 0; c0 < s.C; c0 += kChannelBlock) {
        const int64_t cb = std::min(kChannelBlock, s.C - c0), kc = cb * 9;
        const float* src[8];
        for (int r = 0; r < rows; ++r) src[r] = w + ((kp * g.MR + i0 + r) * s.C + c0) * 9;
        if (rows < 8) std::fill(t, t + kc * 8, 0.f);  // the lanes past K
        if (rows > 0 && !pack_transpose_f32(src, rows, kc, t, 8)) {
          for (int r = 0; r < rows; ++r) {
            for (int64_t k = 0; k < kc; ++k) t[k * 8 + r] = src[r][k];
          }
        }
        for (int64_t c = 0; c < cb; ++c) {
          const float* f = t + c * 72;  // tap j of the 8 rows at f + 8 j
          vf8 gg[4][3];                 // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2
          for (int b = 0; b < 3; ++b) {
            const vf8 f0 = ldv<vf8>(f + 8 * b), f1 = ldv<vf8>(f + 8 * (3 + b)), f2 = ldv<vf8>(f + 8 * (6 + b));
            gg[0][b] = f0;
            gg[1][b] = 0.5f * (f0 + f1 + f2);
            gg[2][b] = 0.5f * (f0 - f1 + f2);
            gg[3][b] = f2;
          }
          float* dst = U + kp * panel + (c0 + c) * g.MR + i0;
          const auto put = [&](int xi, vf8 v) {
            float* d = dst + xi * g.UX;
            if (lanes == 8) {
              stv(d, v);
            } else {
              for (int l = 0; l < lanes; ++l) d[l] = v[l];
            }
          };
          for (int a = 0; a < 4; ++a) {  // (G g) G^T: the same along the columns
            put(a * 4 + 0, gg[a][0]);
            put(a * 4 + 1, 0.5f * (gg[a][0] + gg[a][1] + gg[a][2]));
            put(a * 4 + 2, 0.5f * (gg[a][0] - gg[a][1] + gg[a][2]));
            put(a * 4 + 3, gg[a][2]);
          }
        }
      }
    }
  }
}

using FilterFn = void (*)(const ConvShape&, const WinogradGeom&, const float*, float*, int64_t, int64_t);
#if defined(__x86_64__)
DLK_TARGET_AVX512 void transform_filter_avx512(const ConvShape& s, const WinogradGeom& g, const float* w, float* U,
                                               int64_t kp0, int64_t kp1) {
  transform_filter_panels(s, g, w, U, kp0, kp1);
}
DLK_TARGET_AVX2 void transform_filter_avx2(const ConvShape& s, const WinogradGeom& g, const float* w, float* U,
                                           int64_t kp0, int64_t kp1) {
  transform_filter_panels(s, g, w, U, kp0, kp1);
}
#endif
void transform_filter_base(const ConvShape& s, const WinogradGeom& g, const float* w, float* U, int64_t kp0,
                           int64_t kp1) {
  transform_filter_panels(s, g, w, U, kp0, kp1);
}

void transform_filter(const ConvShape& s, const WinogradGeom& g, const float* w, float* U) {
  const FilterFn fn = DLK_WINOGRAD_FOR_ISA(transform_filter);
  at::parallel_for(0, g.KP, 1, [&](int64_t kp0, int64_t kp1) { fn(s, g, w, U, kp0, kp1); });
}

// The column transform of one run of a tile row from q on, L tiles at a time while L fit: v0..v3 get
// e[t] - e[t+1], o[t] + e[t+1], e[t+1] - o[t], o[t] - o[t+1].
template <typename V>
DLK_ALWAYS_INLINE void column_transform(const float* __restrict e, const float* __restrict o, int64_t& q, int64_t len,
                                        float* __restrict v0, float* __restrict v1, float* __restrict v2,
                                        float* __restrict v3) {
  constexpr int L = sizeof(V) / sizeof(float);
  for (; q + L <= len; q += L) {
    const V e0 = ldv<V>(e + q), e1 = ldv<V>(e + q + 1), o0 = ldv<V>(o + q), o1 = ldv<V>(o + q + 1);
    stv(v0 + q, e0 - e1), stv(v1 + q, o0 + e1), stv(v2 + q, e1 - o0), stv(v3 + q, o0 - o1);
  }
}

// e[t] = src[2t], o[t] = src[2t + 1] for t < n (src[0 .. 2n) readable): the even / odd split of a row.
DLK_ALWAYS_INLINE void split_even_odd(const float* __restrict src, int64_t n, float* __restrict e,
                                      float* __restrict o) {
  int64_t t = 0;
  for (; t + kL <= n; t += kL) {
    const vf a = ld(src + 2 * t), b = ld(src + 2 * t + kL);
    st(e + t, __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));
    st(o + t, __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31));
  }
  for (; t < n; ++t) e[t] = src[2 * t], o[t] = src[2 * t + 1];
}

// out[2u] = a[u], out[2u + 1] = b[u] for u < n: a tile row's two output columns, 8 tiles at a time.
DLK_ALWAYS_INLINE void interleave(const float* __restrict a, const float* __restrict b, int64_t n,
                                  float* __restrict out) {
  int64_t u = 0;
  for (; u + 8 <= n; u += 8) {
    st(out + 2 * u,
       __builtin_shufflevector(ldv<vf8>(a + u), ldv<vf8>(b + u), 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15));
  }
  for (; u < n; ++u) out[2 * u] = a[u], out[2 * u + 1] = b[u];
}

// E[a], O[a] (a < 4; E1 floats each, rows RS floats long): input row 2 th - ph + a of the plane xc split into its
// even and odd columns (E[t] is column 2t - pw, zeros outside the image), then the row transform in place (rows
// 0..3 become d0 - d2, d1 + d2, d2 - d1, d1 - d3).
DLK_ALWAYS_INLINE void load_tile_rows(const ConvShape& s, const float* xc, int64_t th, int64_t E1, int64_t RS,
                                      float* const* E, float* const* O) {
  const int64_t pw = s.pw, W = s.W;
  const int64_t wcopy = std::min(W, 2 * E1 - pw);  // the image columns a tile row reads
  // Image column col goes to E[(col + pw) / 2] if col + pw is even, else to O: column 0 to `first` at
  // `first_at`, column 1 to `second` at `second_at`, and so on in pairs. The split reads the image row
  // itself (a copy into a padded row first stalled every vector load on the copy's narrower stores).
  const int64_t first_at = pw / 2, second_at = (pw + 1) / 2, pairs = wcopy / 2;
  const bool first_is_e = pw % 2 == 0;
  for (int a = 0; a < 4; ++a) {
    const int64_t y = 2 * th - s.ph + a;
    if (y < 0 || y >= s.H) {
      std::fill(E[a], E[a] + RS, 0.f);
      std::fill(O[a], O[a] + RS, 0.f);
      continue;
    }
    float* first = first_is_e ? E[a] : O[a];
    float* second = first_is_e ? O[a] : E[a];
    const float* src = xc + y * W;
    // Runs of a float or two: fixed-size stores, not a library call each (one per channel and tile row).
    copy_short<float>(nullptr, first_at, first);
    copy_short<float>(nullptr, second_at, second);
    split_even_odd(src, pairs, first + first_at, second + second_at);
    int64_t f_end = first_at + pairs;
    if (wcopy % 2 != 0) first[f_end++] = src[wcopy - 1];
    copy_short<float>(nullptr, E1 - f_end, first + f_end);
    copy_short<float>(nullptr, E1 - second_at - pairs, second + second_at + pairs);
  }
  for (float* const* h : {E, O}) {
    for (int64_t t = 0; t < E1; t += kL) {
      const vf d0 = ld(h[0] + t), d1 = ld(h[1] + t), d2 = ld(h[2] + t), d3 = ld(h[3] + t);
      st(h[0] + t, d0 - d2), st(h[1] + t, d1 + d2), st(h[2] + t, d2 - d1), st(h[3] + t, d1 - d3);
    }
  }
}

// The column transform of tiles [t, t + len) of a tile row (E, O from load_tile_rows): entry a * 4 + b of tile
// t + q to v[a * 4 + b][q].
DLK_ALWAYS_INLINE void transform_tiles(float* const* E, float* const* O, int64_t t, int64_t len, float* const* v) {
  for (int a = 0; a < 4; ++a) {
    const float* __restrict e = E[a] + t;
    const float* __restrict o = O[a] + t;
    float* __restrict v0 = v[a * 4];
    float* __restrict v1 = v[a * 4 + 1];
    float* __restrict v2 = v[a * 4 + 2];
    float* __restrict v3 = v[a * 4 + 3];
    int64_t q = 0;
    column_transform<vf>(e, o, q, len, v0, v1, v2, v3);
    column_transform<vf8>(e, o, q, len, v0, v1, v2, v3);
    column_transform<vf4>(e, o, q, len, v0, v1, v2, v3);
    for (; q < len; ++q) {
      const float e0 = e[q], e1 = e[q + 1], o0 = o[q], o1 = o[q + 1];
      v0[q] = e0 - e1, v1[q] = o0 + e1, v2[q] = e1 - o0, v3[q] = o0 - o1;
    }
  }
}

// The 16 tiles of a plane whose tile grid is 4 x 4 (7x7 and 8x8 outputs) at once, entry xi of tile th * 4 + tw to
// v[xi][th * 4 + tw]: per entry one 16-lane vector, where tile row by tile row the fixed costs of each run of 4 tiles
// (the split into even and odd columns, the operands' pointers) outweighed its few operations. The plane's rows,
// padded, are stored split by row parity and by column offset b (q[y % 2][b][(y / 2) * 4 + tw] = padded (y, 2 tw + b)),
// so that the input value d[a][b] at padded row 2 th + a and column 2 tw + b, over the 16 tiles, is one load. The
// same operations, in the same order, as load_tile_rows and transform_tiles.
DLK_ALWAYS_INLINE void transform_plane_4x4(const ConvShape& s, const float* xc, float* const* v) {
  alignas(64) float q[2][4][20];
  alignas(64) float padded[kL];
  for (int y = 0; y < 10; ++y) {
    const int64_t iy = y - s.ph;
    st(padded, vf{});
    if (iy >= 0 && iy < s.H) copy_short(xc + iy * s.W, std::min<int64_t>(s.W, kL - s.pw), padded + s.pw);
    for (int b = 0; b < 4; ++b) {
      for (int tw = 0; tw < 4; ++tw) q[y % 2][b][(y / 2) * 4 + tw] = padded[2 * tw + b];
    }
  }
  vf r[4][4];  // the row transform: d0 - d2, d1 + d2, d2 - d1, d1 - d3
  for (int b = 0; b < 4; ++b) {
    const vf d0 = ld(q[0][b]), d1 = ld(q[1][b]), d2 = ld(q[0][b] + 4), d3 = ld(q[1][b] + 4);
    r[0][b] = d0 - d2, r[1][b] = d1 + d2, r[2][b] = d2 - d1, r[3][b] = d1 - d3;
  }
  for (int a = 0; a < 4; ++a) {  // the column transform
    st(v[a * 4 + 0], r[a][0] - r[a][2]);
    st(v[a * 4 + 1], r[a][1] + r[a][2]);
    st(v[a * 4 + 2], r[a][2] - r[a][1]);
    st(v[a * 4 + 3], r[a][1] - r[a][3]);
  }
}

// Output rows 2 TH and 2 TH + 1 (the latter where it exists) of a plane with a 4 x 4 tile grid, from its 16 tiles'
// results: row 2 TH interleaves lanes 4 TH .. 4 TH + 3 of a0 (even columns) and a1 (odd ones), row 2 TH + 1 those of
// b0 and b1; OW is 7 or 8.
template <int TH>
DLK_ALWAYS_INLINE void store_plane_row_pair(vf a0, vf a1, vf b0, vf b1, int64_t OH, int64_t OW, float* zk) {
  constexpr int l = 4 * TH;
  const vf8 top = __builtin_shufflevector(a0, a1, l, 16 + l, l + 1, 17 + l, l + 2, 18 + l, l + 3, 19 + l);
  const vf8 bottom = __builtin_shufflevector(b0, b1, l, 16 + l, l + 1, 17 + l, l + 2, 18 + l, l + 3, 19 + l);
  float* row = zk + 2 * TH * OW;
  if (OW == 8) {
    stv(row, top);
    if (2 * TH + 1 < OH) stv(row + OW, bottom);
  } else {
    std::memcpy(row, &top, 7 * sizeof(float));
    if (2 * TH + 1 < OH) std::memcpy(row + OW, &bottom, 7 * sizeof(float));
  }
}

// One task: the tile rows [r0, r0 + rows) of the batch (see WinogradGeom::R). V: 16 B operands of Tpad columns (panel p
// of xi at V + (xi * P + p) * C * NR); M: the 16 product tiles of one panel (MR x LDM each); row: scratch of
// row_floats(g) floats.
int64_t row_stride(const WinogradGeom& g) { return (g.TW + 1 + kL) / kL * kL; }
int64_t row_floats(const WinogradGeom& g) { return std::max<int64_t>(8 * row_stride(g), 4 * g.LDM); }

DLK_ALWAYS_INLINE void winograd_task(const ConvShape& s, const WinogradGeom& g, const MicroKernel<float>& uk,
                                     const float* x, const float* U, const float* bias, float* z, bool relu, int64_t r0,
                                     int64_t rows, float* V, float* M, float* row) {
  const int64_t TW = g.TW, NR = g.NR, MR = g.MR, C = s.C;
  const int64_t P = g.Tpad / NR;
  const int64_t tiles = rows * TW;
  const int64_t E1 = TW + 1;  // the length of each even / odd row
  const int64_t RS = row_stride(g);
  float* E[4];
  float* O[4];
  for (int a = 0; a < 4; ++a) E[a] = row + a * 2 * RS, O[a] = row + (a * 2 + 1) * RS;
  // The columns of the last panel past the tiles are zeroed: the micro-kernel reads whole panels and drops
  // those columns' products, which scratch memory left from other work could make slow (denormals).
  if (tiles % NR != 0) {
    for (int xi = 0; xi < kXi; ++xi) {
      float* last = V + (xi * P + tiles / NR) * C * NR;
      for (int64_t c = 0; c < C; ++c) std::fill(last + c * NR + tiles % NR, last + (c + 1) * NR, 0.f);
    }
  }
  // Whole planes of 16 tiles where the task holds whole images and 16 tiles never straddle a panel.
  const bool planes = g.TW == 4 && g.TH == 4 && NR % kL == 0 && r0 % 4 == 0 && rows % 4 == 0;
  for (int64_t c = 0; c < C && planes; ++c) {
    for (int64_t r = 0; r < rows; r += 4) {
      const int64_t n = (r0 + r) / 4, j = r * 4, p = j / NR, jj = j % NR;
      float* v[kXi];
      for (int xi = 0; xi < kXi; ++xi) v[xi] = V + (xi * P + p) * C * NR + c * NR + jj;
      transform_plane_4x4(s, x + (n * C + c) * s.H * s.W, v);
    }
  }
  for (int64_t c = 0; c < C && !planes; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = (r0 + r) / g.TH, th = (r0 + r) % g.TH;
      load_tile_rows(s, x + (n * C + c) * s.H * s.W, th, E1, RS, E, O);
      // Column transform into the B operands, tile index j = r * TW + t, in runs that stay in one panel.
      for (int64_t t = 0; t < TW;) {
        const int64_t j = r * TW + t, p = j / NR, jj = j % NR;
        const int64_t len = std::min(TW - t, NR - jj);
        float* v[kXi];
        for (int xi = 0; xi < kXi; ++xi) v[xi] = V + (xi * P + p) * C * NR + c * NR + jj;
        transform_tiles(E, O, t, len, v);
        t += len;
      }
    }
  }

  // Products and the output transform, panel by panel.
  const int64_t OH = s.OH, OW = s.OW;
  const int64_t LDM = g.LDM;
  float* __restrict y00 = row;  // reuses the row buffer: 4 rows of LDM results
  float* __restrict y01 = row + LDM;
  float* __restrict y10 = row + 2 * LDM;
  float* __restrict y11 = row + 3 * LDM;
  const vf zero = {};
  for (int64_t p = 0; p < P; ++p) {
    const int64_t j0 = p * NR;
    if (j0 >= tiles) break;
    const int nt = static_cast<int>(std::min<int64_t>(NR, tiles - j0));
    const MicroKernelFn<float> run = 2 * nt <= NR ? uk.run_half : uk.run;
    for (int64_t kp = 0; kp < g.KP; ++kp) {
      const int m = static_cast<int>(std::min<int64_t>(MR, s.K - kp * MR));
      for (int xi = 0; xi < kXi; ++xi) {
        run(C, U + xi * g.UX + kp * C * MR, 0, V + (xi * P + p) * C * NR, M + xi * MR * LDM, LDM, m, nt, false, nullptr,
            nullptr, false);
      }
      for (int i = 0; i < m; ++i) {
        const int64_t k = kp * MR + i;
        const vf b = zero + (bias ? bias[k] : 0.f);
        const float* mi = M + i * LDM;
        const int64_t sx = MR * LDM;        // between xi
        for (int q = 0; q < nt; q += kL) {  // whole vectors (LDM columns, the last ones unused)
          vf sa[4], sb[4];                  // A^T m: rows m0 + m1 + m2 and m1 - m2 - m3, per column
          for (int col = 0; col < 4; ++col) {
            const vf m0 = ld(mi + (0 * 4 + col) * sx + q), m1 = ld(mi + (1 * 4 + col) * sx + q);
            const vf m2 = ld(mi + (2 * 4 + col) * sx + q), m3 = ld(mi + (3 * 4 + col) * sx + q);
            sa[col] = m0 + m1 + m2, sb[col] = m1 - m2 - m3;
          }
          vf v00 = sa[0] + sa[1] + sa[2] + b, v01 = sa[1] - sa[2] - sa[3] + b;
          vf v10 = sb[0] + sb[1] + sb[2] + b, v11 = sb[1] - sb[2] - sb[3] + b;
          if (relu) {  // NaN passes, as torch.relu: a select on v < 0
            v00 = v00 < zero ? zero : v00, v01 = v01 < zero ? zero : v01;
            v10 = v10 < zero ? zero : v10, v11 = v11 < zero ? zero : v11;
          }
          st(y00 + q, v00), st(y01 + q, v01), st(y10 + q, v10), st(y11 + q, v11);
        }
        // Whole planes: each image's 16 tiles (a whole vector of y00 .. y11) into its 7 or 8 output rows.
        for (int q = 0; q < nt && planes; q += kL) {
          const int64_t n = (r0 + (j0 + q) / 4) / 4;
          float* zk = z + (n * s.K + k) * OH * OW;
          const vf a0 = ld(y00 + q), a1 = ld(y01 + q), b0 = ld(y10 + q), b1 = ld(y11 + q);
          store_plane_row_pair<0>(a0, a1, b0, b1, OH, OW, zk);
          store_plane_row_pair<1>(a0, a1, b0, b1, OH, OW, zk);
          store_plane_row_pair<2>(a0, a1, b0, b1, OH, OW, zk);
          store_plane_row_pair<3>(a0, a1, b0, b1, OH, OW, zk);
        }
        // The tiles of the panel, tile row by tile row, into the output rows 2 th and 2 th + 1.
        for (int q = 0; q < nt && !planes;) {
          const int64_t j = j0 + q, n = (r0 + j / TW) / g.TH, th = (r0 + j / TW) % g.TH, tw0 = j % TW;
          float* zk = z + (n * s.K + k) * OH * OW;
          const int len = static_cast<int>(std::min<int64_t>(nt - q, TW - tw0));
          const int64_t oh = 2 * th;
          // Whole tiles (both columns inside the output), then a last half tile where OW is odd.
          const int full = static_cast<int>(std::min<int64_t>(len, OW / 2 - tw0));
          float* __restrict top = zk + oh * OW + 2 * tw0;
          interleave(y00 + q, y01 + q, full, top);
          if (full < len) top[2 * full] = y00[q + full];
          if (oh + 1 < OH) {
            float* __restrict bottom = top + OW;
            interleave(y10 + q, y11 + q, full, bottom);
            if (full < len) bottom[2 * full] = y10[q + full];
          }
          q += len;
        }
      }
    }
  }
}

using TaskFn = void (*)(const ConvShape&, const WinogradGeom&, const MicroKernel<float>&, const float*, const float*,
                        const float*, float*, bool, int64_t, int64_t, float*, float*, float*);

#if defined(__x86_64__)
DLK_TARGET_AVX512 void winograd_task_avx512(const ConvShape& s, const WinogradGeom& g, const MicroKernel<float>& uk,
                                            const float* x, const float* U, const float* bias, float* z, bool relu,
                                            int64_t r0, int64_t rows, float* V, float* M, float* row) {
  winograd_task(s, g, uk, x, U, bias, z, relu, r0, rows, V, M, row);
}
DLK_TARGET_AVX2 void winograd_task_avx2(const ConvShape& s, const WinogradGeom& g, const MicroKernel<float>& uk,
                                        const float* x, const float* U, const float* bias, float* z, bool relu,
                                        int64_t r0, int64_t rows, float* V, float* M, float* row) {
  winograd_task(s, g, uk, x, U, bias, z, relu, r0, rows, V, M, row);
}
#endif
void winograd_task_base(const ConvShape& s, const WinogradGeom& g, const MicroKernel<float>& uk, const float* x,
                        const float* U, const float* bias, float* z, bool relu, int64_t r0, int64_t rows, float* V,
                        float* M, float* row) {
  winograd_task(s, g, uk, x, U, bias, z, relu, r0, rows, V, M, row);
}

// The weight gradient's transforms. Forward, tile t's output is A^T m A with m = sum_c U[c] . V[c] (entrywise,
// 4x4), U = G g G^T, V = B^T d B; so dU[xi][k][c] = sum_t dM[xi][k][t] V[xi][c][t] with dM = A dz A^T (dz: the
// tile's 2x2 block of gz), and dg = G^T dU G.
//
// V of the batch's tile rows [r0, r1) for channel c: V[xi * VX + c * T + t], t the tile's index from tile row
// `base` on.
DLK_ALWAYS_INLINE void grad_weight_input_rows(const ConvShape& s, const WinogradGeom& g, const float* x, int64_t c,
                                              int64_t r0, int64_t r1, int64_t base, float* V, int64_t VX, int64_t T,
                                              float* row) {
  const int64_t E1 = g.TW + 1, RS = row_stride(g);
  float* E[4];
  float* O[4];
  for (int a = 0; a < 4; ++a) E[a] = row + a * 2 * RS, O[a] = row + (a * 2 + 1) * RS;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / g.TH, th = r % g.TH;
    load_tile_rows(s, x + (n * s.C + c) * s.H * s.W, th, E1, RS, E, O);
    float* v[kXi];
    for (int xi = 0; xi < kXi; ++xi) v[xi] = V + xi * VX + c * T + (r - base) * g.TW;
    transform_tiles(E, O, 0, g.TW, v);
  }
}

// dM of the batch's tile rows [r0, r1): dM[xi * MX + t * K + k] (t from tile row `base` on), the tile's 2x2 block of gz
// plane (n, k) with zeros outside the output. A dz A^T: rows (z0, z0 + z1, z0 - z1, -z1), then the same along the
// columns.
DLK_ALWAYS_INLINE void grad_weight_gz_rows(const ConvShape& s, const WinogradGeom& g, const float* gz, int64_t r0,
                                           int64_t r1, int64_t base, float* dM, int64_t MX) {
  const int64_t K = s.K, OH = s.OH, OW = s.OW, TW = g.TW, full = OW / 2;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / g.TH, th = r % g.TH;
    const bool second_row = 2 * th + 1 < OH;
    for (int64_t k = 0; k < K; ++k) {
      const float* z0 = gz + ((n * K + k) * OH + 2 * th) * OW;
      const float* z1 = z0 + OW;
      float* d = dM + (r - base) * TW * K + k;
      for (int64_t tw = 0; tw < TW; ++tw, d += K) {
        const bool second_col = tw < full;
        const float a0 = z0[2 * tw], a1 = second_col ? z0[2 * tw + 1] : 0.f;
        const float b0 = second_row ? z1[2 * tw] : 0.f, b1 = second_row && second_col ? z1[2 * tw + 1] : 0.f;
        const float rows[4][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {a0 - b0, a1 - b1}, {-b0, -b1}};
        for (int i = 0; i < 4; ++i) {
          d[(i * 4 + 0) * MX] = rows[i][0];
          d[(i * 4 + 1) * MX] = rows[i][0] + rows[i][1];
          d[(i * 4 + 2) * MX] = rows[i][0] - rows[i][1];
          d[(i * 4 + 3) * MX] = -rows[i][1];
        }
      }
    }
  }
}

using GradWeightInputFn = void (*)(const ConvShape&, const WinogradGeom&, const float*, int64_t, int64_t, int64_t,
                                   int64_t, float*, int64_t, int64_t, float*);
using GradWeightGzFn = void (*)(const ConvShape&, const WinogradGeom&, const float*, int64_t, int64_t, int64_t, float*,
                                int64_t);

#if defined(__x86_64__)
DLK_TARGET_AVX512 void grad_weight_input_rows_avx512(const ConvShape& s, const WinogradGeom& g, const float* x,
                                                     int64_t c, int64_t r0, int64_t r1, int64_t base, float* V,
                                                     int64_t VX, int64_t T, float* row) {
  grad_weight_input_rows(s, g, x, c, r0, r1, base, V, VX, T, row);
}
DLK_TARGET_AVX2 void grad_weight_input_rows_avx2(const ConvShape& s, const WinogradGeom& g, const float* x, int64_t c,
                                                 int64_t r0, int64_t r1, int64_t base, float* V, int64_t VX, int64_t T,
                                                 float* row) {
  grad_weight_input_rows(s, g, x, c, r0, r1, base, V, VX, T, row);
}
DLK_TARGET_AVX512 void grad_weight_gz_rows_avx512(const ConvShape& s, const WinogradGeom& g, const float* gz,
                                                  int64_t r0, int64_t r1, int64_t base, float* dM, int64_t MX) {
  grad_weight_gz_rows(s, g, gz, r0, r1, base, dM, MX);
}
DLK_TARGET_AVX2 void grad_weight_gz_rows_avx2(const ConvShape& s, const WinogradGeom& g, const float* gz, int64_t r0,
                                              int64_t r1, int64_t base, float* dM, int64_t MX) {
  grad_weight_gz_rows(s, g, gz, r0, r1, base, dM, MX);
}
#endif
void grad_weight_input_rows_base(const ConvShape& s, const WinogradGeom& g, const float* x, int64_t c, int64_t r0,
                                 int64_t r1, int64_t base, float* V, int64_t VX, int64_t T, float* row) {
  grad_weight_input_rows(s, g, x, c, r0, r1, base, V, VX, T, row);
}
void grad_weight_gz_rows_base(const ConvShape& s, const WinogradGeom& g, const float* gz, int64_t r0, int64_t r1,
                              int64_t base, float* dM, int64_t MX) {
  grad_weight_gz_rows(s, g, gz, r0, r1, base, dM, MX);
}

// gw[k, c] = G^T dU G for the channels [c0, c1): (u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3) along the
// rows, then the columns, on vectors of kL output channels (dU^T's rows hold them side by side). Blocks of kL channels
// by kL output channels: each of gw's rows k gets kL x 9 contiguous floats at a time, where channel by channel over
// all of K wrote 9 floats per line of a gw larger than the cache.
DLK_ALWAYS_INLINE void grad_weight_finish(const ConvShape& s, const float* dut, float* gw, int64_t c0, int64_t c1) {
  const int64_t C = s.C, K = s.K;
  alignas(64) float part[kL];
  alignas(64) float out[9][kL];
  for (int64_t cb = c0; cb < c1; cb += kL) {
    for (int64_t k0 = 0; k0 < K; k0 += kL) {
      const int n = static_cast<int>(std::min<int64_t>(kL, K - k0));
      for (int64_t c = cb; c < std::min(c1, cb + kL); ++c) {
        vf u[4][4];
        for (int xi = 0; xi < kXi; ++xi) {
          const float* src = dut + (xi * C + c) * K + k0;
          if (n == kL) {
            u[xi / 4][xi % 4] = ld(src);
          } else {
            std::fill(part, part + kL, 0.f);
            std::copy_n(src, n, part);
            u[xi / 4][xi % 4] = ld(part);
          }
        }
        vf t[4][3];
        for (int a = 0; a < 4; ++a) {
          t[a][0] = u[a][0] + 0.5f * (u[a][1] + u[a][2]);
          t[a][1] = 0.5f * (u[a][1] - u[a][2]);
          t[a][2] = 0.5f * (u[a][1] + u[a][2]) + u[a][3];
        }
        for (int b = 0; b < 3; ++b) {
          st(out[b], t[0][b] + 0.5f * (t[1][b] + t[2][b]));
          st(out[3 + b], 0.5f * (t[1][b] - t[2][b]));
          st(out[6 + b], 0.5f * (t[1][b] + t[2][b]) + t[3][b]);
        }
        for (int l = 0; l < n; ++l) {
          float* o = gw + ((k0 + l) * C + c) * 9;
          for (int j = 0; j < 9; ++j) o[j] = out[j][l];
        }
      }
    }
  }
}

using GradWeightFinishFn = void (*)(const ConvShape&, const float*, float*, int64_t, int64_t);
#if defined(__x86_64__)
DLK_TARGET_AVX512 void grad_weight_finish_avx512(const ConvShape& s, const float* dut, float* gw, int64_t c0,
                                                 int64_t c1) {
  grad_weight_finish(s, dut, gw, c0, c1);
}
DLK_TARGET_AVX2 void grad_weight_finish_avx2(const ConvShape& s, const float* dut, float* gw, int64_t c0, int64_t c1) {
  grad_weight_finish(s, dut, gw, c0, c1);
}
#endif
void grad_weight_finish_base(const ConvShape& s, const float* dut, float* gw, int64_t c0, int64_t c1) {
  grad_weight_finish(s, dut, gw, c0, c1);
}

// V and dM of the weight gradient's chunks at most this large together (see winograd_grad_weight).
constexpr int64_t kGradWeightChunkBytes = int64_t(8) << 20;
}  // namespace

bool winograd_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("DLKERNELS_CPU_WINOGRAD");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

bool conv2d_winograd_applies(const ConvShape& s) {
  // At least two panels of tiles over the batch (tasks run on from one image into the next): below that the
  // filter's transform, which costs as much as the products of a few tiles, and U's pass through the cache (16
  // times the filter's size) outweigh the 2.25 times fewer products.
  const int64_t tiles = s.N * ((s.OH + 1) / 2) * ((s.OW + 1) / 2);
  return winograd_enabled() && s.KH == 3 && s.KW == 3 && s.sh == 1 && s.sw == 1 && s.dh == 1 && s.dw == 1 &&
         s.groups == 1 && s.ph <= 2 && s.pw <= 2 && s.C >= 16 && s.K >= 16 && tiles >= 64;
}

void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* z, bool relu) {
  const MicroKernel<float>& uk = micro_kernel<float>();
  const WinogradGeom g = geometry(s, uk);
  // Every float of U is written (zero rows included): scratch memory that stays mapped from call to call.
  Scratch U(2, sizeof(float) * kXi * g.UX);
  transform_filter(s, g, w, static_cast<float*>(U.get()));
  const TaskFn task = DLK_WINOGRAD_FOR_ISA(winograd_task);
  const int64_t rowf = row_floats(g);
  const size_t v_floats = static_cast<size_t>(kXi) * g.Tpad * s.C;
  at::parallel_for(0, g.tasks, 1, [&](int64_t t0, int64_t t1) {
    Scratch v(1, sizeof(float) * v_floats);
    std::vector<float> m(static_cast<size_t>(kXi) * g.MR * g.LDM), row(rowf);
    for (int64_t t = t0; t < t1; ++t) {
      task(s, g, uk, x, static_cast<const float*>(U.get()), bias, z, relu, t * g.R, std::min(g.R, s.N * g.TH - t * g.R),
           static_cast<float*>(v.get()), m.data(), row.data());
    }
  });
}

void winograd_grad_weight(const ConvShape& s, const float* gz, const float* x, float* gw) {
  const MicroKernel<float>& uk = micro_kernel<float>();
  const WinogradGeom g = geometry(s, uk);
  const int64_t rows = s.N * g.TH;
  // The batch in chunks of tile rows whose V and dM take at most kGradWeightChunkBytes: V and dM of a large
  // batch would take 16 times the input and gz (a 64-channel 224x224 batch of 8: 800 MB); dU sums the chunks'
  // products in chunk order (deterministic).
  const int64_t chunk_rows =
      std::clamp<int64_t>(kGradWeightChunkBytes / (int64_t(sizeof(float)) * kXi * g.TW * (s.C + s.K)), 1, rows);
  const int64_t T = chunk_rows * g.TW;
  // The 16 operands of V and dM one line more than their size apart (see WinogradGeom::UX).
  const int64_t VX = s.C * T + 16, MX = T * s.K + 16;
  Scratch v(2, sizeof(float) * kXi * VX), dm(3, sizeof(float) * kXi * MX);
  float* V = static_cast<float*>(v.get());
  float* dM = static_cast<float*>(dm.get());
  const at::Tensor dut_buffer = empty_output({kXi * s.C * s.K}, at::TensorOptions().dtype(at::kFloat));
  float* dut = dut_buffer.mutable_data_ptr<float>();
  at::Tensor part;  // a later chunk's products, added into dut tile by tile
  const GradWeightInputFn input_rows = DLK_WINOGRAD_FOR_ISA(grad_weight_input_rows);
  const GradWeightGzFn gz_rows = DLK_WINOGRAD_FOR_ISA(grad_weight_gz_rows);
  const int64_t row_block = std::max<int64_t>(1, 64 / g.TW);  // input-transform work items of about 64 tiles
  for (int64_t base = 0; base < rows; base += chunk_rows) {
    const int64_t end = std::min(rows, base + chunk_rows), tiles = (end - base) * g.TW;
    const int64_t blocks = (end - base + row_block - 1) / row_block;
    at::parallel_for(0, s.C * blocks, 1, [&](int64_t p0, int64_t p1) {
      std::vector<float> row(static_cast<size_t>(row_floats(g)));
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p / blocks, r0 = base + p % blocks * row_block;
        input_rows(s, g, x, c, r0, std::min(end, r0 + row_block), base, V, VX, T, row.data());
      }
    });
    at::parallel_for(base, end, 1, [&](int64_t r0, int64_t r1) { gz_rows(s, g, gz, r0, r1, base, dM, MX); });
    // dU^T [C, K] = V [C, tiles] @ dM [tiles, K], per entry xi.
    if (base > 0 && !part.defined()) part = empty_output({s.C * s.K}, at::TensorOptions().dtype(at::kFloat));
    for (int xi = 0; xi < kXi; ++xi) {
      float* sum = dut + xi * s.C * s.K;
      const auto add = [sum, K = s.K](int64_t i0, int64_t j0, int m, int n, float* c, int64_t ldc) {
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) sum[(i0 + i) * K + j0 + j] += c[i * ldc + j];
        }
      };
      StridedGemm<float, decltype(add)> p{
          1,   s.C,     s.K,          tiles,    1,  V + xi * VX,
          T,   1,       dM + xi * MX, s.K,      1,  base > 0 ? part.mutable_data_ptr<float>() : sum,
          s.K, nullptr, false,        base > 0, add};
      gemm_run<float>(p);
    }
  }
  const GradWeightFinishFn finish = DLK_WINOGRAD_FOR_ISA(grad_weight_finish);
  at::parallel_for(0, s.C, kL, [&](int64_t c0, int64_t c1) { finish(s, dut, gw, c0, c1); });
}

}  // namespace cpu
}  // namespace dlkernels
