// Conv2d + bias + activation on CUDA (direct convolution), and its backward.
//
// Simple, correct kernels on NCHW-contiguous copies, with float accumulation for half types:
//   forward  one thread per output element (n, k, oh, ow) loops over the C/groups channels of its group and
//            the kernel window; bias and activation in the epilogue, one write.
//   grad_x   one thread per input element (n, c, ih, iw) gathers over the output channels of its group and
//            the kernel taps whose output position lands on the stride grid (no atomics).
//   grad_w   one block per weight element (k, c, r, s) sums over (n, oh, ow) with a fixed-order block reduction.
//   grad_b   per-channel sum of gz (cuda_utils.cuh).
// gz = grad_out * act'(saved) with saved = out, or the pre-activation recomputed by the forward kernel for
// gelu/gelu_tanh/silu. Results come in x.suggest_memory_format(); grad_weight is contiguous.
#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "common/shapes.h"
#include "cuda/cuda_utils.cuh"

namespace dlkernels {
namespace cuda {
namespace {

// out[n, k, oh, ow] = act(bias[k] + sum_{c, r, s} x[n, g*Cg + c, oh*sh - ph + r*dh, ow*sw - pw + s*dw] * w[k, c, r, s])
template <typename scalar_t, Activation A>
__global__ void conv2d_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, ConvShape g,
                                      int64_t total, ActivationParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t ow = i % g.OW;
    const int64_t oh = (i / g.OW) % g.OH;
    const int64_t k = (i / (g.OW * g.OH)) % g.K;
    const int64_t n = i / (g.OW * g.OH * g.K);
    const int64_t group = k / g.Kg;
    const int64_t ih0 = oh * g.sh - g.ph;
    const int64_t iw0 = ow * g.sw - g.pw;
    acc_t acc = 0;
    for (int64_t c = 0; c < g.Cg; ++c) {
      const scalar_t* xc = x + ((n * g.C + group * g.Cg + c) * g.H) * g.W;
      const scalar_t* wc = w + ((k * g.Cg + c) * g.KH) * g.KW;
      for (int64_t r = 0; r < g.KH; ++r) {
        const int64_t ih = ih0 + r * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        for (int64_t s = 0; s < g.KW; ++s) {
          const int64_t iw = iw0 + s * g.dw;
          if (iw < 0 || iw >= g.W) continue;
          acc += static_cast<acc_t>(xc[ih * g.W + iw]) * static_cast<acc_t>(wc[r * g.KW + s]);
        }
      }
    }
    if (bias != nullptr) acc += static_cast<acc_t>(bias[k]);
    out[i] = static_cast<scalar_t>(ActivationFn<A>::forward(acc, p));
  }
}

// grad_x[n, c, ih, iw] = sum over k of c's group and taps (r, s) with ih = oh*sh - ph + r*dh and
// iw = ow*sw - pw + s*dw for a valid (oh, ow): gz[n, k, oh, ow] * w[k, c % Cg, r, s]
template <typename scalar_t>
__global__ void conv2d_grad_input_kernel(const scalar_t* __restrict__ gz, const scalar_t* __restrict__ w,
                                         scalar_t* __restrict__ grad_x, ConvShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t iw = i % g.W;
    const int64_t ih = (i / g.W) % g.H;
    const int64_t c = (i / (g.W * g.H)) % g.C;
    const int64_t n = i / (g.W * g.H * g.C);
    const int64_t group = c / g.Cg;
    const int64_t cl = c - group * g.Cg;
    acc_t acc = 0;
    for (int64_t kk = 0; kk < g.Kg; ++kk) {
      const int64_t k = group * g.Kg + kk;
      const scalar_t* gzk = gz + ((n * g.K + k) * g.OH) * g.OW;
      const scalar_t* wk = w + ((k * g.Cg + cl) * g.KH) * g.KW;
      for (int64_t r = 0; r < g.KH; ++r) {
        const int64_t th = ih + g.ph - r * g.dh;  // = oh * sh
        if (th < 0 || th % g.sh != 0) continue;
        const int64_t oh = th / g.sh;
        if (oh >= g.OH) continue;
        for (int64_t s = 0; s < g.KW; ++s) {
          const int64_t tw = iw + g.pw - s * g.dw;  // = ow * sw
          if (tw < 0 || tw % g.sw != 0) continue;
          const int64_t ow = tw / g.sw;
          if (ow >= g.OW) continue;
          acc += static_cast<acc_t>(gzk[oh * g.OW + ow]) * static_cast<acc_t>(wk[r * g.KW + s]);
        }
      }
    }
    grad_x[i] = static_cast<scalar_t>(acc);
  }
}

