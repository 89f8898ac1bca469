// Small helpers shared by the CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/activation.h"

namespace dlkernels {

namespace cpu {
// Asks Linux to back the whole 2 MiB pages inside [data, data + bytes) with transparent huge pages, for
// buffers of 8 MiB and more, unless DLKERNELS_CPU_HUGE_PAGES=0; does nothing elsewhere.
void advise_huge_pages(void* data, size_t bytes);

// 64-byte aligned scratch memory of at least `bytes` bytes, for the lifetime of this object. Each thread
// keeps one buffer per slot (0 or 1) of up to 64 MiB and reuses it from call to call: fresh memory takes a
// page fault per page on first touch, which for the packed weights of a 3x3 conv over 512 channels (9 MiB)
// costs more than the GEMM itself at batch 1. Larger requests, and a slot already in use on this thread,
// get memory of their own, freed on destruction.
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

// at::empty for a large buffer the kernel is about to write in full: the first write to each page of fresh
// memory faults, and with 4 KiB pages those faults cost more than the kernel itself for bandwidth-bound
// ops (max_pool2d 2x2 over 64x64x112x112 on the development VM: about 1.5 us per page, 41 ms per call
// without the advice, 11-13 ms with it). Advised huge pages take one fault per 2 MiB. Every byte gets
// written, so the larger pages waste no memory. DLKERNELS_CPU_HUGE_PAGES=0 turns the advice off.
at::Tensor empty_output(c10::IntArrayRef sizes, const at::TensorOptions& options);

// A contiguous (NCHW for 4-D) copy in the accumulation dtype; no copy at all when t already is one. The
// kernels convert half types once up front so their inner loops only see float or double.
inline at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc_type) { return t.contiguous().to(acc_type); }

// grad_out * act'(saved), the first step of every backward. For relu it is a select, as torch's
// threshold_backward (0 where the output is <= 0, grad_out elsewhere), written so that both operands are
// loaded unconditionally: GCC then vectorises it, where the product with a 0/1 factor stays a branch per
// element (mispredicted half the time on random signs).
template <Activation A, typename T>
inline T grad_times(T grad_out, T saved) {
  if constexpr (A == Activation::ReLU) {
    return saved <= T(0) ? T(0) : grad_out;
  } else {
    return grad_out * ActivationFn<A>::grad(saved);
  }
}

}  // namespace dlkernels
