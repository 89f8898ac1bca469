// The loops of the direct depthwise convolution (conv2d_cpu_depthwise.cpp), written once over a vector-ops
// type VO and included (deliberately without an include guard) once per ISA: inside a target("avx512...")
// or target("avx2...") region of conv2d_cpu_depthwise_x86.cpp and, for the portable path, in
// conv2d_cpu_depthwise.cpp, each time in its own namespace. VO provides T, V, L (lanes) and zero, set1,
// load, loadn (the first n lanes, the others 0), store, storen, fma(a, b, c) = a * b + c, relu and sum.
//
// Every plane of the input is first copied into a zero-padded buffer split into `sw` phases along W
// (column iwp of the padded row goes to phase iwp % sw, position iwp / sw), so that for any stride a tap
// reads a contiguous run of its phase: the inner loops are plain vector loads with no bounds tests. The
// buffers are zeroed once per thread; later planes only overwrite the image positions.
//
// Requires: cpu/conv2d_cpu_depthwise.h (DwGeom), common/op_args.h (ConvShape) and <utility> included before.

#include "cpu/conv2d_cpu_cl_moves.h"

// The moves of the channels-last kernels when the tensors are channels-last themselves (DwGeom::nhwc):
// rows x cols pixels of cn channels, pixel p of the tensor (pixels `ch` elements apart, the block's first
// channel at src) to and from the buffer's rows of `ld` pixels of CB channels. Plain runs, no transposition.
template <class VO>
DLK_ALWAYS_INLINE void pixels_in(const typename VO::T* src, int64_t ch, int64_t rows, int64_t cols, int64_t cn,
                                 typename VO::T* dst, int64_t ld, int64_t CB) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) copy_run<VO>(src + (r * cols + c) * ch, cn, dst + (r * ld + c) * CB);
  }
}
template <class VO>
DLK_ALWAYS_INLINE void pixels_out(const typename VO::T* src, int64_t ld, int64_t CB, int64_t rows, int64_t cols,
                                  int64_t cn, typename VO::T* dst, int64_t ch) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) copy_run<VO>(src + (r * ld + c) * CB, cn, dst + (r * cols + c) * ch);
  }
}

// fn(std::integral_constant<int, RB>) for the block of rb pixels (1 to 8) of the channels-last kernels: the
// block size as a template parameter, so that the block's accumulators are registers.
template <class Fn>
DLK_ALWAYS_INLINE void with_block_pixels(int64_t rb, const Fn& fn) {
  switch (rb) {
    case 8: return fn(std::integral_constant<int, 8>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    default: return fn(std::integral_constant<int, 1>{});
  }
}

// One output row chunk of U vectors of the forward: acc = bias + sum over taps w * phase run.
// R output rows x U vectors of the forward: acc = bias + sum over taps w * phase run. Several rows and
// vectors at once give the FMAs independent chains (one chain waits out the latency of each FMA).
// off[tap]: where tap (kh, kw) starts reading in P, relative to the output row's first position; P: the
// first row's; rs: P's step from one output row to the next.
template <class VO, int R, int U>
DLK_ALWAYS_INLINE void dw_fwd_block(const ConvShape& s, const int64_t* off, const typename VO::T* P, int64_t rs,
                                    const typename VO::T* wk, typename VO::T bk, typename VO::T* zrow, int64_t ow0,
                                    bool relu) {
  using V = typename VO::V;
  constexpr int L = VO::L;
  V acc[R][U];
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < U; ++u) acc[r][u] = VO::set1(bk);
  }
  const int64_t taps = s.KH * s.KW;
  for (int64_t tap = 0; tap < taps; ++tap) {
    const typename VO::T* src = P + off[tap] + ow0;
    const V wv = VO::set1(wk[tap]);
    for (int r = 0; r < R; ++r) {
      for (int u = 0; u < U; ++u) acc[r][u] = VO::fma(wv, VO::load(src + r * rs + u * L), acc[r][u]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < U; ++u) {
      const V v = relu ? VO::relu(acc[r][u]) : acc[r][u];
      const int64_t n = s.OW - (ow0 + u * L);
      if (n >= L) {
        VO::store(zrow + r * s.OW + ow0 + u * L, v);
      } else if (n > 0) {
        VO::storen(zrow + r * s.OW + ow0 + u * L, v, static_cast<int>(n));
      }
    }
  }
}

