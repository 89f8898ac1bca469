// The linear_act CPU kernels (linear_act_cpu.cpp), which conv2d_cpu.cpp also runs for the 1x1 convolutions
// of 1x1 images: a linear layer over the batch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace dlkernels {
namespace cpu {

// linear_act's forward. The activation runs in the GEMM's epilogue, on each finished tile: in float (and for
// the half types, which accumulate in float) through the vector kernels of activation_span.h, as in conv2d
// and conv2d_maxpool. With `vectorised_activation`, gelu, gelu_tanh, silu, sigmoid, tanh and elu on float and
// double outputs are instead left out of the epilogue and applied by PyTorch's vectorised in-place op to the
// finished output: for these its kernels, one more pass over the output included, take less time than ours in
// the epilogue (mish's take five times ours). conv2d's 1x1 images pass false: conv2d applies every activation
// as conv2d_maxpool does, so that the block stays bit for bit conv2d followed by max_pool2d.
at::Tensor linear_act_forward_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   c10::string_view activation, double alpha, double beta, bool vectorised_activation);
at::Tensor linear_act_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              c10::string_view activation, double alpha, double beta);

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const at::Tensor& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   const std::optional<at::Tensor>& out,
                                                                   c10::string_view activation, double alpha,
                                                                   double beta, std::array<bool, 3> output_mask);

}  // namespace cpu
}  // namespace dlkernels
