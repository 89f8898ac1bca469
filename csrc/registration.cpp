// The only TORCH_LIBRARY(dlkernels, m): every schema of the package lives here. Kernels register per device
// in csrc/cpu/*.cpp and csrc/cuda/*.cu, autograd for every device in csrc/autograd.cpp; the fake kernels are
// registered from dlkernels/contract.py.
//
// Built by setup.py as the Python module dlkernels._C (DLKERNELS_PYTHON_MODULE defined), and by
// CMakeLists.txt as a plain shared library for torch.ops.load_library (no Python involved).
#include <torch/library.h>

TORCH_LIBRARY(dlkernels, m) {
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
}

#ifdef DLKERNELS_PYTHON_MODULE
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "cpu/memory.h"
#include "cpu/simd.h"
#include "python_api.h"

#ifndef DLKERNELS_TORCH_VERSION
#define DLKERNELS_TORCH_VERSION "unknown"
#endif
#ifndef DLKERNELS_CUDA_VERSION
#define DLKERNELS_CUDA_VERSION ""
#endif
#ifndef DLKERNELS_CUDA_ARCHS
#define DLKERNELS_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "dlkernels compiled kernels: the ops live in torch.ops.dlkernels, this module says how they were built";
  m.def("build_info", [] {
    pybind11::dict info;
    info["torch_version"] = DLKERNELS_TORCH_VERSION;
#ifdef DLKERNELS_WITH_CUDA
    info["with_cuda"] = true;
#else
    info["with_cuda"] = false;
#endif
    info["cuda_version"] = DLKERNELS_CUDA_VERSION;
    info["cuda_archs"] = DLKERNELS_CUDA_ARCHS;
    info["cpp_standard"] = static_cast<long>(__cplusplus);
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    return info;
  });
  m.def("num_threads", [] { return at::get_num_threads(); }, "Threads at::parallel_for uses now");
  m.def("parallel_info", [] { return at::get_parallel_info(); }, "ATen's description of its thread pools");
  m.def(
      "cpu_isa", [] { return std::string(dlkernels::cpu::isa_name(dlkernels::cpu::cpu_isa())); },
      "The instruction set the CPU kernels use: avx512, avx2 or base (DLKERNELS_CPU_ISA can lower it)");
  m.def(
      "huge_pages", [] { return dlkernels::cpu::huge_pages_enabled(); },
      "Whether large CPU outputs get the transparent huge page advice (off with DLKERNELS_CPU_HUGE_PAGES=0)");
  dlkernels::add_python_api(m.ptr());
}
#endif