// One block of R output rows of a plane, along the row in blocks of vectors. room: the columns a block may
// span, reads included (P's row stride less the furthest tap offset).
template <class VO, int R>
DLK_ALWAYS_INLINE void dw_fwd_rows(const ConvShape& s, const int64_t* off, const typename VO::T* P, int64_t rs,
                                   int64_t room, const typename VO::T* wk, typename VO::T bk, typename VO::T* zrow,
                                   bool relu) {
  constexpr int L = VO::L;
  constexpr int U = R >= 4 ? 2 : 4;
  int64_t ow0 = 0;
  for (; ow0 + U * L <= s.OW; ow0 += U * L) dw_fwd_block<VO, R, U>(s, off, P, rs, wk, bk, zrow, ow0, relu);
  // The rest of the row (at most U vectors, the last partial) as one block where the buffer's row has room for
  // its reads (the lanes past OW are computed and dropped): as single vectors each block had a half or a
  // quarter of the independent FMA chains and waited out the FMA latency (a 28-wide row ended in two).
  const int64_t left = (s.OW - ow0 + L - 1) / L;
  if (left > 1 && ow0 + left * L <= room) {
    switch (left) {
      case 2: return dw_fwd_block<VO, R, 2>(s, off, P, rs, wk, bk, zrow, ow0, relu);
      case 3: return dw_fwd_block<VO, R, 3>(s, off, P, rs, wk, bk, zrow, ow0, relu);
      default: return dw_fwd_block<VO, R, 4>(s, off, P, rs, wk, bk, zrow, ow0, relu);
    }
  }
  for (; ow0 < s.OW; ow0 += L) dw_fwd_block<VO, R, 1>(s, off, P, rs, wk, bk, zrow, ow0, relu);
}

// The even (ODD = 0) or odd (ODD = 1) lanes of the 2L lanes a, b.
template <class VO, int ODD, size_t... J>
DLK_ALWAYS_INLINE typename VO::V deinterleave(typename VO::V a, typename VO::V b, std::index_sequence<J...>) {
  return __builtin_shufflevector(a, b, (2 * J + ODD)...);
}
template <class VO, int ODD>
DLK_ALWAYS_INLINE typename VO::V deinterleave(typename VO::V a, typename VO::V b) {
  return deinterleave<VO, ODD>(a, b, std::make_index_sequence<VO::L>{});
}

// Copies plane (n, c) of x into the phase buffer P (whose padding is already zero).
template <class VO>
DLK_ALWAYS_INLINE void dw_fill_phases(const ConvShape& s, const DwGeom& g, const typename VO::T* xc,
                                      typename VO::T* P) {
  using T = typename VO::T;
  if (s.sw == 1) {
    for (int64_t ih = 0; ih < s.H; ++ih) copy_run<VO>(xc + ih * s.W, s.W, P + (ih + s.ph) * g.RS + s.pw);
    return;
  }
  if constexpr (VO::L > 1) {
    if (s.sw == 2) {  // 2L columns at a time, split into their even and odd lanes: one vector for each phase
      constexpr int L = VO::L;
      const int64_t re = s.pw % 2, ro = 1 - re;  // the phases of x's even and odd columns
      for (int64_t ih = 0; ih < s.H; ++ih) {
        const T* src = xc + ih * s.W;
        T* row = P + (ih + s.ph) * g.RS;
        for (int64_t iw = 0; iw < s.W; iw += 2 * L) {
          const int n = static_cast<int>(std::min<int64_t>(2 * L, s.W - iw));
          const typename VO::V a = VO::loadn(src + iw, std::min(n, L)), b = VO::loadn(src + iw + L, std::max(0, n - L));
          VO::storen(row + re * g.plane + (iw + s.pw - re) / 2, deinterleave<VO, 0>(a, b), (n + 1) / 2);
          VO::storen(row + ro * g.plane + (iw + 1 + s.pw - ro) / 2, deinterleave<VO, 1>(a, b), n / 2);
        }
      }
      return;
    }
  }
  for (int64_t r = 0; r < s.sw; ++r) {  // padded column iwp = j * sw + r holds x column iwp - pw
    const int64_t jlo = s.pw - r > 0 ? (s.pw - r + s.sw - 1) / s.sw : 0, iw0 = jlo * s.sw + r - s.pw;
    const int64_t count = iw0 < s.W ? (s.W - iw0 + s.sw - 1) / s.sw : 0;
    for (int64_t ih = 0; ih < s.H; ++ih) {
      const T* from = xc + ih * s.W + iw0;
      T* d = P + r * g.plane + (ih + s.ph) * g.RS + jlo;
      if (s.sw == 2) {  // a constant stride, which the compiler vectorises (the copy costs more than the taps)
        for (int64_t t = 0; t < count; ++t) d[t] = from[2 * t];
      } else {
        for (int64_t t = 0; t < count; ++t) d[t] = from[t * s.sw];
      }
    }
  }
}