// grad_w[k, c, r, s] = sum over (n, oh, ow) of gz[n, k, oh, ow] * x[n, group*Cg + c, ih, iw]: one block per
// weight element, the threads split (n, oh, ow) and a fixed-order reduction combines them.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    conv2d_grad_weight_kernel(const scalar_t* __restrict__ gz, const scalar_t* __restrict__ x,
                              scalar_t* __restrict__ grad_w, ConvShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const int64_t count = g.N * g.OH * g.OW;
  for (int64_t e = blockIdx.x; e < total; e += gridDim.x) {
    const int64_t s = e % g.KW;
    const int64_t r = (e / g.KW) % g.KH;
    const int64_t cl = (e / (g.KW * g.KH)) % g.Cg;
    const int64_t k = e / (g.KW * g.KH * g.Cg);
    const int64_t c = (k / g.Kg) * g.Cg + cl;
    acc_t acc = 0;
    for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
      const int64_t ow = j % g.OW;
      const int64_t oh = (j / g.OW) % g.OH;
      const int64_t n = j / (g.OW * g.OH);
      const int64_t ih = oh * g.sh - g.ph + r * g.dh;
      const int64_t iw = ow * g.sw - g.pw + s * g.dw;
      if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
      acc += static_cast<acc_t>(gz[((n * g.K + k) * g.OH + oh) * g.OW + ow]) *
             static_cast<acc_t>(x[((n * g.C + c) * g.H + ih) * g.W + iw]);
    }
    acc = block_reduce_sum(acc, smem);
    if (threadIdx.x == 0) grad_w[e] = static_cast<scalar_t>(acc);
  }
}

// act(conv(x, w) + bias) into a new NCHW-contiguous tensor; x and w NCHW-contiguous, b contiguous or undefined.
at::Tensor conv2d_forward_nchw(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const ConvShape& g,
                               Activation act, const ActivationParams& params) {
  at::Tensor out = at::empty({g.N, g.K, g.OH, g.OW}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = current_stream();
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_conv2d_cuda", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation kAct = decltype(tag)::value;
      launch<conv2d_forward_kernel<scalar_t, kAct>>(
          grid_size(total), kThreads, 0, stream, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), g, total, params);
    });
  });
  return out;
}

// An NCHW-contiguous result in the memory format the caller asked for.
at::Tensor in_format(const at::Tensor& t, at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast ? t.contiguous(fmt) : t;
}

at::Tensor conv2d_forward(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                          c10::string_view activation, double alpha, double beta) {
  constexpr const char* op = "conv2d";
  const ConvShape g = check_conv_args(x_in, weight, bias, stride, padding, dilation, groups, op, kDeviceType);
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, op);
  const DeviceGuard guard(x_in.device());
  const auto fmt = x_in.suggest_memory_format();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  return in_format(conv2d_forward_nchw(x, w, b, g, act, params), fmt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out_in, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups, c10::string_view activation, double alpha,
    double beta, std::array<bool, 3> output_mask) {
  constexpr const char* op = "conv2d_backward";
  const ConvShape g = check_conv_args(x_in, weight, bias, stride, padding, dilation, groups, op, kDeviceType);
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, op);
  const std::array<int64_t, 4> out_shape{g.N, g.K, g.OH, g.OW};
  check_output_like(x_in, grad_out_in, "grad_out", out_shape, op);
  check_saved_output(x_in, out_in, grad_needs_output(act), activation, out_shape, op);
  const bool with_bias = has_bias(bias);
  const DeviceGuard guard(x_in.device());
  const auto fmt = x_in.suggest_memory_format();
  // x, weight and bias are read only where needed: autograd passes expanded stand-ins for the others.
  const bool recompute = grad_needs_preactivation(act);
  const at::Tensor x = output_mask[1] || recompute ? x_in.contiguous() : at::Tensor();
  const at::Tensor w = output_mask[0] || recompute ? weight.contiguous() : at::Tensor();
  const at::Tensor b = with_bias && recompute ? bias->contiguous() : at::Tensor();
  const at::Tensor grad_out = grad_out_in.contiguous();

  // gz = grad_out * act'(saved), NCHW-contiguous.
  at::Tensor gz = grad_out;
  if (act != Activation::None && grad_out.numel() > 0) {
    const at::Tensor saved =
        recompute ? conv2d_forward_nchw(x, w, b, g, Activation::None, params) : out_in->contiguous();
    gz = activation_grad_cuda(grad_out, saved, act, params);
  }

  const auto stream = current_stream();
  at::Tensor grad_x, grad_w, grad_b;
  DLK_DISPATCH_FLOAT_TYPES(x_in.scalar_type(), "dlkernels_conv2d_backward_cuda", [&] {
    if (output_mask[0]) {
      grad_x = at::empty({g.N, g.C, g.H, g.W}, x_in.options().memory_format(at::MemoryFormat::Contiguous));
      const int64_t total = grad_x.numel();
      if (total > 0) {
        launch<conv2d_grad_input_kernel<scalar_t>>(grid_size(total), kThreads, 0, stream, gz.const_data_ptr<scalar_t>(),
                                                   w.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), g,
                                                   total);
      }
      grad_x = in_format(grad_x, fmt);
    }
    if (output_mask[1]) {
      grad_w = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
      const int64_t total = grad_w.numel();
      if (total > 0) {  // an empty batch gives zeros: every block sums nothing
        launch<conv2d_grad_weight_kernel<scalar_t>>(grid_size_blocks(total), kThreads, 0, stream,
                                                    gz.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                                    grad_w.mutable_data_ptr<scalar_t>(), g, total);
      }
    }
  });
  if (output_mask[2] && with_bias) grad_b = channel_sum_cuda(gz, g.N, g.K, g.OH * g.OW);
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace cuda
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(DLK_CUDA_NAMESPACE, DLK_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d", &dlkernels::cuda::conv2d_forward);
  m.impl("conv2d_backward", &dlkernels::cuda::conv2d_backward);
}
