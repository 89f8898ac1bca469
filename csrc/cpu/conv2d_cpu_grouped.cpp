// The glue of the direct grouped convolution: blocking, the weights' layouts, per-thread scratch and the
// choice of ISA; the loops are in conv2d_cpu_grouped_kernels.h, compiled here once for the portable path
// (one lane) and in conv2d_cpu_grouped_x86.cpp for AVX-512 and AVX2.
#include "cpu/conv2d_cpu_grouped.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/conv2d_cpu_grouped_x86.h"
#include "cpu/cpu_utils.h"
#include "cpu/simd.h"
#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {
namespace gr_base {

constexpr int kGrPixels = 8;
#include "cpu/conv2d_cpu_grouped_kernels.h"

}  // namespace gr_base

namespace {

template <typename T>
const GroupedKernels<T>& grouped_kernels() {
  static const GroupedKernels<T> base{gr_base::gr_forward<ScalarOps<T>>, gr_base::gr_grad_input<ScalarOps<T>>,
                                      gr_base::gr_grad_weight<ScalarOps<T>>};
  return kernels_for_isa(base, DLK_X86_KERNELS(grouped_kernels_avx512<T>), DLK_X86_KERNELS(grouped_kernels_avx2<T>));
}

GroupedGeom geometry(const ConvShape& s) {
  GroupedGeom g;
  g.GB = std::max<int64_t>(1, 64 / std::max(s.Cg, s.Kg));
  g.blocks = (s.groups + g.GB - 1) / g.GB;
  g.CBi = g.GB * s.Cg, g.CBo = g.GB * s.Kg;
  g.Hp = s.H + 2 * s.ph, g.Wp = s.W + 2 * s.pw;
  // grad_w takes NB images at a time, as many as fit about 256 KiB (at least one): on small planes the sums
  // then run over several images in registers.
  const int64_t image = g.Hp * g.Wp * g.CBi + s.OH * s.OW * g.CBo;
  g.NB = std::clamp<int64_t>((int64_t(256) << 10) / static_cast<int64_t>(sizeof(float)) / image, 1, s.N);
  g.scratch = image;
  g.gw_scratch = g.NB * image + g.GB * s.KH * s.KW * s.Cg * s.Kg;
  return g;
}

// The weights [K, Cg, KH, KW] as [groups][taps][Cg][Kg] (kg_inner, for the forward's vectors along the
// output channels) or [groups][taps][Kg][Cg] (for grad_x's along the input channels).
template <typename T>
std::vector<T> regroup_weights(const ConvShape& s, const T* w, bool kg_inner) {
  const int64_t taps = s.KH * s.KW;
  std::vector<T> out(static_cast<size_t>(s.K * s.Cg * taps));
  for (int64_t gi = 0; gi < s.groups; ++gi) {
    for (int64_t k = 0; k < s.Kg; ++k) {
      for (int64_t c = 0; c < s.Cg; ++c) {
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t inner = kg_inner ? c * s.Kg + k : k * s.Cg + c;
          out[(gi * taps + t) * s.Cg * s.Kg + inner] = w[((gi * s.Kg + k) * s.Cg + c) * taps + t];
        }
      }
    }
  }
  return out;
}

}  // namespace

template <typename T>
void grouped_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* z, bool relu) {
  const GroupedGeom g = geometry(s);
  const std::vector<T> wf = regroup_weights(s, w, true);
  const auto& k = grouped_kernels<T>();
  parallel_items<T>(s.N * g.blocks, g.scratch, g.CBo * s.OH * s.OW * s.Cg * s.KH * s.KW,
                    [&](int64_t i0, int64_t i1, T* buf) { k.forward(s, g, x, wf.data(), bias, z, relu, i0, i1, buf); });
}

template <typename T>
void grouped_grad_input(const ConvShape& s, const T* gz, const T* w, T* gx) {
  const GroupedGeom g = geometry(s);
  const std::vector<T> wb = regroup_weights(s, w, false);
  const auto& k = grouped_kernels<T>();
  parallel_items<T>(s.N * g.blocks, g.scratch, g.CBo * s.OH * s.OW * s.Cg * s.KH * s.KW,
                    [&](int64_t i0, int64_t i1, T* buf) { k.grad_input(s, g, gz, wb.data(), gx, i0, i1, buf); });
}

template <typename T>
void grouped_grad_weight(const ConvShape& s, const T* gz, const T* x, T* gw) {
  const GroupedGeom g = geometry(s);
  const auto& k = grouped_kernels<T>();
  parallel_items<T>(g.blocks, g.gw_scratch, s.N * g.CBo * s.OH * s.OW * s.Cg * s.KH * s.KW,
                    [&](int64_t i0, int64_t i1, T* buf) { k.grad_weight(s, g, gz, x, gw, i0, i1, buf); });
}

template void grouped_forward<float>(const ConvShape&, const float*, const float*, const float*, float*, bool);
template void grouped_forward<double>(const ConvShape&, const double*, const double*, const double*, double*, bool);
template void grouped_grad_input<float>(const ConvShape&, const float*, const float*, float*);
template void grouped_grad_input<double>(const ConvShape&, const double*, const double*, double*);
template void grouped_grad_weight<float>(const ConvShape&, const float*, const float*, float*);
template void grouped_grad_weight<double>(const ConvShape&, const double*, const double*, double*);

}  // namespace cpu
}  // namespace dlkernels
