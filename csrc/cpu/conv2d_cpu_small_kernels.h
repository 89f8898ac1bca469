// The loops of the direct few-channel convolution (conv2d_cpu_small.cpp), written once over a vector-ops
// type VO (cpu/vector_ops.h) and included (deliberately without an include guard) once per ISA: inside a
// target("avx512...") or target("avx2...") region of conv2d_cpu_small_x86.cpp and, for the portable path,
// in conv2d_cpu_small.cpp, each time in its own namespace.
//
// The input planes are first copied into zero-padded rows (SmallGeom), so that tap (kh, kw) of the outputs
// [ow0, ow0 + L) of row oh reads the contiguous run at (oh * sh + kh * dh, ow0 + kw * dw): the inner loops
// are plain vector loads with no bounds tests. The buffers are zeroed once per thread; later images only
// overwrite the image positions.
//
// Requires: cpu/conv2d_cpu_small.h (SmallGeom) and common/op_args.h (ConvShape) included before, and what
// cpu/conv2d_cpu_cl_moves.h requires.

#include "cpu/conv2d_cpu_cl_moves.h"

// Copies the kernel's input planes [c0, c0 + count) of one image (xn: its first plane) into buf, plane by
// plane: plane c * phases + r takes the columns phases * v + r - xpw of x's channel c (SmallGeom), only those
// inside the image. The phases of one buffer plane (grad_w fills channel after channel into one) differ in
// where their image columns begin and end: with phases the rest of the row up to s.W is zeroed.
template <class VO>
void sc_fill(const ConvShape& s, const SmallGeom& g, const typename VO::T* xn, int64_t c0, int64_t count,
             typename VO::T* buf) {
  using T = typename VO::T;
  const int64_t S = g.phases;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t c = (c0 + i) / S, r = (c0 + i) % S;
    const int64_t v0 = (std::max<int64_t>(0, g.xpw - r) + S - 1) / S, v1 = (g.xw + g.xpw - r + S - 1) / S;
    for (int64_t ih = 0; ih < s.H; ++ih) {
      const T* src = xn + (c * s.H + ih) * g.xw;
      T* dst = buf + i * g.plane + (ih + s.ph) * g.RS;
      const int64_t o = r - g.xpw;  // column v reads src[S * v + o]
      if (S == 1) {
        copy_run<VO>(src + v0 + o, v1 - v0, dst + v0);
        continue;
      }
      std::fill(dst, dst + v0, T(0));
      std::fill(dst + v1, dst + std::max(v1, s.W), T(0));
      if (S == 2) {  // a constant stride the compiler vectorises
        for (int64_t v = v0; v < v1; ++v) dst[v] = src[2 * v + o];
      } else {
        for (int64_t v = v0; v < v1; ++v) dst[v] = src[S * v + o];
      }
    }
  }
}

// KB output channels x U vectors of one output row from ow0: acc = bias + sum over (c, kh, kw) of the
// broadcast weight times the input run, each input vector used by KB FMAs. P: the padded input at the
// output row's first input row; wt: the tile's packed weights; out: channel 0's output row; nk: the tile's
// real channels (the rest are padding of the packed weights and are not stored); room: how many elements
// after the row the call writes later (a last partial vector may spill that far: a whole store, where AVX2's
// masked one is slow). FKH, FKW: the kernel's height and width when fixed at compile time (the taps unrolled,
// no loop overhead between the few FMAs of a tap), 0 when read from s.
template <class VO, int KB, int U, int FKH, int FKW>
DLK_ALWAYS_INLINE void sc_block(const ConvShape& s, const SmallGeom& g, const typename VO::T* P,
                                const typename VO::T* wt, const typename VO::T* bt, typename VO::T* out, int64_t ldk,
                                int64_t ow0, int nk, bool relu, int64_t room) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t KH = FKH ? FKH : s.KH, KW = FKW ? FKW : s.KW, C = s.C;
  const int64_t plane = g.plane, hstep = s.dh * g.RS, dw = s.dw;
  V acc[KB][U];
  for (int k = 0; k < KB; ++k) {
    const V b = VO::set1(bt[k]);
    for (int u = 0; u < U; ++u) acc[k][u] = b;
  }
  const T* wv = wt;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t kh = 0; kh < KH; ++kh) {
      const T* row = P + c * plane + kh * hstep + ow0;
      for (int64_t kw = 0; kw < KW; ++kw, wv += KB) {
        const T* src = row + kw * dw;
        V xv[U];
        for (int u = 0; u < U; ++u) xv[u] = VO::load(src + u * L);
        for (int k = 0; k < KB; ++k) {
          const V b = VO::set1(wv[k]);
          for (int u = 0; u < U; ++u) acc[k][u] = VO::fma(b, xv[u], acc[k][u]);
        }
      }
    }
  }
  for (int k = 0; k < KB; ++k) {
    if (k >= nk) break;
    for (int u = 0; u < U; ++u) {
      const V v = relu ? VO::relu(acc[k][u]) : acc[k][u];
      const int64_t n = s.OW - (ow0 + u * L);
      if (n >= L || (n > 0 && L - n <= room)) {
        VO::store(out + k * ldk + ow0 + u * L, v);
      } else if (n > 0) {
        VO::storen(out + k * ldk + ow0 + u * L, v, static_cast<int>(n));
      }
    }
  }
}

