// The glue of the direct depthwise convolution: buffer geometry, per-thread scratch, the split of the planes
// over threads and the choice of ISA; the loops are in conv2d_cpu_depthwise_kernels.h, compiled here once
// for the portable path (one lane) and in conv2d_cpu_depthwise_x86.cpp for AVX-512 and AVX2.
#include "cpu/conv2d_cpu_depthwise.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/conv2d_cpu_depthwise_x86.h"
#include "cpu/cpu_utils.h"
#include "cpu/simd.h"
#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {
namespace dw_base {

#include "cpu/conv2d_cpu_depthwise_kernels.h"

}  // namespace dw_base

namespace {

template <typename T>
const DwKernels<T>& dw_kernels() {
  static const DwKernels<T> base{
      dw_base::dw_forward_planes<ScalarOps<T>>,   dw_base::dw_grad_input_planes<ScalarOps<T>>,
      dw_base::dw_grad_weight_rows<ScalarOps<T>>, dw_base::dw_forward_cl<ScalarOps<T>>,
      dw_base::dw_grad_input_cl<ScalarOps<T>>,    dw_base::dw_grad_weight_cl<ScalarOps<T>>,
      dw_base::dw_forward_nhwc<ScalarOps<T>>};
  return kernels_for_isa(base, DLK_X86_KERNELS(dw_kernels_avx512<T>), DLK_X86_KERNELS(dw_kernels_avx2<T>));
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

DwGeom geometry(const ConvShape& s, bool nhwc) {
  constexpr int64_t kLanes = 16;  // the widest vector; every row has room for one more past its end
  DwGeom g;
  const int64_t qmax = (s.KW - 1) * s.dw / s.sw;         // the furthest tap offset within a phase
  const int64_t J = (s.W + 2 * s.pw + s.sw - 1) / s.sw;  // positions of a phase row
  g.RS = round_up(std::max(round_up(s.OW, kLanes) + qmax, J) + kLanes, kLanes);
  g.plane = (s.H + 2 * s.ph) * g.RS;
  g.QL = qmax;
  g.RSz = round_up(g.QL + J + kLanes, kLanes);
  g.fwd_scratch = s.sw * g.plane;
  g.gx_scratch = s.Kg * s.OH * g.RSz;
  g.gw_scratch = g.fwd_scratch + s.KH * s.KW * kLanes;
  // Blocks of at most 4 vectors of channels, as equal as they can be (96 channels: 2 x 48, not 64 + 32 with
  // a half-empty second block whose lanes are computed and dropped).
  const int64_t vectors = (s.C + kLanes - 1) / kLanes, blocks = (vectors + 3) / 4;
  g.CB = (vectors + blocks - 1) / blocks * kLanes;
  g.nhwc = nhwc;
  g.cl_scratch = ((s.H + 2 * s.ph) * (s.W + 2 * s.pw) + s.OH * s.OW + s.KH * s.KW) * g.CB;
  return g;
}

// The channel blocks of the channels-last kernels, and their weights as [taps][Cp] (Cp: C rounded up to
// whole blocks, zeros past C): one vector per tap and channel block.
int64_t cl_blocks(const ConvShape& s, const DwGeom& g) { return (s.C + g.CB - 1) / g.CB; }
template <typename T>
std::vector<T> cl_weights(const ConvShape& s, const DwGeom& g, const T* w) {
  const int64_t taps = s.KH * s.KW, Cp = cl_blocks(s, g) * g.CB;
  std::vector<T> wt(static_cast<size_t>(taps * Cp), T(0));
  for (int64_t c = 0; c < s.C; ++c) {
    for (int64_t t = 0; t < taps; ++t) wt[t * Cp + c] = w[c * taps + t];
  }
  return wt;
}

}  // namespace

template <typename T>
void depthwise_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* z, bool relu, bool nhwc) {
  const DwGeom g = geometry(s, nhwc);
  const auto& k = dw_kernels<T>();
  if (nhwc || dw_channels_last(s)) {
    const std::vector<T> wt = cl_weights(s, g, w);
    const int64_t Cp = static_cast<int64_t>(wt.size()) / (s.KH * s.KW);
    std::vector<T> bt(bias ? Cp : 0, T(0));
    if (bias) std::copy(bias, bias + s.C, bt.begin());
    if (nhwc) {  // bands of output rows, at least 4 items per thread (batch 1 too)
      const int64_t threads = at::get_num_threads();
      const int64_t bands = std::clamp<int64_t>((4 * threads + s.N - 1) / s.N, 1, s.OH);
      const int64_t band = (s.OH + bands - 1) / bands;
      const int64_t ring = ((s.KH - 1) * s.dh + 1) * (s.W + 2 * s.pw) * Cp;
      parallel_items<T>(s.N * ((s.OH + band - 1) / band), ring, band * s.OW * s.C * s.KH * s.KW,
                        [&](int64_t i0, int64_t i1, T* buf) {
                          k.forward_nhwc(s, x, wt.data(), Cp, bias ? bt.data() : nullptr, z, relu, band, i0, i1, buf);
                        });
      return;
    }
    parallel_items<T>(s.N * cl_blocks(s, g), g.cl_scratch, g.CB * s.OH * s.OW * s.KH * s.KW,
                      [&](int64_t i0, int64_t i1, T* buf) {
                        k.forward_cl(s, g, x, wt.data(), bias ? bt.data() : nullptr, z, relu, i0, i1, buf);
                      });
    return;
  }
  parallel_items<T>(s.N * s.K, g.fwd_scratch, s.OH * s.OW * s.KH * s.KW,
                    [&](int64_t p0, int64_t p1, T* buf) { k.forward(s, g, x, w, bias, z, relu, p0, p1, buf); });
}

