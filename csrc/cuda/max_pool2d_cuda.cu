// MaxPool2d on CUDA: forward (with or without indices) and backward, NCHW and channels_last.
//
// Simple, correct kernels: one thread per output element for the forward, one thread per input element for
// the backward (a gather over the windows that can contain it: deterministic, no atomics). The semantics are
// PyTorch's, as in csrc/cpu/max_pool2d_cpu.cpp: the search starts at the first in-bounds position of the
// window with max = -inf, and takes a value when (val > max || isnan(val)); indices are flat offsets
// h*W + w into the input plane; results come in x.suggest_memory_format().
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/op_args.h"
#include "common/shapes.h"
#include "cuda/cuda_utils.cuh"

namespace dlkernels {
namespace cuda {
namespace {

// Element `i` of an [N, C, Hs, Ws] tensor stored contiguously in NCHW (ChannelsLast = false) or NHWC order.
template <bool ChannelsLast>
__device__ __forceinline__ void decode(int64_t i, int64_t C, int64_t Hs, int64_t Ws, int64_t& n, int64_t& c, int64_t& h,
                                       int64_t& w) {
  if (ChannelsLast) {
    c = i % C;
    i /= C;
    w = i % Ws;
    i /= Ws;
    h = i % Hs;
    n = i / Hs;
  } else {
    w = i % Ws;
    i /= Ws;
    h = i % Hs;
    i /= Hs;
    c = i % C;
    n = i / C;
  }
}

// Offset of (n, c, h, w) in an [N, C, Hs, Ws] tensor in the given layout.
template <bool ChannelsLast>
__device__ __forceinline__ int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t Hs,
                                          int64_t Ws) {
  return ChannelsLast ? ((n * Hs + h) * Ws + w) * C + c : ((n * C + c) * Hs + h) * Ws + w;
}

template <typename scalar_t, bool WithIndices, bool ChannelsLast>
__global__ void max_pool2d_forward_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                          int64_t* __restrict__ ind, PoolShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t n, c, oh, ow;
    decode<ChannelsLast>(i, g.C, g.OH, g.OW, n, c, oh, ow);
    int64_t h0 = oh * g.sh - g.ph;
    int64_t w0 = ow * g.sw - g.pw;
    const int64_t h1 = min64(h0 + (g.kh - 1) * g.dh + 1, g.H);
    const int64_t w1 = min64(w0 + (g.kw - 1) * g.dw + 1, g.W);
    while (h0 < 0) h0 += g.dh;
    while (w0 < 0) w0 += g.dw;
    acc_t maxval = -static_cast<acc_t>(INFINITY);  // INFINITY (a float constant) needs no constexpr host call
    int64_t maxidx = h0 * g.W + w0;
    for (int64_t h = h0; h < h1; h += g.dh) {
      for (int64_t w = w0; w < w1; w += g.dw) {
        const acc_t val = static_cast<acc_t>(in[offset<ChannelsLast>(n, c, h, w, g.C, g.H, g.W)]);
        if (val > maxval || val != val) {  // val != val: NaN propagates
          maxval = val;
          maxidx = h * g.W + w;
        }
      }
    }
    // Output element i sits at offset i in the output's layout (the same as the input's).
    out[i] = static_cast<scalar_t>(maxval);
    if (WithIndices) ind[i] = maxidx;
  }
}

// One thread per input element: sums grad_out over the windows that picked it, in output order.
template <typename scalar_t, bool ChannelsLast>
__global__ void max_pool2d_grad_input_kernel(const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ ind,
                                             scalar_t* __restrict__ grad_in, PoolShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t span_h = (g.kh - 1) * g.dh + 1;
  const int64_t span_w = (g.kw - 1) * g.dw + 1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t n, c, h, w;
    decode<ChannelsLast>(i, g.C, g.H, g.W, n, c, h, w);
    // Windows oh whose span [oh*sh - ph, oh*sh - ph + span_h) contains h.
    const int64_t oh0 = (h + g.ph < span_h) ? 0 : (h + g.ph - span_h) / g.sh + 1;
    const int64_t oh1 = min64((h + g.ph) / g.sh + 1, g.OH);
    const int64_t ow0 = (w + g.pw < span_w) ? 0 : (w + g.pw - span_w) / g.sw + 1;
    const int64_t ow1 = min64((w + g.pw) / g.sw + 1, g.OW);
    const int64_t target = h * g.W + w;
    acc_t acc = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t o = offset<ChannelsLast>(n, c, oh, ow, g.C, g.OH, g.OW);
        if (ind[o] == target) acc += static_cast<acc_t>(grad_out[o]);
      }
    }
    grad_in[i] = static_cast<scalar_t>(acc);
  }
}