// Output rows [oh0, oh1) of every output channel, tile by tile (see SmallConv::rows).
template <class VO, int KB, int FKH, int FKW>
void sc_rows_kb(const ConvShape& s, const SmallGeom& g, const typename VO::T* buf, const typename VO::T* wp,
                const typename VO::T* bp, typename VO::T* out, int64_t ldk, int64_t oh0, int64_t oh1, bool relu) {
  constexpr int L = VO::L;
  // As many vectors along the row as leave registers for the input vectors and a broadcast weight.
  constexpr int U0 = (VO::R - 4) / KB;
  constexpr int U = U0 < 1 ? 1 : (U0 > 4 ? 4 : U0);
  const int64_t taps = s.KH * s.KW;
  for (int64_t tile = 0; tile < g.tiles; ++tile) {
    const typename VO::T* wt = wp + tile * s.C * taps * KB;
    const typename VO::T* bt = bp + tile * KB;
    const int nk = static_cast<int>(std::min<int64_t>(KB, s.K - tile * KB));
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const typename VO::T* P = buf + oh * s.sh * g.RS;
      typename VO::T* o = out + tile * KB * ldk + (oh - oh0) * s.OW;
      int64_t ow0 = 0;
      // Blocks whose last vector still starts inside the row (its lanes past OW are computed from the
      // padding; stored only into the next rows, which are written after this one).
      const int64_t room = (oh1 - oh - 1) * s.OW;
      for (; ow0 + (U - 1) * L < s.OW; ow0 += U * L) {
        sc_block<VO, KB, U, FKH, FKW>(s, g, P, wt, bt, o, ldk, ow0, nk, relu, room);
      }
      for (; ow0 < s.OW; ow0 += L) sc_block<VO, KB, 1, FKH, FKW>(s, g, P, wt, bt, o, ldk, ow0, nk, relu, room);
    }
  }
}

template <class VO>
void sc_rows(const ConvShape& s, const SmallGeom& g, const typename VO::T* buf, const typename VO::T* wp,
             const typename VO::T* bp, typename VO::T* out, int64_t ldk, int64_t oh0, int64_t oh1, bool relu) {
  // 3x3 taps, and 3x2 ones: a stride-2 3x3 kernel's (two column phases of two and one taps, small_kernel_shape).
  const bool k3 = s.KH == 3 && s.KW == 3, k32 = s.KH == 3 && s.KW == 2;
  const auto run = [&](auto kb) {
    constexpr int KB = decltype(kb)::value;
    if (k3) return sc_rows_kb<VO, KB, 3, 3>(s, g, buf, wp, bp, out, ldk, oh0, oh1, relu);
    if (k32) return sc_rows_kb<VO, KB, 3, 2>(s, g, buf, wp, bp, out, ldk, oh0, oh1, relu);
    sc_rows_kb<VO, KB, 0, 0>(s, g, buf, wp, bp, out, ldk, oh0, oh1, relu);
  };
  switch (g.KB) {
    case 2: return run(std::integral_constant<int, 2>{});
    case 3: return run(std::integral_constant<int, 3>{});
    case 4: return run(std::integral_constant<int, 4>{});
    case 5: return run(std::integral_constant<int, 5>{});
    case 6: return run(std::integral_constant<int, 6>{});
    case 8: return run(std::integral_constant<int, 8>{});
    case 10: return run(std::integral_constant<int, 10>{});
    case 12: return run(std::integral_constant<int, 12>{});
    case 14: return run(std::integral_constant<int, 14>{});
    default: return run(std::integral_constant<int, 16>{});
  }
}

