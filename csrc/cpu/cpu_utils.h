// Small helpers shared by the CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/activation.h"

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

}  // namespace dlkernels
