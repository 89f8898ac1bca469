// dlkernels._cuda_emu: the CPU emulator of the CUDA kernels, a test tool. Importing it defines the op
// namespace dlkernels_cuda_emu (the schemas of dlkernels, implemented by csrc/cuda/*.cu compiled for the
// emulator, on CPU tensors) and dlkernels_cuda_emu_probe (csrc/cuda/ptx_probe_cuda.cu); the functions below
// set the schedule and the checked mode and read the counters.
#include <torch/extension.h>
#include <torch/library.h>

#include "common/schemas.h"
#include "cuda_emu/emu_internal.h"
#include "cuda_emu/faults.h"

TORCH_LIBRARY(dlkernels_cuda_emu, m) { dlkernels::define_schemas(m); }

namespace {

namespace emu = dlkernels::emu;

pybind11::dict counters() {
  pybind11::dict result;
  for (const auto& [kernel, c] : emu::counters_snapshot()) {
    pybind11::dict d;
    d["launches"] = c.launches;
    d["blocks"] = c.blocks;
    d["barriers"] = c.barriers;
    d["mma"] = c.mma;
    d["ldmatrix"] = c.ldmatrix;
    d["ldmatrix_wavefronts"] = c.ldmatrix_wavefronts;
    d["ldmatrix_ideal_wavefronts"] = c.ldmatrix_ideal_wavefronts;
    d["cp_async"] = c.cp_async;
    d["cp_async_wavefronts"] = c.cp_async_wavefronts;
    d["cp_async_ideal_wavefronts"] = c.cp_async_ideal_wavefronts;
    d["cp_async_global_sectors"] = c.cp_async_global_sectors;
    d["cp_async_global_bytes"] = c.cp_async_global_bytes;
    result[pybind11::str(kernel)] = d;
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "The CPU emulator of the dlkernels CUDA kernels (a test tool): see dlkernels.cuda_emu";
  m.def(
      "set_schedule",
      [](const std::string& mode, uint64_t seed) {
        emu::Schedule s;
        if (mode == "in_order") {
          s = emu::Schedule::kInOrder;
        } else if (mode == "reversed") {
          s = emu::Schedule::kReversed;
        } else if (mode == "random") {
          s = emu::Schedule::kRandom;
        } else {
          throw pybind11::value_error("schedule must be in_order, reversed or random, got '" + mode + "'");
        }
        emu::set_schedule(s, seed);
      },
      pybind11::arg("mode"), pybind11::arg("seed") = 0,
      "The order in which the threads of a block run between two synchronisation points");
  m.def("schedule", [] {
    const char* names[] = {"in_order", "reversed", "random"};
    return pybind11::make_tuple(names[static_cast<int>(emu::schedule())], emu::schedule_seed());
  });
  m.def("set_checked", &emu::set_checked,
        "Guard bands around every CPU tensor allocated from now on, checked after each launch");
  m.def("checked", &emu::checked);
  m.def("counters", &counters, "Per kernel: launches, blocks, barriers, and the PTX counters");
  m.def("reset_counters", &emu::reset_counters);
  m.def("run_fault", &dlkernels::cuda::run_fault, "Runs one of the faulty test kernels (csrc/cuda_emu/faults.cpp)");
}
