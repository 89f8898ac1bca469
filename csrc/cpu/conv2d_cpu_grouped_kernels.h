// The loops of the direct grouped convolution (conv2d_cpu_grouped.cpp), written once over a vector-ops type
// VO and included (deliberately without an include guard) once per ISA, each time in its own namespace, as
// conv2d_cpu_depthwise_kernels.h is. VO provides T, V, L (lanes) and zero, set1, load, loadn, store, storen,
// fma, relu.
//
// An item is an image and a block of g.GB groups. Vectors run along one group's channels, L at a time (Cg and
// Kg are multiples of L), channels-last; the other operand is broadcast from NCHW planes (zero-padded copies
// for x, whose padding, zeroed once per thread, stays zero), so no lane ever needs another group's data and
// only the vector operand is moved channels-last (to_channels_last / from_channels_last). Every sum runs in a
// fixed order whatever the thread count. kGrPixels: the output pixels the forward keeps in registers.
//
// Requires: cpu/conv2d_cpu_grouped.h (GroupedGeom), common/op_args.h (ConvShape), <algorithm> and <utility>
// included before.

#include "cpu/conv2d_cpu_cl_moves.h"

// The output positions [*lo, *hi) whose tap `tap` reads inside the image (o * stride - pad + tap * dilation
// in [0, in)), out of `out`.
DLK_ALWAYS_INLINE void gr_outputs_inside(int64_t tap, int64_t stride, int64_t dilation, int64_t pad, int64_t in,
                                         int64_t out, int64_t* lo, int64_t* hi) {
  const int64_t first = pad - tap * dilation;  // o * stride >= first, o * stride <= in - 1 + first
  *lo = first > 0 ? (first + stride - 1) / stride : 0;
  *hi = in - 1 + first >= 0 ? std::min(out, (in - 1 + first) / stride + 1) : 0;
  *hi = std::max(*hi, *lo);
}

// Copies cn planes of rows x cols elements, `plane` apart, into the interior of zero-padded planes of the
// buffer dst (rows ld apart, planes dplane apart; the padding, zeroed once, stays zero). Vector moves: rows
// are short (4-64 elements), where a memcpy call per row costs more than the copy.
template <class VO>
DLK_ALWAYS_INLINE void gr_to_padded(const typename VO::T* src, int64_t plane, int64_t rows, int64_t cols, int64_t cn,
                                    typename VO::T* dst, int64_t ld, int64_t dplane) {
  constexpr int L = VO::L;
  for (int64_t c = 0; c < cn; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      const typename VO::T* s = src + c * plane + r * cols;
      typename VO::T* d = dst + c * dplane + r * ld;
      int64_t w = 0;
      for (; w + L <= cols; w += L) VO::store(d + w, VO::load(s + w));
      if (w < cols) VO::storen(d + w, VO::loadn(s + w, static_cast<int>(cols - w)), static_cast<int>(cols - w));
    }
  }
}

// RB output pixels of a row, L output channels of one group, of the forward: acc = bias + sum over the taps
// [kh0, kh1) x [kw0, kw1) (the others read only padding for every pixel of the run) and the group's CG input
// channels of w * x, x broadcast straight from its zero-padded planes (g.Hp x g.Wp, `xplane` apart). xs: the
// first pixel's tap-(0, 0) input in the group's first plane; ws: the vector's weights of tap 0, [taps][CG][Kg].
// SW: the stride along W when it is 1 or 2 (0: s.sw), so that the pixels' offsets are constants of the
// instructions rather than registers.
template <class VO, int CG, int SW, int RB>
DLK_ALWAYS_INLINE void gr_fwd_pixels(const ConvShape& s, const GroupedGeom& g, const typename VO::T* xs, int64_t xplane,
                                     const typename VO::T* ws, typename VO::V bv, typename VO::T* zs, bool relu,
                                     int64_t kh0, int64_t kh1, int64_t kw0, int64_t kw1) {
  using V = typename VO::V;
  const int64_t sw = SW ? SW : s.sw;
  V acc[RB];
  for (int r = 0; r < RB; ++r) acc[r] = bv;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    for (int64_t kw = kw0; kw < kw1; ++kw) {
      const typename VO::T* src = xs + kh * s.dh * g.Wp + kw * s.dw;
      const typename VO::T* wt = ws + (kh * s.KW + kw) * CG * s.Kg;
      for (int c = 0; c < CG; ++c) {
        const V wv = VO::load(wt + c * s.Kg);
        const typename VO::T* sc = src + c * xplane;
        for (int r = 0; r < RB; ++r) acc[r] = VO::fma(wv, VO::set1(sc[r * sw]), acc[r]);
      }
    }
  }
  for (int r = 0; r < RB; ++r) VO::store(zs + r * g.CBo, relu ? VO::relu(acc[r]) : acc[r]);
}