// z planes [p0, p1) (p = n * K + k) of the forward, bias added, relu if asked. buf: g.fwd_scratch elements,
// zeroed.
template <class VO>
void dw_forward_planes(const ConvShape& s, const DwGeom& g, const typename VO::T* x, const typename VO::T* w,
                       const typename VO::T* bias, typename VO::T* z, bool relu, int64_t p0, int64_t p1,
                       typename VO::T* buf) {
  const int64_t taps = s.KH * s.KW;
  std::vector<int64_t> off(taps);
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t t = kw * s.dw;
      off[kh * s.KW + kw] = kh * s.dh * g.RS + (t % s.sw) * g.plane + t / s.sw;
    }
  }
  int64_t built = -1;  // the (n, c) plane now in buf
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / s.K, k = p % s.K, c = k / s.Kg;
    if (n * s.C + c != built) {
      built = n * s.C + c;
      dw_fill_phases<VO>(s, g, x + built * s.H * s.W, buf);
    }
    const typename VO::T* wk = w + k * s.KH * s.KW;
    const typename VO::T bk = bias ? bias[k] : typename VO::T(0);
    typename VO::T* zp = z + p * s.OH * s.OW;
    const int64_t rs = s.sh * g.RS;
    int64_t oh = 0;
    const int64_t room = g.RS - g.QL;
    for (; oh + 4 <= s.OH; oh += 4) {
      dw_fwd_rows<VO, 4>(s, off.data(), buf + oh * rs, rs, room, wk, bk, zp + oh * s.OW, relu);
    }
    for (; oh < s.OH; ++oh) dw_fwd_rows<VO, 1>(s, off.data(), buf + oh * rs, rs, room, wk, bk, zp + oh * s.OW, relu);
  }
}

// RB output pixels of a row, one vector of channels, of the channels-last forward: acc = bias + sum over taps
// of w[tap] * the pixel the tap reads, L channels per FMA. xs: the block's first pixel's first input pixel
// (padded coordinates), ws: the vector's weights of tap 0, taps Cp apart.
// Taps [kh0, kh1) x [kw0, kw1): the others read only padding for every pixel of the block (their terms are
// zeros, which the sums skip; on 3x3-7x7 planes with 5x5 and 7x7 kernels that is a third to most of them).
// FK: 3 for a 3x3 kernel whose taps are all inside (the loops unrolled: a tap is only RB FMAs), 0 otherwise.
template <class VO, int RB, int FK = 0>
DLK_ALWAYS_INLINE void dw_cl_pixels(const ConvShape& s, int64_t Wp, int64_t CB, int64_t Cp, const typename VO::T* xs,
                                    const typename VO::T* ws, const typename VO::T* bs, typename VO::T* zs, bool relu,
                                    int64_t kh0, int64_t kh1, int64_t kw0, int64_t kw1) {
  using V = typename VO::V;
  V acc[RB];
  for (int r = 0; r < RB; ++r) acc[r] = bs ? VO::load(bs) : VO::zero();
  const int64_t step = s.sw * CB;
  if constexpr (FK != 0) kh0 = 0, kh1 = FK, kw0 = 0, kw1 = FK;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    for (int64_t kw = kw0; kw < kw1; ++kw) {
      const V wv = VO::load(ws + (kh * s.KW + kw) * Cp);
      const typename VO::T* src = xs + (kh * s.dh * Wp + kw * s.dw) * CB;
      for (int r = 0; r < RB; ++r) acc[r] = VO::fma(wv, VO::load(src + r * step), acc[r]);
    }
  }
  for (int r = 0; r < RB; ++r) VO::store(zs + r * CB, relu ? VO::relu(acc[r]) : acc[r]);
}

// The forward for small planes (dw_channels_last), items [i0, i1) = (image n, block of g.CB channels):
// the block's planes are moved channels-last into buf (zero-padded, Hp x Wp pixels of CB channels; the
// padding, zeroed once, stays zero), every output pixel is computed L channels per FMA (the weights wt
// [taps][Cp] and bias [Cp] as vectors; Cp = C rounded up to CB, zeros past C), up to 8 pixels of a row at once,
// into a channels-last output block, which is then moved to the NCHW planes. Lanes past C compute from
// whatever the buffer holds there and are never stored.
template <class VO>
void dw_forward_cl(const ConvShape& s, const DwGeom& g, const typename VO::T* x, const typename VO::T* wt,
                   const typename VO::T* bias, typename VO::T* z, bool relu, int64_t i0, int64_t i1,
                   typename VO::T* buf) {
  using T = typename VO::T;
  constexpr int L = VO::L;
  const int64_t CB = g.CB, Cp = (s.C + CB - 1) / CB * CB, blocks = Cp / CB;
  const int64_t Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw, P = s.OH * s.OW;
  T* xt = buf;
  T* zt = buf + Hp * Wp * CB;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / blocks, c0 = i % blocks * CB, cn = std::min(CB, s.C - c0);
    to_channels_last<VO>(x + (n * s.C + c0) * s.H * s.W, s.H * s.W, s.H, s.W, cn, xt + (s.ph * Wp + s.pw) * CB, Wp, CB);
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      const T* xrow = xt + oh * s.sh * Wp * CB;
      T* zrow = zt + oh * s.OW * CB;
      int64_t kh0, kh1, kw0, kw1, unused;
      inside_taps(oh, s.sh, s.dh, s.ph, s.H, s.KH, &kh0, &kh1);
      for (int64_t v = 0; v < CB; v += L) {
        const T* ws = wt + c0 + v;
        const T* bs = bias ? bias + c0 + v : nullptr;
        int64_t ow = 0;
        // Blocks of RB pixels, with the taps inside for any of them.
        const auto block = [&](auto rb) {
          constexpr int RB = decltype(rb)::value;
          inside_taps(ow + RB - 1, s.sw, s.dw, s.pw, s.W, s.KW, &kw0, &unused);
          inside_taps(ow, s.sw, s.dw, s.pw, s.W, s.KW, &unused, &kw1);
          kw1 = std::max(kw0, kw1);
          const T* xs = xrow + ow * s.sw * CB + v;
          T* zs = zrow + ow * CB + v;
          const bool all = s.KH == s.KW && kh1 - kh0 == s.KH && kw1 - kw0 == s.KW;
          if (all && s.KH == 3) {
            dw_cl_pixels<VO, RB, 3>(s, Wp, CB, Cp, xs, ws, bs, zs, relu, kh0, kh1, kw0, kw1);
          } else {
            dw_cl_pixels<VO, RB>(s, Wp, CB, Cp, xs, ws, bs, zs, relu, kh0, kh1, kw0, kw1);
          }
        };
        // Blocks of at most 8 pixels, as equal as they can be: each pixel's sum is one chain of FMAs, each
        // waiting for the one before, so a block needs about 8 pixels to keep the FMA units busy (blocks of
        // 8 + 4 + 1 + 1 for a row of 14 ran their last pixels one chain at a time).
        const int64_t blocks_w = (s.OW + 7) / 8, base = s.OW / blocks_w, extra = s.OW % blocks_w;
        for (int64_t b = 0; b < blocks_w; ++b) {
          const int64_t rb = base + (b < extra ? 1 : 0);
          with_block_pixels(rb, block);
          ow += rb;
        }
      }
    }
    from_channels_last<VO>(zt, s.OW, CB, s.OH, s.OW, cn, z + (n * s.K + c0) * P, P);
  }
}