template <bool WithIndices>
std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_impl(const at::Tensor& x_in, c10::IntArrayRef kernel_size,
                                                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                           c10::IntArrayRef dilation, bool ceil_mode, const char* op) {
  const PoolShape g = check_pool_args(x_in, kernel_size, stride, padding, dilation, ceil_mode, op, kDeviceType);
  const DeviceGuard guard(x_in.device());
  const auto fmt = x_in.suggest_memory_format();
  const at::Tensor x = x_in.contiguous(fmt);
  const auto opts = x.options().memory_format(fmt);
  at::Tensor out = at::empty({g.N, g.C, g.OH, g.OW}, opts);
  at::Tensor ind;
  if (WithIndices) ind = at::empty({g.N, g.C, g.OH, g.OW}, opts.dtype(at::kLong));
  const int64_t total = out.numel();
  if (total == 0) return {out, ind};
  const auto stream = current_stream();
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_max_pool2d_cuda", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    int64_t* idx = WithIndices ? ind.mutable_data_ptr<int64_t>() : nullptr;
    if (fmt == at::MemoryFormat::ChannelsLast) {
      launch<max_pool2d_forward_kernel<scalar_t, WithIndices, true>>(grid_size(total), kThreads, 0, stream, src, dst,
                                                                     idx, g, total);
    } else {
      launch<max_pool2d_forward_kernel<scalar_t, WithIndices, false>>(grid_size(total), kThreads, 0, stream, src, dst,
                                                                      idx, g, total);
    }
  });
  return {out, ind};
}

at::Tensor max_pool2d_forward(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(
      max_pool2d_forward_impl<false>(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d"));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_forward(const at::Tensor& x, c10::IntArrayRef kernel_size,
                                                                   c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                                   c10::IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_forward_impl<true>(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_with_indices");
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_out_in, const at::Tensor& x, const at::Tensor& indices_in,
                               c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "max_pool2d_backward";
  const PoolShape g = check_pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, op, kDeviceType);
  check_pool_backward_args(x, grad_out_in, indices_in, g, op);

  const DeviceGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();
  at::Tensor grad_in = at::empty(x.sizes(), x.options().memory_format(fmt));
  const int64_t total = grad_in.numel();
  if (total == 0) return grad_in;
  const at::Tensor grad_out = grad_out_in.contiguous(fmt);
  const at::Tensor indices = indices_in.contiguous(fmt);
  const auto stream = current_stream();
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_max_pool2d_backward_cuda", [&] {
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const int64_t* id = indices.const_data_ptr<int64_t>();
    scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      launch<max_pool2d_grad_input_kernel<scalar_t, true>>(grid_size(total), kThreads, 0, stream, go, id, gi, g, total);
    } else {
      launch<max_pool2d_grad_input_kernel<scalar_t, false>>(grid_size(total), kThreads, 0, stream, go, id, gi, g,
                                                            total);
    }
  });
  return grad_in;
}

}  // namespace
}  // namespace cuda
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(DLK_CUDA_NAMESPACE, DLK_CUDA_DISPATCH_KEY, m) {
  m.impl("max_pool2d", &dlkernels::cuda::max_pool2d_forward);
  m.impl("max_pool2d_with_indices", &dlkernels::cuda::max_pool2d_with_indices_forward);
  m.impl("max_pool2d_backward", &dlkernels::cuda::max_pool2d_backward);
}