// RB pixels at a time along a row, then fewer, with the taps that read inside the image for any of them.
template <class VO, int CG, int SW, int RB>
DLK_ALWAYS_INLINE void gr_fwd_row(const ConvShape& s, const GroupedGeom& g, const typename VO::T* xs, int64_t xplane,
                                  const typename VO::T* ws, typename VO::V bv, typename VO::T* zs, bool relu,
                                  int64_t kh0, int64_t kh1, int64_t* ow) {
  int64_t kw0, kw1, unused;
  for (; *ow + RB <= s.OW; *ow += RB) {
    inside_taps(*ow + RB - 1, s.sw, s.dw, s.pw, s.W, s.KW, &kw0, &unused);
    inside_taps(*ow, s.sw, s.dw, s.pw, s.W, s.KW, &unused, &kw1);
    gr_fwd_pixels<VO, CG, SW, RB>(s, g, xs + *ow * s.sw, xplane, ws, bv, zs + *ow * g.CBo, relu, kh0, kh1, kw0,
                                  std::max(kw0, kw1));
  }
}

// The forward, items [i0, i1): z = bias + conv(x, w), relu if asked. wf: [groups][taps][CG][Kg]. The block's
// input planes are copied into zero-padded planes (no transposition: x is only ever broadcast); its output
// is computed channels-last and moved to the NCHW planes.
template <class VO, int CG, int SW>
void gr_forward_items(const ConvShape& s, const GroupedGeom& g, const typename VO::T* x, const typename VO::T* wf,
                      const typename VO::T* bias, typename VO::T* z, bool relu, int64_t i0, int64_t i1,
                      typename VO::T* buf) {
  using T = typename VO::T;
  constexpr int L = VO::L;
  const int64_t taps = s.KH * s.KW, P = s.OH * s.OW, xplane = g.Hp * g.Wp;
  T* xp = buf;
  T* zt = buf + xplane * g.CBi;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / g.blocks, g0 = i % g.blocks * g.GB, gn = std::min(g.GB, s.groups - g0);
    gr_to_padded<VO>(x + (n * s.C + g0 * CG) * s.H * s.W, s.H * s.W, s.H, s.W, gn * CG, xp + s.ph * g.Wp + s.pw, g.Wp,
                     xplane);
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      int64_t kh0, kh1;
      inside_taps(oh, s.sh, s.dh, s.ph, s.H, s.KH, &kh0, &kh1);
      for (int64_t j = 0; j < gn; ++j) {
        const T* xs = xp + j * CG * xplane + oh * s.sh * g.Wp;
        for (int64_t v = 0; v < s.Kg; v += L) {
          const T* ws = wf + (g0 + j) * taps * CG * s.Kg + v;
          const typename VO::V bv = bias ? VO::load(bias + (g0 + j) * s.Kg + v) : VO::zero();
          T* zs = zt + oh * s.OW * g.CBo + j * s.Kg + v;
          int64_t ow = 0;
          gr_fwd_row<VO, CG, SW, kGrPixels>(s, g, xs, xplane, ws, bv, zs, relu, kh0, kh1, &ow);
          if constexpr (kGrPixels > 8) gr_fwd_row<VO, CG, SW, 8>(s, g, xs, xplane, ws, bv, zs, relu, kh0, kh1, &ow);
          gr_fwd_row<VO, CG, SW, 4>(s, g, xs, xplane, ws, bv, zs, relu, kh0, kh1, &ow);
          gr_fwd_row<VO, CG, SW, 1>(s, g, xs, xplane, ws, bv, zs, relu, kh0, kh1, &ow);
        }
      }
    }
    from_channels_last<VO>(zt, s.OW, g.CBo, s.OH, s.OW, gn * s.Kg, z + (n * s.K + g0 * s.Kg) * P, P);
  }
}

