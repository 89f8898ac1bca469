// Conv2d with fused bias + activation on the CPU (NCHW, symmetric padding, groups), and its backward.
//
// Direct convolution: every output plane (n, k) is a sum over the input channels c of its group and the
// kernel taps (kh, kw) of  w[k, c, kh, kw] * (the input plane c shifted by the tap). A tap shifts whole rows,
// so the innermost loop runs along an output row (contiguous when stride is 1) over a range of ow computed
// once per tap, with no bounds test per element: padding is handled by clipping the range, never by
// reading zeros.
//
// The kernels work on NCHW-contiguous copies in the accumulation type (float for bf16/fp16, double for
// double): half inputs are converted once, and every result is rounded once, on its write. A channels_last
// input gets a channels_last output (as torch's CPU convolution returns), converted once at the end.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "common/shapes.h"
#include "cpu/cpu_utils.h"

namespace dlkernels {
namespace {

constexpr const char* kOp = "conv2d";
constexpr const char* kOpBwd = "conv2d_backward";

// The outputs o in [lo, hi) whose input index o * stride + offset lies in [0, in): the tap's valid range.
struct Range {
  int64_t lo, hi;
};
inline Range valid_range(int64_t offset, int64_t stride, int64_t in, int64_t out) {
  const int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t hi = (in - 1 - offset) < 0 ? 0 : std::min(out, (in - 1 - offset) / stride + 1);
  return {lo, std::max(lo, hi)};
}

// ---------------------------------------------------------------------------------------------------------
// Forward: output planes in blocks of KB output channels of one group. The block shares every input load KB
// times (the same input row feeds KB accumulator rows), which is what makes the direct loop less memory-bound.
constexpr int kBlockK = 4;

template <typename acc_t, int KB>
void accumulate_block(const ConvShape& s, const acc_t* x_n, const acc_t* w_k, acc_t* acc) {
  const int64_t plane = s.OH * s.OW;
  const int64_t taps = s.KH * s.KW;
  for (int64_t c = 0; c < s.Cg; ++c) {
    const acc_t* xc = x_n + c * s.H * s.W;
    for (int64_t i = 0; i < s.KH; ++i) {
      const Range rh = valid_range(i * s.dh - s.ph, s.sh, s.H, s.OH);
      for (int64_t j = 0; j < s.KW; ++j) {
        const int64_t off_w = j * s.dw - s.pw;
        const Range rw = valid_range(off_w, s.sw, s.W, s.OW);
        if (rw.lo >= rw.hi) continue;
        acc_t wv[KB];
        for (int b = 0; b < KB; ++b) wv[b] = w_k[(b * s.Cg + c) * taps + i * s.KW + j];
        for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
          const acc_t* xr = xc + (oh * s.sh + i * s.dh - s.ph) * s.W;  // the input row of this output row
          acc_t* ar = acc + oh * s.OW;
          if (s.sw == 1) {
            for (int64_t ow = rw.lo; ow < rw.hi; ++ow) {
              const acc_t xv = xr[ow + off_w];
              for (int b = 0; b < KB; ++b) ar[b * plane + ow] += wv[b] * xv;
            }
          } else {
            for (int64_t ow = rw.lo; ow < rw.hi; ++ow) {
              const acc_t xv = xr[ow * s.sw + off_w];
              for (int b = 0; b < KB; ++b) ar[b * plane + ow] += wv[b] * xv;
            }
          }
        }
      }
    }
  }
}

// Computes every output plane z[n, k] = bias[k] + sum over taps, in acc_t, and hands each finished plane to
// `epilogue(n * K + k, values)`. x and w are NCHW-contiguous acc_t buffers; bias may be null.
template <typename acc_t, typename Epilogue>
void conv_forward_planes(const ConvShape& s, const acc_t* x, const acc_t* w, const acc_t* bias,
                         const Epilogue& epilogue) {
  const int64_t plane = s.OH * s.OW;
  const int64_t blocks_per_group = (s.Kg + kBlockK - 1) / kBlockK;
  const int64_t items = s.N * s.groups * blocks_per_group;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kBlockK * plane);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (s.groups * blocks_per_group);
      const int64_t g = (item / blocks_per_group) % s.groups;
      const int64_t k0 = g * s.Kg + (item % blocks_per_group) * kBlockK;
      const int kb = static_cast<int>(std::min<int64_t>(kBlockK, (g + 1) * s.Kg - k0));
      for (int b = 0; b < kb; ++b) std::fill_n(acc.data() + b * plane, plane, bias ? bias[k0 + b] : acc_t(0));
      const acc_t* x_n = x + (n * s.C + g * s.Cg) * s.H * s.W;
      const acc_t* w_k = w + k0 * s.Cg * s.KH * s.KW;
      switch (kb) {
        case 1: accumulate_block<acc_t, 1>(s, x_n, w_k, acc.data()); break;
        case 2: accumulate_block<acc_t, 2>(s, x_n, w_k, acc.data()); break;
        case 3: accumulate_block<acc_t, 3>(s, x_n, w_k, acc.data()); break;
        default: accumulate_block<acc_t, kBlockK>(s, x_n, w_k, acc.data()); break;
      }
      for (int b = 0; b < kb; ++b) epilogue(n * s.K + k0 + b, acc.data() + b * plane);
    }
  });
}