// RB output pixels of a row, one vector of channels, of the forward on channels-last tensors (DwGeom::nhwc):
// acc = bias + sum over taps [kh0, kh0 + nk) x [kw0, kw1) of w * the pixel the tap reads, L channels per FMA.
// rows[j]: the padded buffer row of tap row kh0 + j, at the block's first pixel and the vector's channels
// (pixels Cp apart); ws: the vector's weights of tap (kh0, 0), taps Cp apart; zs: the block's first output,
// pixels K apart; nl: the lanes stored (the channels left).
template <class VO, int RB>
DLK_ALWAYS_INLINE void dw_nhwc_pixels(const ConvShape& s, const typename VO::T* const* rows, int64_t nk, int64_t kw0,
                                      int64_t kw1, int64_t Cp, const typename VO::T* ws, const typename VO::T* bs,
                                      typename VO::T* zs, bool relu, int nl) {
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t KW = s.KW, col = s.dw * Cp, step = s.sw * Cp, K = s.K;  // locals: z's stores could alias s
  V acc[RB];
  const V b = bs ? VO::load(bs) : VO::zero();
  for (int r = 0; r < RB; ++r) acc[r] = b;
  for (int64_t j = 0; j < nk; ++j) {
    const typename VO::T* src = rows[j];
    const typename VO::T* w = ws + j * KW * Cp;
    for (int64_t kw = kw0; kw < kw1; ++kw) {
      const V wv = VO::load(w + kw * Cp);
      for (int r = 0; r < RB; ++r) acc[r] = VO::fma(wv, VO::load(src + kw * col + r * step), acc[r]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    const V v = relu ? VO::relu(acc[r]) : acc[r];
    if (nl == L) {
      VO::store(zs + r * K, v);
    } else {
      VO::storen(zs + r * K, v, nl);
    }
  }
}

// dw_nhwc_pixels for strides SW of 1 or 2 and dilation 1 along W with KW taps per row, all of them (the
// padding reads the buffer's zeros): each input pixel of a tap row is loaded once and multiplied into the up to
// KW / SW outputs that read it (output r, tap kw: pixel r * SW + kw), from registers; tap by tap each output
// would load it again, and on planes whose ring does not fit L1 those loads, not the FMAs, set the pace. Each
// output still sums its taps in order.
template <class VO, int RB, int KW, int SW>
DLK_ALWAYS_INLINE void dw_nhwc_pixels_slide(const ConvShape& s, const typename VO::T* const* rows, int64_t nk,
                                            int64_t Cp, const typename VO::T* ws, const typename VO::T* bs,
                                            typename VO::T* zs, bool relu, int nl) {
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t K = s.K;
  V acc[RB];
  const V b = bs ? VO::load(bs) : VO::zero();
  for (int r = 0; r < RB; ++r) acc[r] = b;
  for (int64_t j = 0; j < nk; ++j) {
    const typename VO::T* src = rows[j];
    V wv[KW];
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw) wv[kw] = VO::load(ws + (j * KW + kw) * Cp);
#pragma GCC unroll 32
    for (int q = 0; q < (RB - 1) * SW + KW; ++q) {
      const V xv = VO::load(src + q * Cp);
#pragma GCC unroll 8
      for (int kw = 0; kw < KW; ++kw) {
        const int r = (q - kw) / SW;
        if (q >= kw && (q - kw) % SW == 0 && r < RB) acc[r] = VO::fma(wv[kw], xv, acc[r]);
      }
    }
  }
  for (int r = 0; r < RB; ++r) {
    const V v = relu ? VO::relu(acc[r]) : acc[r];
    if (nl == L) {
      VO::store(zs + r * K, v);
    } else {
      VO::storen(zs + r * K, v, nl);
    }
  }
}

// The forward on channels-last tensors (DwGeom::nhwc), items [i0, i1) = (image n, band of `band` output rows),
// z written as it lies. The input rows a band reads are copied, once each, into a ring of (KH - 1) * dh + 1
// zero-padded rows of Wp = W + 2 pw pixels of Cp channels (buf; the padding columns and the channels past C,
// zeroed once, stay zero): the taps then read plain vectors, padding included, and only the rows outside the
// image are left out of the sums, as are the columns no pixel of a block reads inside the image. A whole
// plane per block of channels (dw_forward_cl) would not stay in cache on large planes: its moves cost more
// than the taps. Each output row in blocks of up to 8 pixels, as equal as they can be (see dw_forward_cl),
// each vector of channels in turn. wt: [taps][Cp], bt: [Cp] or null.
template <class VO>
void dw_forward_nhwc(const ConvShape& s, const typename VO::T* x, const typename VO::T* wt, int64_t Cp,
                     const typename VO::T* bt, typename VO::T* z, bool relu, int64_t band, int64_t i0, int64_t i1,
                     typename VO::T* buf) {
  using T = typename VO::T;
  constexpr int L = VO::L;
  const int64_t vectors = (s.C + L - 1) / L;
  const int tail = static_cast<int>(s.C - (vectors - 1) * L);
  const int64_t Wp = s.W + 2 * s.pw, R = (s.KH - 1) * s.dh + 1, bands = (s.OH + band - 1) / band;
  const int64_t blocks_w = (s.OW + 7) / 8, base = s.OW / blocks_w, extra = s.OW % blocks_w;
  std::vector<int64_t> held(static_cast<size_t>(R));  // the input row each ring row holds (-1: none)
  std::vector<const T*> rows(static_cast<size_t>(s.KH)), at(static_cast<size_t>(s.KH));
  // The sliding kernel (10 * stride + taps) for 3, 5 or 7 taps per row at stride 1 and 3 or 5 at stride 2,
  // dilation 1, on rows at least as wide as the kernel (on narrower ones most taps read padding, which
  // dw_nhwc_pixels skips); else 0.
  const bool slides = s.dw == 1 && s.OW >= s.KW &&
                      ((s.sw == 1 && (s.KW == 3 || s.KW == 5 || s.KW == 7)) || (s.sw == 2 && (s.KW == 3 || s.KW == 5)));
  const int slide = slides ? static_cast<int>(10 * s.sw + s.KW) : 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / bands, oh0 = i % bands * band, oh1 = std::min(s.OH, oh0 + band);
    std::fill(held.begin(), held.end(), int64_t(-1));
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      int64_t kh0, kh1;
      inside_taps(oh, s.sh, s.dh, s.ph, s.H, s.KH, &kh0, &kh1);
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
        T* ring = buf + (ih % R) * Wp * Cp;
        if (held[ih % R] != ih) {
          held[ih % R] = ih;
          const T* src = x + (n * s.H + ih) * s.W * s.C;
          for (int64_t iw = 0; iw < s.W; ++iw) copy_run<VO>(src + iw * s.C, s.C, ring + (iw + s.pw) * Cp);
        }
        rows[kh - kh0] = ring;
      }
      T* zrow = z + (n * s.OH + oh) * s.OW * s.K;
      int64_t ow = 0;
      for (int64_t blk = 0; blk < blocks_w; ++blk) {
        const int64_t rb = base + (blk < extra ? 1 : 0);
        int64_t kw0, kw1, unused;  // the taps inside the image for some pixel of the block
        inside_taps(ow + rb - 1, s.sw, s.dw, s.pw, s.W, s.KW, &kw0, &unused);
        inside_taps(ow, s.sw, s.dw, s.pw, s.W, s.KW, &unused, &kw1);
        kw1 = std::max(kw0, kw1);
        const auto block = [&](auto rbc) {
          constexpr int RB = decltype(rbc)::value;
          for (int64_t v = 0; v < vectors; ++v) {  // at: the tap rows at this block and vector
            for (int64_t j = 0; j < kh1 - kh0; ++j) at[j] = rows[j] + ow * s.sw * Cp + v * L;
            const T* ws = wt + kh0 * s.KW * Cp + v * L;
            const T* bs = bt ? bt + v * L : nullptr;
            T* zs = zrow + ow * s.K + v * L;
            const int nl = v + 1 == vectors ? tail : L;
            const int64_t nk = kh1 - kh0;
            switch (slide) {
              case 13: dw_nhwc_pixels_slide<VO, RB, 3, 1>(s, at.data(), nk, Cp, ws, bs, zs, relu, nl); break;
              case 15: dw_nhwc_pixels_slide<VO, RB, 5, 1>(s, at.data(), nk, Cp, ws, bs, zs, relu, nl); break;
              case 17: dw_nhwc_pixels_slide<VO, RB, 7, 1>(s, at.data(), nk, Cp, ws, bs, zs, relu, nl); break;
              case 23: dw_nhwc_pixels_slide<VO, RB, 3, 2>(s, at.data(), nk, Cp, ws, bs, zs, relu, nl); break;
              case 25: dw_nhwc_pixels_slide<VO, RB, 5, 2>(s, at.data(), nk, Cp, ws, bs, zs, relu, nl); break;
              default: dw_nhwc_pixels<VO, RB>(s, at.data(), nk, kw0, kw1, Cp, ws, bs, zs, relu, nl);
            }
          }
        };
        with_block_pixels(rb, block);
        ow += rb;
      }
    }
  }
}