// grad_x, items [i0, i1): each output pixel's gradient scattered to the inputs its taps read, L input
// channels of a group per vector, gz broadcast straight from its NCHW planes: tap by tap (the weights of a tap, KG
// vectors, reused over every pixel), each input pixel receiving sum over k of w * gz(p) from the one pixel p that
// reaches it by that tap. An element thus sums its taps in order, each tap's KG terms in order. wb:
// [groups][taps][KG][Cg].
template <class VO, int KG>
void gr_grad_input_items(const ConvShape& s, const GroupedGeom& g, const typename VO::T* gz, const typename VO::T* wb,
                         typename VO::T* gx, int64_t i0, int64_t i1, typename VO::T* buf) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L;
  const int64_t taps = s.KH * s.KW, P = s.OH * s.OW;
  T* gxt = buf;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i / g.blocks, g0 = i % g.blocks * g.GB, gn = std::min(g.GB, s.groups - g0);
    std::fill(gxt, gxt + g.Hp * g.Wp * g.CBi, T(0));
    for (int64_t j = 0; j < gn; ++j) {
      for (int64_t v = 0; v < s.Cg; v += L) {
        for (int64_t kh = 0; kh < s.KH; ++kh) {
          int64_t oh0, oh1;
          gr_outputs_inside(kh, s.sh, s.dh, s.ph, s.H, s.OH, &oh0, &oh1);
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            int64_t ow0, ow1;
            gr_outputs_inside(kw, s.sw, s.dw, s.pw, s.W, s.OW, &ow0, &ow1);
            const T* wt = wb + (((g0 + j) * taps + kh * s.KW + kw) * KG) * s.Cg + v;
            V wv[KG];
            for (int k = 0; k < KG; ++k) wv[k] = VO::load(wt + k * s.Cg);
            for (int64_t oh = oh0; oh < oh1; ++oh) {
              T* drow = gxt + ((oh * s.sh + kh * s.dh) * g.Wp + kw * s.dw) * g.CBi + j * s.Cg + v;
              const T* grow = gz + (n * s.K + (g0 + j) * KG) * P + oh * s.OW;
              for (int64_t ow = ow0; ow < ow1; ++ow) {
                T* d = drow + ow * s.sw * g.CBi;
                V acc = VO::load(d);
                for (int k = 0; k < KG; ++k) acc = VO::fma(wv[k], VO::set1(grow[k * P + ow]), acc);
                VO::store(d, acc);
              }
            }
          }
        }
      }
    }
    from_channels_last<VO>(gxt + (s.ph * g.Wp + s.pw) * g.CBi, g.Wp, g.CBi, s.H, s.W, gn * s.Cg,
                           gx + (n * s.C + g0 * s.Cg) * s.H * s.W, s.H * s.W);
  }
}

