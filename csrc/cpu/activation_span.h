// Activations applied to runs of finished outputs (the epilogues of conv2d, conv2d_maxpool and linear_act): in
// float through vector kernels (activation_span_x86.cpp) where the CPU has them, else ActivationFn per element.
// An element's result depends on its value alone, not on the run it is part of, so two kernels that apply the
// activation to runs of different lengths agree bit for bit.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/activation.h"

namespace dlkernels {
namespace cpu {

// y[r * ld + i] = act(y[r * ld + i]) for r < rows, i < n (a tile of row stride ld) by the vector kernel of this CPU
// (cpu_isa()); false, and nothing done, where there is none (the portable ISA, or None and ReLU, which the GEMM
// epilogue applies itself).
bool activation_span_f32(Activation act, float* y, int64_t rows, int64_t n, int64_t ld, const ActivationParams& p);

// y[r * ld + i] = A(y[r * ld + i]) for r < rows, i < n: activation_span_f32 for float, where it applies;
// ActivationFn<A> per element otherwise.
template <Activation A, typename T>
void activation_span(T* y, int64_t rows, int64_t n, int64_t ld, const ActivationParams& p) {
  if constexpr (A == Activation::None) return;
  if constexpr (std::is_same_v<T, float>) {
    if (activation_span_f32(A, y, rows, n, ld, p)) return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) y[r * ld + i] = ActivationFn<A>::forward(y[r * ld + i], p);
  }
}

}  // namespace cpu
}  // namespace dlkernels
