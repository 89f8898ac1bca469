// Small helpers shared by the CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace dlkernels {

// A contiguous (NCHW for 4-D) copy in the accumulation dtype; no copy at all when t already is one. The
// kernels convert half types once up front so their inner loops only see float or double.
inline at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc_type) { return t.contiguous().to(acc_type); }

}  // namespace dlkernels
