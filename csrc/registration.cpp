// The only TORCH_LIBRARY(dlkernels, m), with every schema of the package (common/schemas.h). Kernels register per
// device in csrc/cpu/*.cpp and csrc/cuda/*.cu, autograd for every device in csrc/autograd.cpp; the fake kernels are
// registered from dlkernels/contract.py.
//
// Built by setup.py as the Python module dlkernels._C (DLKERNELS_PYTHON_MODULE defined), and by
// CMakeLists.txt as a plain shared library for torch.ops.load_library (no Python involved).
#include <torch/library.h>

#include "common/schemas.h"

TORCH_LIBRARY(dlkernels, m) { dlkernels::define_schemas(m); }

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
