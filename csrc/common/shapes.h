// Output-size formulas. dlkernels/ops.py carries the same formulas for the fake kernels, and a test checks
// that both agree with PyTorch.
#pragma once

#include <cstdint>

#include <c10/util/Exception.h>

namespace dlkernels {

// Floor division, also for a negative numerator (then the size comes out < 1 and the caller rejects it).
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

inline int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  return floor_div(in + 2 * padding - dilation * (kernel - 1) - 1, stride) + 1;
}

// PyTorch's pooling rule: with ceil_mode the last window may hang over the right edge, but it must start
// inside the input or the left padding.
inline int64_t pool_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation,
                                bool ceil_mode) {
  const int64_t span = in + 2 * padding - dilation * (kernel - 1) - 1;
  const int64_t numerator = span + (ceil_mode ? stride - 1 : 0);
  int64_t out = floor_div(numerator, stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + padding) --out;
  return out;
}

}  // namespace dlkernels
