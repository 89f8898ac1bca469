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