// grad_x of the small planes (dw_channels_last) and of channels-last tensors (g.nhwc), items as dw_forward_cl's:
// gz's block moved channels-last,
// each output pixel's gradient scattered to the inputs its taps read (w * gz added in a zeroed padded
// channels-last buffer: pixels in order, taps in order, so every element sums in a fixed order), the
// image part moved to the NCHW planes (or the pixels) of gx.
template <class VO>
void dw_grad_input_cl(const ConvShape& s, const DwGeom& g, const typename VO::T* gz, const typename VO::T* wt,
                      typename VO::T* gx, int64_t i0, int64_t i1, typename VO::T* buf) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t CB = g.CB, Cp = (s.C + CB - 1) / CB * CB, blocks = Cp / CB;
  const int64_t Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw, P = s.OH * s.OW;
  T* gxt = buf;
  T* gzt = buf + Hp * Wp * CB;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / blocks, c0 = i % blocks * CB, cn = std::min(CB, s.C - c0);
    if (g.nhwc) {
      pixels_in<VO>(gz + n * P * s.K + c0, s.K, s.OH, s.OW, cn, gzt, s.OW, CB);
    } else {
      to_channels_last<VO>(gz + (n * s.K + c0) * P, P, s.OH, s.OW, cn, gzt, s.OW, CB);
    }
    std::fill(gxt, gxt + Hp * Wp * CB, T(0));
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        T* dst = gxt + (oh * s.sh * Wp + ow * s.sw) * CB;
        int64_t kh0, kh1, kw0, kw1;  // the taps that reach the image (the others land in the padding)
        inside_taps(oh, s.sh, s.dh, s.ph, s.H, s.KH, &kh0, &kh1);
        inside_taps(ow, s.sw, s.dw, s.pw, s.W, s.KW, &kw0, &kw1);
        for (int64_t v = 0; v < CB; v += L) {
          const V gv = VO::load(gzt + (oh * s.OW + ow) * CB + v);
          for (int64_t kh = kh0; kh < kh1; ++kh) {
            for (int64_t kw = kw0; kw < kw1; ++kw) {
              T* d = dst + (kh * s.dh * Wp + kw * s.dw) * CB + v;
              VO::store(d, VO::fma(VO::load(wt + (kh * s.KW + kw) * Cp + c0 + v), gv, VO::load(d)));
            }
          }
        }
      }
    }
    if (g.nhwc) {
      pixels_out<VO>(gxt + (s.ph * Wp + s.pw) * CB, Wp, CB, s.H, s.W, cn, gx + n * s.H * s.W * s.C + c0, s.C);
    } else {
      from_channels_last<VO>(gxt + (s.ph * Wp + s.pw) * CB, Wp, CB, s.H, s.W, cn, gx + (n * s.C + c0) * s.H * s.W,
                             s.H * s.W);
    }
  }
}

