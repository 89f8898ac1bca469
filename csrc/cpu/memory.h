// Memory for the CPU kernels (memory.cpp): outputs on huge pages and per-thread scratch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace dlkernels {

namespace cpu {
// Whether outputs and scratch get the huge-page advice: true unless DLKERNELS_CPU_HUGE_PAGES=0 (read once),
// and false where the advice does not exist (not Linux).
bool huge_pages_enabled();

// Asks Linux to back the whole 2 MiB pages inside [data, data + bytes) with transparent huge pages, for
// buffers of 8 MiB and more, when huge_pages_enabled(); does nothing elsewhere.
void advise_huge_pages(void* data, size_t bytes);

// 64-byte aligned scratch memory of at least `bytes` bytes, for the lifetime of this object. Each thread keeps one
// buffer per slot (0 and 1: the GEMM's packed operands; 2: the conv backward's transformed weights, col2im's
// columns, or a pointwise grad_x^T; 3: the direct convolution kernels' buffers, parallel_items, or col2im's transposed
// gz) of up to 64 MiB and reuses it from call to call: fresh memory takes a page fault per page on first touch, which
// for the packed weights of a 3x3 conv over 512 channels (9 MiB) costs more than the GEMM itself at batch 1. Larger
// requests, and a slot already in use on this thread, get memory of their own, freed on destruction.
class Scratch {
 public:
  Scratch(int slot, size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return data_; }

 private:
  void* data_;
  int slot_;  // -1: owned memory
};
}  // namespace cpu

// An empty CPU tensor (as at::empty) for a buffer the kernel is about to write in full. For a large one: the
// first write to each page of fresh memory faults, and with 4 KiB pages those faults cost more than the kernel
// itself for bandwidth-bound ops (max_pool2d, say; README.md has the measurement). Advised huge pages take one
// fault per 2 MiB. Every byte gets written, so the larger pages waste no memory. DLKERNELS_CPU_HUGE_PAGES=0
// turns the advice off.
at::Tensor empty_output(c10::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace dlkernels