template <typename T>
void depthwise_grad_input(const ConvShape& s, const T* gz, const T* w, T* gx, bool nhwc) {
  if (s.sh == 1 && s.sw == 1 && s.Kg == 1 && s.ph <= s.dh * (s.KH - 1) && s.pw <= s.dw * (s.KW - 1)) {
    // Stride 1, one output per channel: grad_x is the forward depthwise convolution of gz with the flipped
    // kernel (padding dilation * (kernel - 1) - padding), whose blocked loops run more FMAs at once.
    ConvShape t = s;
    t.H = s.OH, t.W = s.OW, t.OH = s.H, t.OW = s.W;
    t.ph = s.dh * (s.KH - 1) - s.ph, t.pw = s.dw * (s.KW - 1) - s.pw;
    const int64_t taps = s.KH * s.KW;
    std::vector<T> flipped(static_cast<size_t>(s.K * taps));
    for (int64_t k = 0; k < s.K; ++k) {
      for (int64_t i = 0; i < taps; ++i) flipped[k * taps + i] = w[k * taps + taps - 1 - i];
    }
    depthwise_forward<T>(t, gz, flipped.data(), nullptr, gx, false, nhwc);
    return;
  }
  const DwGeom g = geometry(s, nhwc);
  const auto& k = dw_kernels<T>();
  if (nhwc || dw_channels_last(s)) {
    const std::vector<T> wt = cl_weights(s, g, w);
    parallel_items<T>(s.N * cl_blocks(s, g), g.cl_scratch, g.CB * s.OH * s.OW * s.KH * s.KW,
                      [&](int64_t i0, int64_t i1, T* buf) { k.grad_input_cl(s, g, gz, wt.data(), gx, i0, i1, buf); });
    return;
  }
  parallel_items<T>(s.N * s.C, g.gx_scratch, s.Kg * s.OH * s.OW * s.KH * s.KW,
                    [&](int64_t p0, int64_t p1, T* buf) { k.grad_input(s, g, gz, w, gx, p0, p1, buf); });
}

template <typename T>
void depthwise_grad_weight(const ConvShape& s, const T* gz, const T* x, T* gw, bool nhwc) {
  const DwGeom g = geometry(s, nhwc);
  const auto& k = dw_kernels<T>();
  if (nhwc || dw_channels_last(s)) {
    parallel_items<T>(cl_blocks(s, g), g.cl_scratch, s.N * g.CB * s.OH * s.OW * s.KH * s.KW,
                      [&](int64_t i0, int64_t i1, T* buf) { k.grad_weight_cl(s, g, gz, x, gw, i0, i1, buf); });
    return;
  }
  parallel_items<T>(s.K, g.gw_scratch, s.N * s.OH * s.OW * s.KH * s.KW,
                    [&](int64_t k0, int64_t k1, T* buf) { k.grad_weight(s, g, gz, x, gw, k0, k1, buf); });
}

template void depthwise_forward<float>(const ConvShape&, const float*, const float*, const float*, float*, bool, bool);
template void depthwise_forward<double>(const ConvShape&, const double*, const double*, const double*, double*, bool,
                                        bool);
template void depthwise_grad_input<float>(const ConvShape&, const float*, const float*, float*, bool);
template void depthwise_grad_input<double>(const ConvShape&, const double*, const double*, double*, bool);
template void depthwise_grad_weight<float>(const ConvShape&, const float*, const float*, float*, bool);
template void depthwise_grad_weight<double>(const ConvShape&, const double*, const double*, double*, bool);

}  // namespace cpu
}  // namespace dlkernels