// NT taps of the channels-last grad_w, one vector of channels, over one image: acc[j] += gz(p) * x(p + tap
// tap0 + j) over the output pixels p in order. off[t]: tap t's offset in the padded channels-last x.
template <class VO, int NT>
DLK_ALWAYS_INLINE void dw_gw_cl_taps(const ConvShape& s, int64_t Wp, int64_t CB, const int64_t* off,
                                     const typename VO::T* xt, const typename VO::T* gzt, typename VO::T* acc) {
  using V = typename VO::V;
  V a[NT];
  for (int j = 0; j < NT; ++j) a[j] = VO::load(acc + j * CB);
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      const V gv = VO::load(gzt + (oh * s.OW + ow) * CB);
      const typename VO::T* src = xt + (oh * s.sh * Wp + ow * s.sw) * CB;
      for (int j = 0; j < NT; ++j) a[j] = VO::fma(gv, VO::load(src + off[j]), a[j]);
    }
  }
  for (int j = 0; j < NT; ++j) VO::store(acc + j * CB, a[j]);
}

// grad_w of the small planes (dw_channels_last) and of channels-last tensors (g.nhwc), items [i0, i1) = blocks
// of g.CB channels over the whole batch: per image, x and gz moved channels-last (for g.nhwc: that block's
// channels of every pixel), then per tap the sum of gz * x over the output pixels, L
// channels per FMA, in [taps][CB] accumulators (images in order, pixels in order: a fixed order whatever
// the thread count), several taps at once for independent FMA chains.
template <class VO>
void dw_grad_weight_cl(const ConvShape& s, const DwGeom& g, const typename VO::T* gz, const typename VO::T* x,
                       typename VO::T* gw, int64_t i0, int64_t i1, typename VO::T* buf) {
  using T = typename VO::T;
  constexpr int L = VO::L;
  const int64_t CB = g.CB, taps = s.KH * s.KW;
  const int64_t Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw, P = s.OH * s.OW;
  T* xt = buf;
  T* gzt = buf + Hp * Wp * CB;
  T* acc = gzt + P * CB;
  std::vector<int64_t> off(static_cast<size_t>(taps));
  for (int64_t t = 0; t < taps; ++t) off[t] = ((t / s.KW) * s.dh * Wp + (t % s.KW) * s.dw) * CB;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t c0 = i * CB, cn = std::min(CB, s.C - c0);
    std::fill(acc, acc + taps * CB, T(0));
    for (int64_t n = 0; n < s.N; ++n) {
      if (g.nhwc) {
        pixels_in<VO>(x + n * s.H * s.W * s.C + c0, s.C, s.H, s.W, cn, xt + (s.ph * Wp + s.pw) * CB, Wp, CB);
        pixels_in<VO>(gz + n * P * s.K + c0, s.K, s.OH, s.OW, cn, gzt, s.OW, CB);
      } else {
        to_channels_last<VO>(x + (n * s.C + c0) * s.H * s.W, s.H * s.W, s.H, s.W, cn, xt + (s.ph * Wp + s.pw) * CB, Wp,
                             CB);
        to_channels_last<VO>(gz + (n * s.K + c0) * P, P, s.OH, s.OW, cn, gzt, s.OW, CB);
      }
      for (int64_t v = 0; v < CB; v += L) {
        int64_t t = 0;
        for (; taps - t == 9; t += 9)
          dw_gw_cl_taps<VO, 9>(s, Wp, CB, off.data() + t, xt + v, gzt + v, acc + t * CB + v);
        for (; t + 8 <= taps; t += 8)
          dw_gw_cl_taps<VO, 8>(s, Wp, CB, off.data() + t, xt + v, gzt + v, acc + t * CB + v);
        for (; t + 4 <= taps; t += 4)
          dw_gw_cl_taps<VO, 4>(s, Wp, CB, off.data() + t, xt + v, gzt + v, acc + t * CB + v);
        for (; t < taps; ++t) dw_gw_cl_taps<VO, 1>(s, Wp, CB, off.data() + t, xt + v, gzt + v, acc + t * CB + v);
      }
    }
    for (int64_t c = 0; c < cn; ++c) {
      for (int64_t t = 0; t < taps; ++t) gw[(c0 + c) * taps + t] = acc[t * CB + c];
    }
  }
}

