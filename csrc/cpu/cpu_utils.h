// Small helpers shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "common/activation.h"
#include "cpu/memory.h"

namespace dlkernels {

// A contiguous (NCHW for 4-D) copy in the accumulation dtype; no copy at all when t already is one. The
// kernels convert half types once up front so their inner loops only see float or double.
inline at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc_type) {
  if (t.scalar_type() == acc_type && t.is_contiguous()) return t;  // the common case, without a dispatched op
  return t.contiguous().to(acc_type);
}

// grad_out * act'(saved), the first step of every backward. For relu it is a select, as torch's
// threshold_backward (0 where the output is <= 0, grad_out elsewhere), written so that both operands are
// loaded unconditionally: GCC then vectorises it, where the product with a 0/1 factor stays a branch per
// element (mispredicted half the time on random signs).
template <Activation A, typename T>
inline T grad_times(T grad_out, T saved, const ActivationParams& p) {
  if constexpr (A == Activation::ReLU) {
    return saved <= T(0) ? T(0) : grad_out;
  } else if constexpr (A == Activation::ReLU6) {  // as hardtanh_backward, a select too (NaN passes)
    return saved <= T(0) || saved >= T(6) ? T(0) : grad_out;
  } else {
    return grad_out * ActivationFn<A>::grad(saved, p);
  }
}

// Runs fn(i0, i1, buf) over [0, n) in parallel, each thread with a zeroed scratch buffer of `scratch`
// elements (zeroed once: the direct convolution kernels only overwrite the image positions of their padded
// buffers, so the padding stays zero). The buffer is the thread's scratch slot 3, reused from call to call:
// fresh memory of a few hundred KiB (a padded 3-channel image) faulted in page by page on every call.
// `work`: the cost of one item in multiply-adds, to keep small problems on one thread.
template <typename T, typename Fn>
void parallel_items(int64_t n, int64_t scratch, int64_t work, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work));
  at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    const cpu::Scratch buf(3, sizeof(T) * static_cast<size_t>(scratch));
    T* p = static_cast<T*>(buf.get());
    std::fill_n(p, scratch, T(0));
    fn(i0, i1, p);
  });
}

}  // namespace dlkernels
