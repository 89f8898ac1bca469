// The schemas of every op of dlkernels, defined once for each namespace that implements them: dlkernels
// (csrc/registration.cpp) and the CUDA emulator's dlkernels_cuda_emu (csrc/cuda_emu/module.cpp).
#pragma once

#include <torch/library.h>

namespace dlkernels {

inline void define_schemas(torch::Library& m) {
  // y = act(x @ weight^T + bias) over any leading dims of x.
  // alpha, beta: the activation's parameters (leaky_relu: negative_slope; hardtanh: min_val, max_val; elu:
  // alpha; relu6: 0, 6), ignored by the activations without any.
  m.def("linear_act(Tensor x, Tensor weight, Tensor? bias, str activation, float alpha, float beta) -> Tensor");
  // Gradients of linear_act from its output (the pre-activation is recomputed where the activation needs
  // it). output_mask selects (grad_x, grad_weight, grad_bias); unselected results are undefined (None).
  // `out` is needed only by the activations whose derivative is read from it (grad_needs_output); x is read
  // only for grad_weight or a recomputation, weight only for grad_x or a recomputation, bias only for a
  // recomputation (autograd passes one-element expanded stand-ins for the others).
  m.def(
      "linear_act_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? out, str activation, "
      "float alpha, float beta, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // NCHW convolution with symmetric padding; asymmetric "same" padding is applied by the Python wrapper.
  m.def(
      "conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, str activation, float alpha, float beta) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? out, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, str activation, float alpha, float beta, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");

  // Max pooling. The plain form writes no indices; indices are flat offsets into each (H, W) input plane,
  // as PyTorch returns them.
  m.def(
      "max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> Tensor");
  m.def(
      "max_pool2d_with_indices(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_out, Tensor x, Tensor indices, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");

  // The fused block max_pool2d(act(conv2d(x))): the conv's arguments, then the pooling's (no dilation). Returns
  // the pooled output and, for the backward, the position of each output's maximum inside its window
  // ((h - h0) * pool_kernel_size[1] + (w - w0) from the window's corner (h0, w0), padding included), int8
  // for windows of up to 128 positions, int32 otherwise (common/op_args.h, pool_index_dtype).
  m.def(
      "conv2d_maxpool(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, str activation, float alpha, float beta, int[2] pool_kernel_size, int[2] pool_stride, "
      "int[2] pool_padding, bool pool_ceil_mode) -> (Tensor, Tensor)");
  // Its gradients: grad_out routed to the window maxima through act', then the conv's backward. `out` (the
  // pooled output) is needed by the activations whose derivative is read from it, as for conv2d_backward.
  m.def(
      "conv2d_maxpool_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? out, Tensor index, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, str activation, float alpha, float beta, "
      "int[2] pool_kernel_size, int[2] pool_stride, int[2] pool_padding, bool pool_ceil_mode, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}

}  // namespace dlkernels
