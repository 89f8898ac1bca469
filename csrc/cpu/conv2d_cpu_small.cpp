// The glue of the direct few-channel convolution: buffer geometry, weight packing, per-thread scratch, the
// split of the work over threads and the choice of ISA; the loops are in conv2d_cpu_small_kernels.h,
// compiled here once for the portable path (one lane) and in conv2d_cpu_small_x86.cpp for AVX-512 and AVX2.
#include "cpu/conv2d_cpu_small.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv2d_cpu_small_x86.h"
#include "cpu/cpu_utils.h"
#include "cpu/simd.h"
#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {
namespace sc_base {

#include "cpu/conv2d_cpu_small_kernels.h"

}  // namespace sc_base

namespace {

template <typename T>
const SmallKernels<T>& small_kernels() {
  using VO = ScalarOps<T>;
  static const SmallKernels<T> base{sc_base::sc_fill<VO>,
                                    sc_base::sc_rows<VO>,
                                    sc_base::sc_grad_weight<VO>,
                                    VO::L,
                                    {sc_base::kByOutputsTaps<VO>[0], sc_base::kByOutputsTaps<VO>[1]},
                                    sc_base::sc_grad_weight_by_outputs_isa<VO>};
  return kernels_for_isa(base, DLK_X86_KERNELS(small_kernels_avx512<T>), DLK_X86_KERNELS(small_kernels_avx2<T>));
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The geometry of conv s, run as small_kernel_shape(s).
SmallGeom geometry(const ConvShape& x) {
  const ConvShape s = small_kernel_shape(x);
  constexpr int64_t kLanes = 16;  // the widest vector
  SmallGeom g;
  g.phases = x.sw, g.xw = x.W, g.xpw = x.pw;
  // A block's last vector starts before OW and reads up to a vector past it, shifted by the widest tap.
  g.RS = round_up(std::max(s.OW + kLanes + (s.KW - 1) * s.dw, s.W + 2 * s.pw), kLanes);
  g.plane = (s.H + 2 * s.ph) * g.RS;
  // Output-channel tiles of at most 16 accumulator rows with 32 vector registers; with 16 registers, 12 rows
  // for rows of one vector, and 6 (two vectors per row, each broadcast weight used twice) for wider rows.
  // Even sizes and 3 and 5 (the kernels are instantiated for those), as equal as the count allows.
  const bool wide = cpu_isa() == Isa::Avx512;
  const int64_t kmax = wide ? 16 : (s.OW > 8 ? 6 : 12);
  g.tiles = (s.K + kmax - 1) / kmax;
  const int64_t kb = (s.K + g.tiles - 1) / g.tiles;
  g.KB = std::min<int64_t>(16, !wide && (kb == 3 || kb == 5) ? kb : round_up(kb, 2));
  // grad_w: a 3x3's nine taps per register tile (each gz vector loaded once for all of them), for as many
  // output channels as the registers hold.
  g.GT = 9;
  g.GK = cpu_isa() == Isa::Avx512 ? 2 : 1;
  return g;
}

}  // namespace

template <typename T>
void SmallConv<T>::fill(const T* xn, T* buf) const {
  small_kernels<T>().fill(k, g, xn, 0, k.C, buf);
}

template <typename T>
void SmallConv<T>::rows(const T* buf, int64_t oh0, int64_t oh1, T* out, int64_t ldk, bool relu) const {
  small_kernels<T>().rows(k, g, buf, wp.data(), bp.data(), out, ldk, oh0, oh1, relu);
}

namespace {
// The weights of small_kernel_shape(s), k, are [K, C * sw, KH, ceil(KW / sw)]: column q of channel (c, r) is w's
// column sw * q + r, zero past KW. fn(i, j) for each element of w, i: its index in w, j: in k's weights.
template <typename Fn>
void for_each_phased_weight(const ConvShape& s, const ConvShape& k, Fn&& fn) {
  for (int64_t o = 0, i = 0; o < s.K; ++o) {
    for (int64_t c = 0; c < s.C; ++c) {
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        for (int64_t kw = 0; kw < s.KW; ++kw, ++i) {
          fn(i, ((o * k.C + c * s.sw + kw % s.sw) * k.KH + kh) * k.KW + kw / s.sw);
        }
      }
    }
  }
}
}  // namespace

template <typename T>
SmallConv<T> small_conv(const ConvShape& s, const T* w, const T* bias) {
  SmallConv<T> sc;
  sc.s = s;
  sc.k = small_kernel_shape(s);
  sc.g = geometry(s);
  std::vector<T> wk;
  if (s.sw > 1) {
    wk.assign(static_cast<size_t>(sc.k.K * sc.k.C * sc.k.KH * sc.k.KW), T(0));
    for_each_phased_weight(s, sc.k, [&](int64_t i, int64_t j) { wk[j] = w[i]; });
    w = wk.data();
  }
  const ConvShape& k = sc.k;
  const int64_t taps = k.KH * k.KW, KB = sc.g.KB;
  sc.wp.assign(static_cast<size_t>(sc.g.tiles * k.C * taps * KB), T(0));
  sc.bp.assign(static_cast<size_t>(sc.g.tiles * KB), T(0));
  for (int64_t o = 0; o < k.K; ++o) {
    const int64_t tile = o / KB, kk = o % KB;
    for (int64_t c = 0; c < k.C; ++c) {
      for (int64_t t = 0; t < taps; ++t) sc.wp[((tile * k.C + c) * taps + t) * KB + kk] = w[(o * k.C + c) * taps + t];
    }
    if (bias) sc.bp[o] = bias[o];
  }
  return sc;
}