// grad_x planes [p0, p1) (p = n * C + c): gx[ih, iw] = sum over the channel's outputs k and the taps with
// ih + ph = oh * sh + kh * dh and iw + pw = ow * sw + kw * dw of w * gz[k, oh, ow]. Gathered, not scattered:
// the padded input columns of one phase r (iwp % sw == r) receive, from tap kw with (kw * dw) % sw == r,
// gz[oh, j - (kw * dw) / sw] at position j = iwp / sw, a contiguous run of a gz row. Each gz plane is first
// copied into buf with g.QL zeros on the left and zeros past OW, so the runs need no bounds tests. buf:
// g.gx_scratch elements, zeroed.
template <class VO>
void dw_grad_input_planes(const ConvShape& s, const DwGeom& g, const typename VO::T* gz, const typename VO::T* w,
                          typename VO::T* gx, int64_t p0, int64_t p1, typename VO::T* buf) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t taps = s.KH * s.KW;
  // Per input row ih and phase r, the taps that reach it: their weight index and where they read in Z
  // (the same for every plane; worked out once, as it takes divisions).
  std::vector<int64_t> tap_count(s.H * s.sw, 0), tap_w(s.H * s.sw * taps), tap_off(s.H * s.sw * taps);
  for (int64_t ih = 0; ih < s.H; ++ih) {
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t num = ih + s.ph - kh * s.dh;
      if (num < 0 || num % s.sh != 0 || num / s.sh >= s.OH) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t t = kw * s.dw, r = t % s.sw, i = (ih * s.sw + r) * taps + tap_count[ih * s.sw + r]++;
        tap_w[i] = kh * s.KW + kw;
        tap_off[i] = (num / s.sh) * g.RSz - t / s.sw;
      }
    }
  }
  // Positions j of phase r inside the image: pw <= j * sw + r < pw + W.
  std::vector<int64_t> jlos(s.sw), jhis(s.sw);
  for (int64_t r = 0; r < s.sw; ++r) {
    jlos[r] = s.pw - r > 0 ? (s.pw - r + s.sw - 1) / s.sw : 0;
    jhis[r] = s.pw + s.W - 1 - r >= 0 ? (s.pw + s.W - 1 - r) / s.sw + 1 : 0;
  }
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / s.C, c = p % s.C;
    for (int64_t j = 0; j < s.Kg; ++j) {
      const T* src = gz + (n * s.K + c * s.Kg + j) * s.OH * s.OW;
      T* dst = buf + j * s.OH * g.RSz + g.QL;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        for (int64_t ow = 0; ow < s.OW; ++ow) dst[oh * g.RSz + ow] = src[oh * s.OW + ow];
      }
    }
    const T* wc = w + c * s.Kg * s.KH * s.KW;
    for (int64_t ih = 0; ih < s.H; ++ih) {
      T* gxrow = gx + (p * s.H + ih) * s.W;
      for (int64_t r = 0; r < s.sw; ++r) {
        const int64_t jlo = jlos[r], jhi = jhis[r];
        const int64_t* tw = tap_w.data() + (ih * s.sw + r) * taps;
        const int64_t* to = tap_off.data() + (ih * s.sw + r) * taps;
        const int64_t count = tap_count[ih * s.sw + r];
        for (int64_t j0 = jlo; j0 < jhi; j0 += L) {
          V acc = VO::zero();
          for (int64_t m = 0; m < s.Kg; ++m) {
            const T* Z = buf + m * s.OH * g.RSz + g.QL + j0;
            const T* wm = wc + m * taps;
            for (int64_t i = 0; i < count; ++i) acc = VO::fma(VO::set1(wm[tw[i]]), VO::load(Z + to[i]), acc);
          }
          const int64_t cnt = jhi - j0 < L ? jhi - j0 : L;
          if (s.sw == 1) {
            if (cnt == L) {
              VO::store(gxrow + j0 - s.pw, acc);
            } else {
              VO::storen(gxrow + j0 - s.pw, acc, static_cast<int>(cnt));
            }
          } else {
            T tmp[L];
            VO::store(tmp, acc);
            for (int64_t l = 0; l < cnt; ++l) gxrow[(j0 + l) * s.sw + r - s.pw] = tmp[l];
          }
        }
      }
    }
  }
}

