// Argument checks shared by every kernel: the only checks of the native path (dlkernels.ops calls the op
// without checking first). Errors name the argument and raise what Python would: TORCH_CHECK_TYPE a
// TypeError (wrong dtype), TORCH_CHECK_VALUE a ValueError (wrong device, rank, shape or value).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

namespace dlkernels {

inline void check_floating(const at::Tensor& t, const char* arg, const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "dlkernels.", op, ": expected '", arg,
                   "' to be a floating point tensor, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* arg, const char* op) {
  TORCH_CHECK_VALUE(t.dim() == dim, "dlkernels.", op, ": expected '", arg, "' to have ", dim, " dimensions, got ",
                    t.dim(), " (shape ", t.sizes(), ")");
}

// `other` must live on the same device and have the same dtype as `ref`.
inline void check_same_device_dtype(const at::Tensor& ref, const char* ref_arg, const at::Tensor& other,
                                    const char* arg, const char* op) {
  TORCH_CHECK_VALUE(other.device() == ref.device(), "dlkernels.", op, ": expected '", arg, "' on ", ref.device(),
                    " like '", ref_arg, "', got ", other.device());
  TORCH_CHECK_TYPE(other.scalar_type() == ref.scalar_type(), "dlkernels.", op, ": expected '", arg, "' of dtype ",
                   ref.scalar_type(), " like '", ref_arg, "', got ", other.scalar_type());
}

inline void check_pair(c10::IntArrayRef values, const char* arg, const char* op, int64_t min_value) {
  TORCH_CHECK_VALUE(values.size() == 2, "dlkernels.", op, ": expected '", arg, "' to have 2 values, got ",
                    values.size());
  TORCH_CHECK_VALUE(values[0] >= min_value && values[1] >= min_value, "dlkernels.", op, ": expected '", arg,
                    "' to be >= ", min_value, " (every value), got ", values);
}

// x of conv2d and max_pool2d: 4-D (dlkernels.ops adds the batch dimension of a 3-D, unbatched x).
inline void check_spatial_input(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.dim() == 4, "dlkernels.", op, ": expected 'x' to be 3-D (C, H, W) (unbatched, through ",
                    "dlkernels.ops) or 4-D (N, C, H, W), got shape ", t.sizes());
}

}  // namespace dlkernels