template <typename T>
void small_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* z, bool relu,
                   const SmallPost<T>* post) {
  const SmallConv<T> sc = small_conv<T>(s, w, bias);
  // Work items: (image, block of output rows); one block per image unless the images are too few for the
  // threads. A thread copies an image into its buffer once for the consecutive items of that image.
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = s.N >= threads ? 1 : std::min(s.OH, (2 * threads + s.N - 1) / s.N);
  const int64_t rows = (s.OH + blocks - 1) / blocks, plane = s.OH * s.OW;
  parallel_items<T>(
      s.N * blocks, sc.scratch(), rows * s.OW * s.K * s.C * s.KH * s.KW, [&](int64_t i0, int64_t i1, T* buf) {
        int64_t built = -1;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t n = i / blocks, oh0 = i % blocks * rows, oh1 = std::min(s.OH, oh0 + rows);
          if (oh0 >= oh1) continue;
          if (n != built) sc.fill(x + n * s.C * s.H * s.W, buf), built = n;
          T* out = z + n * s.K * plane + oh0 * s.OW;
          sc.rows(buf, oh0, oh1, out, plane, relu);
          if (post) {
            (*post)(n* s.K, oh0* s.OW, static_cast<int>(s.K), static_cast<int>((oh1 - oh0) * s.OW), out, plane);
          }
        }
      });
}

template <typename T>
void small_grad_weight(const ConvShape& s, const T* gz, const T* x, T* gw) {
  const ConvShape k = small_kernel_shape(s);
  const SmallGeom g = geometry(s);
  const auto& kernels = small_kernels<T>();
  const int64_t taps = k.KH * k.KW;
  const int64_t items = k.C * ((taps + g.GT - 1) / g.GT);
  constexpr int64_t kLanes = 16;  // the widest vector
  const int64_t part = (k.K + g.GK - 1) / g.GK * g.GK * g.GT * kLanes;
  // Phased (stride along W): the kernel shape's gradient, whose columns are then put back in w's order.
  std::vector<T> gwk(s.sw > 1 ? static_cast<size_t>(k.K * k.C * taps) : 0);
  T* dst = s.sw > 1 ? gwk.data() : gw;
  parallel_items<T>(items, g.plane + part, s.N * s.OH * s.OW * k.K * g.GT,
                    [&](int64_t i0, int64_t i1, T* buf) { kernels.grad_weight(k, g, gz, x, dst, i0, i1, buf); });
  if (s.sw > 1) for_each_phased_weight(s, k, [&](int64_t i, int64_t j) { gw[i] = gwk[j]; });
}

template <typename T>
bool small_grad_weight_by_outputs_applies(const ConvShape& s) {
  const int64_t lanes = small_kernels<T>().lanes;
  return s.groups == 1 && s.C <= 4 && s.KH * s.KW > 1 && lanes > 1 && s.K % lanes == 0;
}

template <typename T>
void small_grad_weight_by_outputs(const ConvShape& s, const T* gz, const T* x, T* gw) {
  const auto& kernels = small_kernels<T>();
  const int64_t L = kernels.lanes, taps = s.C * s.KH * s.KW;
  // The tile that computes fewest padding taps (the larger one on a tie: fewer passes over gz).
  auto padded = [&](int64_t tile) { return (taps + tile - 1) / tile * tile; };
  const int64_t big = kernels.by_outputs_taps[0], small = kernels.by_outputs_taps[1];
  const int64_t TT = padded(small) < padded(big) ? small : big;
  const int64_t tiles = (taps + TT - 1) / TT, kblocks = s.K / L;
  const int64_t items = s.N * kblocks, per_image = kblocks * tiles * TT * L;
  std::vector<T> part(static_cast<size_t>(items * tiles * TT * L));
  const int64_t scratch = s.C * (s.H + 2 * s.ph) * (s.W + 2 * s.pw) + s.OH * s.OW * L;
  parallel_items<T>(items, scratch, s.OH * s.OW * tiles * TT * L, [&](int64_t i0, int64_t i1, T* buf) {
    kernels.grad_weight_by_outputs(s, static_cast<int>(TT), gz, x, part.data(), i0, i1, buf);
  });
  // The images' sums added in order: part[n][kb][tile][t][l] is gw[kb * L + l][tile * TT + t].
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t l = 0; l < L; ++l) {
        const T* p = part.data() + (kb * tiles + tap / TT) * TT * L + tap % TT * L + l;
        T sum = T(0);
        for (int64_t n = 0; n < s.N; ++n) sum += p[n * per_image];
        gw[(kb * L + l) * taps + tap] = sum;
      }
    }
  }
}

template struct SmallConv<float>;
template struct SmallConv<double>;
template SmallConv<float> small_conv<float>(const ConvShape&, const float*, const float*);
template SmallConv<double> small_conv<double>(const ConvShape&, const double*, const double*);
template void small_forward<float>(const ConvShape&, const float*, const float*, const float*, float*, bool,
                                   const SmallPost<float>*);
template void small_forward<double>(const ConvShape&, const double*, const double*, const double*, double*, bool,
                                    const SmallPost<double>*);
template void small_grad_weight<float>(const ConvShape&, const float*, const float*, float*);
template void small_grad_weight<double>(const ConvShape&, const double*, const double*, double*);
template bool small_grad_weight_by_outputs_applies<float>(const ConvShape&);
template bool small_grad_weight_by_outputs_applies<double>(const ConvShape&);
template void small_grad_weight_by_outputs<float>(const ConvShape&, const float*, const float*, float*);
template void small_grad_weight_by_outputs<double>(const ConvShape&, const double*, const double*, double*);

}  // namespace cpu
}  // namespace dlkernels