// grad_w rows [k0, k1): gw[k, kh, kw] = sum over n, oh, ow of gz[n, k, oh, ow] * x[n, c, ...], summed in
// L lanes per tap in a fixed order (batch, row, chunk), then across the lanes: deterministic. buf:
// g.gw_scratch elements, zeroed.
template <class VO>
void dw_grad_weight_rows(const ConvShape& s, const DwGeom& g, const typename VO::T* gz, const typename VO::T* x,
                         typename VO::T* gw, int64_t k0, int64_t k1, typename VO::T* buf) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t taps = s.KH * s.KW;
  T* P = buf;
  T* acc = P + g.fwd_scratch;  // taps x L
  const int64_t chunks = (s.OW + L - 1) / L, tail = s.OW - (chunks - 1) * L;
  std::vector<int64_t> off(taps);
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t t = kw * s.dw;
      off[kh * s.KW + kw] = kh * s.dh * g.RS + (t % s.sw) * g.plane + t / s.sw;
    }
  }
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t c = k / s.Kg;
    for (int64_t t = 0; t < taps; ++t) VO::store(acc + t * L, VO::zero());
    for (int64_t n = 0; n < s.N; ++n) {
      dw_fill_phases<VO>(s, g, x + (n * s.C + c) * s.H * s.W, P);
      const T* gzk = gz + (n * s.K + k) * s.OH * s.OW;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const T* grow = gzk + oh * s.OW;
        const T* prow = P + oh * s.sh * g.RS;
        for (int64_t tap = 0; tap < taps; ++tap) {
          const T* src = prow + off[tap];
          V a = VO::load(acc + tap * L);
          int64_t q = 0;
          for (; q + 1 < chunks; ++q) a = VO::fma(VO::load(grow + q * L), VO::load(src + q * L), a);
          // The last chunk: lanes past OW load as 0 on both sides (an inf there must not make 0 * inf).
          a = VO::fma(VO::loadn(grow + q * L, static_cast<int>(tail)), VO::loadn(src + q * L, static_cast<int>(tail)),
                      a);
          VO::store(acc + tap * L, a);
        }
      }
    }
    for (int64_t t = 0; t < taps; ++t) gw[k * taps + t] = VO::sum(VO::load(acc + t * L));
  }
}
