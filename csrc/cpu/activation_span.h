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

// y[i] = act(y[i]) for i < n by the vector kernel of this CPU (cpu_isa()); false, and nothing done, where there is
// none (the portable ISA, or None and ReLU, which the GEMM epilogue applies itself).
bool activation_span_f32(Activation act, float* y, int64_t n, const ActivationParams& p);

// y[i] = A(y[i]) for i < n: activation_span_f32 for float, where it applies; ActivationFn<A> per element otherwise.
template <Activation A, typename T>
void activation_span(T* y, int64_t n, const ActivationParams& p) {
  if constexpr (A == Activation::None) return;
  if constexpr (std::is_same_v<T, float>) {
    if (activation_span_f32(A, y, n, p)) return;
  }
  for (int64_t i = 0; i < n; ++i) y[i] = ActivationFn<A>::forward(y[i], p);
}

}  // namespace cpu
}  // namespace dlkernels