// One chunk of L outputs of one row for grad_w's tile: acc[k][t] += gz[k] * x at tap t. MASKED: the last chunk
// of n lanes, whose lanes past OW load as 0 on both sides (an inf there must not make 0 * inf).
template <class VO, int GK, int GT, bool MASKED>
DLK_ALWAYS_INLINE void sc_gw_chunk(const typename VO::T* const* gzr, const typename VO::T* xr, const int64_t* off,
                                   int n, typename VO::V (&acc)[GK][GT]) {
  using V = typename VO::V;
  V gv[GK];
  for (int k = 0; k < GK; ++k) gv[k] = MASKED ? VO::loadn(gzr[k], n) : VO::load(gzr[k]);
  for (int t = 0; t < GT; ++t) {
    const V xv = MASKED ? VO::loadn(xr + off[t], n) : VO::load(xr + off[t]);
    for (int k = 0; k < GK; ++k) acc[k][t] = VO::fma(gv[k], xv, acc[k][t]);
  }
}

// grad_w of one input channel c and taps [t0, t0 + GT): gw[k, c, tap] = sum over n, oh, ow of gz[n, k, oh, ow]
// * x_padded[n, c, oh * sh + kh * dh, ow + kw * dw] for every k, in register tiles of GK channels x GT taps
// whose L-lane sums are kept in `part` between images. Each sum runs in a fixed order (image, row, chunk),
// then across the lanes: deterministic. Channels and taps past the real ones repeat the last real one and
// are not written. P: a padded plane buffer (zeroed once); part: kblocks * GK * GT * L elements.
template <class VO, int GK, int GT>
void sc_grad_weight_tile(const ConvShape& s, const SmallGeom& g, const typename VO::T* gz, const typename VO::T* x,
                         typename VO::T* gw, int64_t c, int64_t t0, typename VO::T* P, typename VO::T* part) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t taps = s.KH * s.KW, plane_z = s.OH * s.OW;
  const int64_t full = s.OW / L;
  const int tail = static_cast<int>(s.OW - full * L);
  const int64_t kblocks = (s.K + GK - 1) / GK;
  int64_t off[GT];
  for (int t = 0; t < GT; ++t) {
    const int64_t tap = std::min(t0 + t, taps - 1);
    off[t] = (tap / s.KW) * s.dh * g.RS + (tap % s.KW) * s.dw;
  }
  for (int64_t i = 0; i < kblocks * GK * GT; ++i) VO::store(part + i * L, VO::zero());
  for (int64_t n = 0; n < s.N; ++n) {
    sc_fill<VO>(s, g, x + n * (s.C / g.phases) * s.H * g.xw, c, 1, P);
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      T* pk = part + kb * GK * GT * L;
      V acc[GK][GT];
      for (int k = 0; k < GK; ++k) {
        for (int t = 0; t < GT; ++t) acc[k][t] = VO::load(pk + (k * GT + t) * L);
      }
      const T* gzn[GK];
      for (int k = 0; k < GK; ++k) gzn[k] = gz + (n * s.K + std::min(kb * GK + k, s.K - 1)) * plane_z;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const T* xr = P + oh * s.sh * g.RS;
        const T* gzr[GK];
        for (int k = 0; k < GK; ++k) gzr[k] = gzn[k] + oh * s.OW;
        for (int64_t q = 0; q < full; ++q) {
          sc_gw_chunk<VO, GK, GT, false>(gzr, xr, off, L, acc);
          for (int k = 0; k < GK; ++k) gzr[k] += L;
          xr += L;
        }
        if (tail > 0) sc_gw_chunk<VO, GK, GT, true>(gzr, xr, off, tail, acc);
      }
      for (int k = 0; k < GK; ++k) {
        for (int t = 0; t < GT; ++t) VO::store(pk + (k * GT + t) * L, acc[k][t]);
      }
    }
  }
  for (int64_t k = 0; k < s.K; ++k) {
    for (int t = 0; t < GT && t0 + t < taps; ++t) {
      gw[(k * s.C + c) * taps + t0 + t] = VO::sum(VO::load(part + (k * GT + t) * L));
    }
  }
}

// grad_w tasks [i0, i1): task i = (c, block of GT taps), in that order. buf: g.plane + kblocks * GK * GT * L
// elements.
template <class VO>
void sc_grad_weight(const ConvShape& s, const SmallGeom& g, const typename VO::T* gz, const typename VO::T* x,
                    typename VO::T* gw, int64_t i0, int64_t i1, typename VO::T* buf) {
  const int64_t taps = s.KH * s.KW;
  const int64_t tblocks = (taps + g.GT - 1) / g.GT;
  typename VO::T* part = buf + g.plane;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t c = i / tblocks, t0 = i % tblocks * g.GT;
    if (g.GK == 2) {
      sc_grad_weight_tile<VO, 2, 9>(s, g, gz, x, gw, c, t0, buf, part);
    } else {
      sc_grad_weight_tile<VO, 1, 9>(s, g, gz, x, gw, c, t0, buf, part);
    }
  }
}