// grad_w, blocks of groups [i0, i1) over the whole batch, g.NB images at a time: x copied into zero-padded
// planes and gz moved channels-last, then per group, tap and 8 input channels the sums of gz(p) * x(p + tap)
// over the images and their output pixels p in registers, L output channels per FMA, x broadcast, into acc
// [GB][taps][CG][Kg] (images in order, pixels in order). SW: as the forward's.
template <class VO, int CG, int SW>
void gr_grad_weight_blocks(const ConvShape& s, const GroupedGeom& g, const typename VO::T* gz, const typename VO::T* x,
                           typename VO::T* gw, int64_t i0, int64_t i1, typename VO::T* buf) {
  using T = typename VO::T;
  using V = typename VO::V;
  constexpr int L = VO::L, CC = CG < 8 ? CG : 8;
  const int64_t taps = s.KH * s.KW, P = s.OH * s.OW, sw = SW ? SW : s.sw;
  const int64_t xplane = g.Hp * g.Wp, ximage = xplane * g.CBi, gzimage = P * g.CBo;
  T* xp = buf;
  T* gzt = xp + g.NB * ximage;
  T* acc = gzt + g.NB * gzimage;
  for (int64_t b = i0; b < i1; ++b) {
    const int64_t g0 = b * g.GB, gn = std::min(g.GB, s.groups - g0);
    std::fill(acc, acc + gn * taps * CG * s.Kg, T(0));
    for (int64_t n0 = 0; n0 < s.N; n0 += g.NB) {
      const int64_t nn = std::min(g.NB, s.N - n0);
      for (int64_t m = 0; m < nn; ++m) {
        gr_to_padded<VO>(x + ((n0 + m) * s.C + g0 * CG) * s.H * s.W, s.H * s.W, s.H, s.W, gn * CG,
                         xp + m * ximage + s.ph * g.Wp + s.pw, g.Wp, xplane);
        to_channels_last<VO>(gz + ((n0 + m) * s.K + g0 * s.Kg) * P, P, s.OH, s.OW, gn * s.Kg, gzt + m * gzimage, s.OW,
                             g.CBo);
      }
      for (int64_t j = 0; j < gn; ++j) {
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t off = (t / s.KW) * s.dh * g.Wp + (t % s.KW) * s.dw + j * CG * xplane;
          for (int64_t v = 0; v < s.Kg; v += L) {
            for (int c0 = 0; c0 < CG; c0 += CC) {
              T* at = acc + ((j * taps + t) * CG + c0) * s.Kg + v;
              V a[CC];
              for (int c = 0; c < CC; ++c) a[c] = VO::load(at + c * s.Kg);
              for (int64_t m = 0; m < nn; ++m) {
                for (int64_t oh = 0; oh < s.OH; ++oh) {
                  const T* xrow = xp + m * ximage + oh * s.sh * g.Wp + off + c0 * xplane;
                  const T* grow = gzt + m * gzimage + oh * s.OW * g.CBo + j * s.Kg + v;
                  for (int64_t ow = 0; ow < s.OW; ++ow) {
                    const V gv = VO::load(grow + ow * g.CBo);
                    const T* src = xrow + ow * sw;
                    for (int c = 0; c < CC; ++c) a[c] = VO::fma(gv, VO::set1(src[c * xplane]), a[c]);
                  }
                }
              }
              for (int c = 0; c < CC; ++c) VO::store(at + c * s.Kg, a[c]);
            }
          }
        }
      }
    }
    for (int64_t j = 0; j < gn; ++j) {
      for (int64_t k = 0; k < s.Kg; ++k) {
        for (int64_t c = 0; c < CG; ++c) {
          for (int64_t t = 0; t < taps; ++t) {
            gw[(((g0 + j) * s.Kg + k) * CG + c) * taps + t] = acc[((j * taps + t) * CG + c) * s.Kg + k];
          }
        }
      }
    }
  }
}

// The kernels' entry points: CG / KG (8 or 16) as template parameters, so that the loops over a group's
// channels unroll, and the stride along W (see gr_fwd_pixels).
template <class VO>
void gr_forward(const ConvShape& s, const GroupedGeom& g, const typename VO::T* x, const typename VO::T* wf,
                const typename VO::T* bias, typename VO::T* z, bool relu, int64_t i0, int64_t i1, typename VO::T* buf) {
  auto run = [&](auto cg) {
    constexpr int CG = decltype(cg)::value;
    if (s.sw == 1) return gr_forward_items<VO, CG, 1>(s, g, x, wf, bias, z, relu, i0, i1, buf);
    if (s.sw == 2) return gr_forward_items<VO, CG, 2>(s, g, x, wf, bias, z, relu, i0, i1, buf);
    gr_forward_items<VO, CG, 0>(s, g, x, wf, bias, z, relu, i0, i1, buf);
  };
  if (s.Cg == 8) return run(std::integral_constant<int, 8>{});
  run(std::integral_constant<int, 16>{});
}
template <class VO>
void gr_grad_input(const ConvShape& s, const GroupedGeom& g, const typename VO::T* gz, const typename VO::T* wb,
                   typename VO::T* gx, int64_t i0, int64_t i1, typename VO::T* buf) {
  if (s.Kg == 8) return gr_grad_input_items<VO, 8>(s, g, gz, wb, gx, i0, i1, buf);
  gr_grad_input_items<VO, 16>(s, g, gz, wb, gx, i0, i1, buf);
}
template <class VO>
void gr_grad_weight(const ConvShape& s, const GroupedGeom& g, const typename VO::T* gz, const typename VO::T* x,
                    typename VO::T* gw, int64_t i0, int64_t i1, typename VO::T* buf) {
  auto run = [&](auto cg) {
    constexpr int CG = decltype(cg)::value;
    if (s.sw == 1) return gr_grad_weight_blocks<VO, CG, 1>(s, g, gz, x, gw, i0, i1, buf);
    if (s.sw == 2) return gr_grad_weight_blocks<VO, CG, 2>(s, g, gz, x, gw, i0, i1, buf);
    gr_grad_weight_blocks<VO, CG, 0>(s, g, gz, x, gw, i0, i1, buf);
  };
  if (s.Cg == 8) return run(std::integral_constant<int, 8>{});
  run(std::integral_constant<int, 16>{});
}
