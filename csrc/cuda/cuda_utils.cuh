// Helpers shared by the CUDA kernels of dlkernels: launch sizes, argument checks, a deterministic block
// reduction, and the two pieces of the backward pass that Linear and Conv2d share: the gradient through the
// activation (gz = grad_out * act'(saved)) and the per-channel sum that gives grad_bias.
//
// Everything here is a template or `inline`, so several .cu files can include it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "common/activation.h"
#include "cuda/runtime.cuh"

namespace dlkernels {
namespace cuda {

// Threads per block of the elementwise (grid-stride) kernels and of the block reductions. A power of two.
constexpr int kThreads = 256;
// Upper bound on the blocks of a grid-stride launch; the loops cover whatever is left.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// Blocks for a grid-stride loop over n items with `threads` threads per block (n > 0).
inline unsigned int grid_size(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(blocks, kMaxBlocks)));
}

// Blocks for a grid-stride loop that gives each of n items a whole block (n > 0).
inline unsigned int grid_size_blocks(int64_t n) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(n, kMaxBlocks)));
}

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a template parameter of the kernel f launches.
template <class F>
decltype(auto) dispatch_bool(bool flag, F&& f) {
  if (flag) return f(std::true_type{});
  return f(std::false_type{});
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The dtypes of every CUDA kernel: float32, float64, bfloat16, float16.
#define DLK_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                                                                      \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

// Sum over a block of kThreads threads, in a fixed order (deterministic). `smem` holds kThreads values.
// Every thread gets the result; the trailing barrier lets the caller reuse `smem` at once.
template <typename acc_t>
__device__ __forceinline__ acc_t block_reduce_sum(acc_t v, acc_t* smem) {
  const int tid = threadIdx.x;
  smem[tid] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) smem[tid] += smem[tid + s];
    __syncthreads();
  }
  const acc_t result = smem[0];
  __syncthreads();
  return result;
}

// gz = grad_out * act'(saved), computed in opmath (float for half types).
template <typename scalar_t, Activation A>
__global__ void activation_grad_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ saved,
                                       scalar_t* __restrict__ gz, int64_t n, ActivationParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const acc_t g = static_cast<acc_t>(grad_out[i]);
    const acc_t s = static_cast<acc_t>(saved[i]);
    gz[i] = static_cast<scalar_t>(g * ActivationFn<A>::grad(s, p));
  }
}

// The gradient before the activation, for grad_out and saved of the same shape and dtype, both contiguous in
// the same memory format.
// `saved` is the output or the pre-activation (see grad_needs_output / grad_needs_preactivation). Returns a
// tensor in that format (grad_out itself for "none").
inline at::Tensor activation_grad_cuda(const at::Tensor& grad_out, const at::Tensor& saved, Activation act,
                                       const ActivationParams& params) {
  if (act == Activation::None) return grad_out;
  // In grad_out's memory format: both operands are dense in the same layout, read elementwise.
  at::Tensor gz = at::empty_like(grad_out);
  const int64_t n = gz.numel();
  if (n == 0) return gz;
  const auto stream = current_stream();
  DLK_DISPATCH_FLOAT_TYPES(grad_out.scalar_type(), "dlkernels_activation_grad_cuda", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation kAct = decltype(tag)::value;
      launch<activation_grad_kernel<scalar_t, kAct>>(
          grid_size(n), kThreads, 0, stream, grad_out.const_data_ptr<scalar_t>(), saved.const_data_ptr<scalar_t>(),
          gz.mutable_data_ptr<scalar_t>(), n, params);
    });
  });
  return gz;
}

// out[c] = sum over (o, r) of in[(o * channels + c) * inner + r]: one block per channel, a fixed
// summation order (deterministic), accumulated in opmath.
template <typename scalar_t>
__global__ void channel_sum_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t outer,
                                   int64_t channels, int64_t inner) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const int64_t count = outer * inner;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    acc_t acc = 0;
    for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
      const int64_t o = j / inner;
      const int64_t r = j - o * inner;
      acc += static_cast<acc_t>(in[(o * channels + c) * inner + r]);
    }
    acc = block_reduce_sum(acc, smem);
    if (threadIdx.x == 0) out[c] = static_cast<scalar_t>(acc);
  }
}

// Sums a contiguous tensor viewed as [outer, channels, inner] over outer and inner: grad_bias of Linear
// ([M, N]: outer M, inner 1) and of Conv2d ([N, K, OH*OW]: outer N, inner OH*OW). Returns [channels].
inline at::Tensor channel_sum_cuda(const at::Tensor& t, int64_t outer, int64_t channels, int64_t inner) {
  at::Tensor out = at::empty({channels}, t.options());
  if (channels == 0) return out;
  const auto stream = current_stream();
  DLK_DISPATCH_FLOAT_TYPES(t.scalar_type(), "dlkernels_channel_sum_cuda", [&] {
    launch<channel_sum_kernel<scalar_t>>(grid_size_blocks(channels), kThreads, 0, stream, t.const_data_ptr<scalar_t>(),
                                         out.mutable_data_ptr<scalar_t>(), outer, channels, inner);
  });
  return out;
}

}  // namespace cuda
}  // namespace dlkernels
