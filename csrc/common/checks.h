// Argument checks shared by every kernel. The Python wrapper validates first with the same rules; these
// checks guard direct calls through torch.ops.dlkernels.*.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

namespace dlkernels {

inline void check_floating(const at::Tensor& t, const char* arg, const char* op) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "dlkernels.", op, ": expected '", arg,
              "' to be a floating point tensor, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* arg, const char* op) {
  TORCH_CHECK(t.dim() == dim, "dlkernels.", op, ": expected '", arg, "' to have ", dim, " dimensions, got ", t.dim(),
              " (shape ", t.sizes(), ")");
}

// `other` must live on the same device and have the same dtype as `ref`.
inline void check_same_device_dtype(const at::Tensor& ref, const char* ref_arg, const at::Tensor& other,
                                    const char* arg, const char* op) {
  TORCH_CHECK(other.device() == ref.device(), "dlkernels.", op, ": expected '", arg, "' on ", ref.device(), " like '",
              ref_arg, "', got ", other.device());
  TORCH_CHECK(other.scalar_type() == ref.scalar_type(), "dlkernels.", op, ": expected '", arg, "' of dtype ",
              ref.scalar_type(), " like '", ref_arg, "', got ", other.scalar_type());
}

inline void check_pair(c10::IntArrayRef values, const char* arg, const char* op, int64_t min_value) {
  TORCH_CHECK(values.size() == 2, "dlkernels.", op, ": expected '", arg, "' to have 2 values, got ", values.size());
  TORCH_CHECK(values[0] >= min_value && values[1] >= min_value, "dlkernels.", op, ": expected every value of '", arg,
              "' to be >= ", min_value, ", got ", values);
}

}  // namespace dlkernels
