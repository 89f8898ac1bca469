// MaxPool2d on CUDA: forward (with or without indices) and backward, NCHW and channels_last; the op-level
// glue (checks, allocation, the choice of kernel). The kernels and their semantics (PyTorch's, bit-exact) are
// in cuda/max_pool2d_kernels.cuh. Results come in x.suggest_memory_format().
//
// The 16-byte kernels run where their vectors are whole and aligned: channels_last with C a multiple of the
// lanes (16 bytes of elements), NCHW forwards with OW a multiple of the lanes; the scalar kernels elsewhere.
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
#include "cuda/max_pool2d_kernels.cuh"

namespace dlkernels {
namespace cuda {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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
    constexpr int L = pool::Pack<scalar_t>::kLanes;
    const bool cl = fmt == at::MemoryFormat::ChannelsLast;
    if (cl && g.C % L == 0 && aligned16(src)) {
      launch<pool::max_pool2d_forward_nhwc_vec_kernel<scalar_t, WithIndices>>(grid_size(total / L), kThreads, 0, stream,
                                                                              src, dst, idx, g, total / L);
    } else if (!cl && g.OW % L == 0) {
      launch<pool::max_pool2d_forward_nchw_vec_kernel<scalar_t, WithIndices>>(grid_size(total / L), kThreads, 0, stream,
                                                                              src, dst, idx, g, total / L);
    } else {
      dispatch_bool(cl, [&](auto cl_tag) {
        launch<pool::max_pool2d_forward_kernel<scalar_t, WithIndices, decltype(cl_tag)::value>>(
            grid_size(total), kThreads, 0, stream, src, dst, idx, g, total);
      });
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
    constexpr int L = pool::Pack<scalar_t>::kLanes;
    const bool cl = fmt == at::MemoryFormat::ChannelsLast;
    if (cl && g.C % L == 0 && aligned16(go) && aligned16(id)) {
      launch<pool::max_pool2d_backward_nhwc_vec_kernel<scalar_t>>(grid_size(total / L), kThreads, 0, stream, go, id, gi,
                                                                  g, total / L);
    } else {
      dispatch_bool(cl, [&](auto cl_tag) {
        launch<pool::max_pool2d_backward_kernel<scalar_t, decltype(cl_tag)::value>>(grid_size(total), kThreads, 0,
                                                                                    stream, go, id, gi, g, total);
      });
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