at::Tensor conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const ConvShape s = check_conv_args(x, weight, bias, stride, padding, dilation, groups, kOp, c10::DeviceType::CPU);
  const auto memory_format = x.suggest_memory_format();
  at::Tensor out = at::empty({s.N, s.K, s.OH, s.OW}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out.contiguous(memory_format);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor xa = as_acc(x, acc_type);
    const at::Tensor wa = as_acc(weight, acc_type);
    const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t plane = s.OH * s.OW;
    dispatch_activation(act, [&](auto act_tag) {
      using Fn = ActivationFn<decltype(act_tag)::value>;
      conv_forward_planes<acc_t>(s, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(),
                                 ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr,
                                 [&](int64_t p, const acc_t* z) {  // activation and the one rounding
                                   scalar_t* o = y + p * plane;
                                   for (int64_t i = 0; i < plane; ++i) o[i] = static_cast<scalar_t>(Fn::forward(z[i]));
                                 });
    });
  });
  return out.contiguous(memory_format);
}

// ---------------------------------------------------------------------------------------------------------
// Backward.

// dot(a, b) over n contiguous elements with independent lanes, so that the compiler vectorises it (a single
// running sum may not be reordered without -ffast-math); the lanes are added in a fixed order.
template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  constexpr int V = sizeof(acc_t) == 4 ? 8 : 4;
  acc_t lanes[V] = {};
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    for (int l = 0; l < V; ++l) lanes[l] += a[i + l] * b[i + l];
  }
  acc_t s = acc_t(0);
  for (int l = 0; l < V; ++l) s += lanes[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& out, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const ConvShape s = check_conv_args(x, weight, bias, stride, padding, dilation, groups, kOpBwd, c10::DeviceType::CPU);
  check_same_device_dtype(x, "x", grad_out, "grad_out", kOpBwd);
  check_same_device_dtype(x, "x", out, "out", kOpBwd);
  const std::array<int64_t, 4> y_shape = {s.N, s.K, s.OH, s.OW};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(y_shape), "dlkernels.", kOpBwd, ": expected 'grad_out' of shape ",
              at::IntArrayRef(y_shape), " (the output's), got ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == at::IntArrayRef(y_shape), "dlkernels.", kOpBwd, ": expected 'out' of shape ",
              at::IntArrayRef(y_shape), " (the forward's output), got ", out.sizes());

  const bool need_x = output_mask[0];
  const bool need_w = output_mask[1];
  const bool need_b = output_mask[2] && has_bias(bias);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_x = need_x ? at::empty(x.sizes(), opts) : at::Tensor();  // NCHW, converted at the end
  at::Tensor grad_w = need_w ? at::empty(weight.sizes(), opts) : at::Tensor();
  at::Tensor grad_b = need_b ? at::empty({s.K}, opts) : at::Tensor();
  if (!need_x && !need_w && !need_b) return {grad_x, grad_w, grad_b};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor xa = as_acc(x, acc_type);
    const at::Tensor wa = as_acc(weight, acc_type);
    const acc_t* x_p = xa.const_data_ptr<acc_t>();
    const acc_t* w_p = wa.const_data_ptr<acc_t>();
    const at::Tensor go = grad_out.contiguous();
    const scalar_t* go_p = go.const_data_ptr<scalar_t>();
    const int64_t plane = s.OH * s.OW;
    const int64_t taps = s.KH * s.KW;

    // Step 1: gz = grad_out * act'(saved) in acc_t, one (n, k) plane per work item, with the plane's sum
    // for grad_bias taken in the same pass.
    at::Tensor gz = at::empty({s.N, s.K, s.OH, s.OW}, opts.dtype(acc_type));
    acc_t* gz_p = gz.mutable_data_ptr<acc_t>();
    std::vector<acc_t> plane_sums(s.N * s.K, acc_t(0));
    dispatch_activation(act, [&](auto act_tag) {
      using Fn = ActivationFn<decltype(act_tag)::value>;
      auto grad_plane = [&](int64_t p, auto saved) {  // saved(i): what Fn::grad expects at element i of plane p
        acc_t sum = acc_t(0);
        for (int64_t i = 0; i < plane; ++i) {
          const acc_t g = static_cast<acc_t>(go_p[p * plane + i]) * Fn::grad(saved(i));
          gz_p[p * plane + i] = g;
          sum += g;
        }
        plane_sums[p] = sum;
      };
      if (grad_needs_preactivation(act)) {
        // Recompute the pre-activation plane by plane with the forward loops; it stays in acc_t (never rounded).
        const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
        conv_forward_planes<acc_t>(s, x_p, w_p, ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr,
                                   [&](int64_t p, const acc_t* z) { grad_plane(p, [z](int64_t i) { return z[i]; }); });
      } else {
        const at::Tensor saved = out.contiguous();
        const scalar_t* s_p = saved.const_data_ptr<scalar_t>();
        at::parallel_for(0, s.N * s.K, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const scalar_t* sp = s_p + p * plane;
            grad_plane(p, [sp](int64_t i) { return static_cast<acc_t>(sp[i]); });
          }
        });
      }
    });

    if (need_b) {
      // Summed over the batch in its order: deterministic.
      scalar_t* gb = grad_b.mutable_data_ptr<scalar_t>();
      for (int64_t k = 0; k < s.K; ++k) {
        acc_t sum = acc_t(0);
        for (int64_t n = 0; n < s.N; ++n) sum += plane_sums[n * s.K + k];
        gb[k] = static_cast<scalar_t>(sum);
      }
    }

    // Step 2a: grad_x[n, c] = sum over the group's output channels k and taps of w[k, c, tap] * gz[n, k]
    // scattered back through the tap's shift. One thread owns each (n, c) plane: no races, fixed order.
    if (need_x && grad_x.numel() > 0) {
      scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, s.N * s.C, 1, [&](int64_t p0, int64_t p1) {
        std::vector<acc_t> acc(s.H * s.W);
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t n = p / s.C, c = p % s.C;
          const int64_t g = c / s.Cg, cl = c % s.Cg;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t k = g * s.Kg; k < (g + 1) * s.Kg; ++k) {
            const acc_t* gzk = gz_p + (n * s.K + k) * plane;
            const acc_t* wk = w_p + (k * s.Cg + cl) * taps;
            for (int64_t i = 0; i < s.KH; ++i) {
              const Range rh = valid_range(i * s.dh - s.ph, s.sh, s.H, s.OH);
              for (int64_t j = 0; j < s.KW; ++j) {
                const int64_t off_w = j * s.dw - s.pw;
                const Range rw = valid_range(off_w, s.sw, s.W, s.OW);
                const acc_t wv = wk[i * s.KW + j];
                for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
                  acc_t* ar = acc.data() + (oh * s.sh + i * s.dh - s.ph) * s.W;  // the input row it came from
                  const acc_t* gr = gzk + oh * s.OW;
                  if (s.sw == 1) {
                    for (int64_t ow = rw.lo; ow < rw.hi; ++ow) ar[ow + off_w] += wv * gr[ow];
                  } else {
                    for (int64_t ow = rw.lo; ow < rw.hi; ++ow) ar[ow * s.sw + off_w] += wv * gr[ow];
                  }
                }
              }
            }
          }
          scalar_t* dst = gx + p * s.H * s.W;
          for (int64_t i = 0; i < s.H * s.W; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
        }
      });
    }

    // Step 2b: grad_w[k, cl, tap] = sum over n and output positions of gz[n, k] * (x[n, c] shifted by the tap).
    // One thread owns each (k, cl) slice; the batch is walked in order.
    if (need_w && grad_w.numel() > 0) {
      scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, s.K * s.Cg, 1, [&](int64_t q0, int64_t q1) {
        std::vector<acc_t> acc(taps);
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t k = q / s.Cg, cl = q % s.Cg;
          const int64_t c = (k / s.Kg) * s.Cg + cl;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t n = 0; n < s.N; ++n) {
            const acc_t* gzk = gz_p + (n * s.K + k) * plane;
            const acc_t* xc = x_p + (n * s.C + c) * s.H * s.W;
            for (int64_t i = 0; i < s.KH; ++i) {
              const Range rh = valid_range(i * s.dh - s.ph, s.sh, s.H, s.OH);
              for (int64_t j = 0; j < s.KW; ++j) {
                const int64_t off_w = j * s.dw - s.pw;
                const Range rw = valid_range(off_w, s.sw, s.W, s.OW);
                if (rw.lo >= rw.hi) continue;
                acc_t sum = acc_t(0);
                for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
                  const acc_t* xr = xc + (oh * s.sh + i * s.dh - s.ph) * s.W;  // the input row of this output row
                  const acc_t* gr = gzk + oh * s.OW;
                  if (s.sw == 1) {
                    sum += dot(gr + rw.lo, xr + rw.lo + off_w, rw.hi - rw.lo);
                  } else {
                    for (int64_t ow = rw.lo; ow < rw.hi; ++ow) sum += gr[ow] * xr[ow * s.sw + off_w];
                  }
                }
                acc[i * s.KW + j] += sum;
              }
            }
          }
          for (int64_t t = 0; t < taps; ++t) gw[q * taps + t] = static_cast<scalar_t>(acc[t]);
        }
      });
    }
  });
  if (grad_x.defined()) grad_x = grad_x.contiguous(x.suggest_memory_format());
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(dlkernels, CPU, m) {
  m.impl("conv2d", &dlkernels::conv2d_cpu);
  m.impl("conv2d_backward", &dlkernels::conv2d_backward_cpu);
}