// grad_w with few input channels and whole vectors of outputs (small_grad_weight_by_outputs): gw[k, c, kh, kw] =
// sum over (n, oh, ow) of gz[n, k, oh, ow] * x[n, c, oh * sh - ph + kh * dh, ow * sw - pw + kw * dw]. Task i =
// (image, block of L outputs): its gz planes are moved channels-last (L outputs per pixel) once, then for each
// tile of TT taps (c, kh, kw) the taps' sums stay in TT vectors along k while each pixel is one vector load and
// TT multiply-adds by broadcast inputs of the zero-padded image (any stride: no phases, no wasted lanes). The
// sums of tile t go to part + (i * tiles + t) * TT * L; the caller adds the images in order. Taps past the last
// repeat it, unstored. buf: the padded image (C planes of (H + 2 ph) x (W + 2 pw), zeroed once), then OH * OW
// * L for the channels-last gz.
template <class VO, int TT>
void sc_grad_weight_by_outputs(const ConvShape& s, const typename VO::T* gz, const typename VO::T* x,
                               typename VO::T* part, int64_t i0, int64_t i1, typename VO::T* buf) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t RS = s.W + 2 * s.pw, plane = (s.H + 2 * s.ph) * RS, P = s.OH * s.OW;
  const int64_t taps = s.C * s.KH * s.KW, tiles = (taps + TT - 1) / TT, kblocks = s.K / L;
  T* gzt = buf + s.C * plane;
  int64_t built = -1;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / kblocks, kb = i % kblocks;
    if (n != built) {
      for (int64_t c = 0; c < s.C; ++c) {
        for (int64_t ih = 0; ih < s.H; ++ih) {
          const T* src = x + ((n * s.C + c) * s.H + ih) * s.W;
          copy_run<VO>(src, s.W, buf + c * plane + (ih + s.ph) * RS + s.pw);
        }
      }
      built = n;
    }
    to_channels_last<VO>(gz + (n * s.K + kb * L) * P, P, s.OH, s.OW, L, gzt, s.OW, L);
    for (int64_t tile = 0; tile < tiles; ++tile) {
      int64_t off[TT];
      for (int t = 0; t < TT; ++t) {
        const int64_t tap = std::min(tile * TT + t, taps - 1);
        off[t] = tap / (s.KH * s.KW) * plane + tap / s.KW % s.KH * s.dh * RS + tap % s.KW * s.dw;
      }
      V acc[TT];
      for (int t = 0; t < TT; ++t) acc[t] = VO::zero();
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const T* g_row = gzt + oh * s.OW * L;
        const T* xr = buf + oh * s.sh * RS;
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          const V g = VO::load(g_row + ow * L);
          const T* xp = xr + ow * s.sw;
#pragma GCC unroll 32  // the sums stay in registers only when the loop is unrolled
          for (int t = 0; t < TT; ++t) acc[t] = VO::fma(g, VO::set1(xp[off[t]]), acc[t]);
        }
      }
      T* dst = part + (i * tiles + tile) * TT * L;
      for (int t = 0; t < TT; ++t) VO::store(dst + t * L, acc[t]);
    }
  }
}

// The tiles of sc_grad_weight_by_outputs for the ISA: the most taps whose sums fit the vector registers with the
// gz vector (and, without embedded broadcasts, the broadcast input), and fewer for kernels that would leave most
// of that tile empty (a 3x3 on one channel). kByOutputsTaps[1] <= kByOutputsTaps[0].
template <class VO>
constexpr int kByOutputsTaps[2] = {VO::R >= 32 ? 28 : 12, VO::R >= 32 ? 12 : 6};
template <class VO>
void sc_grad_weight_by_outputs_isa(const ConvShape& s, int tile, const typename VO::T* gz, const typename VO::T* x,
                                   typename VO::T* part, int64_t i0, int64_t i1, typename VO::T* buf) {
  if (tile == kByOutputsTaps<VO>[0]) {
    sc_grad_weight_by_outputs<VO, kByOutputsTaps<VO>[0]>(s, gz, x, part, i0, i1, buf);
  } else {
    sc_grad_weight_by_outputs<VO, kByOutputsTaps<VO>[1]>(s, gz, x, part, i0, i1, buf);
  }
}
