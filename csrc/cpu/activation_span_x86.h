// The x86 kernels of activation_span.h (activation_span_x86.cpp, AVX-512 and AVX2+FMA intrinsics): one function per
// activation and ISA, which applies it in place to a tile of floats (rows of a given stride).
#pragma once

#include <cstdint>

#include "common/activation.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

#if defined(__x86_64__)
// y[r * ld + i] = act(y[r * ld + i]) for r < rows, i < n; alpha, beta: the activation's parameters
// (ActivationParams).
using ActivationSpanFn = void (*)(float* y, int64_t rows, int64_t n, int64_t ld, float alpha, float beta);

// The kernels of one ISA, indexed by Activation (null for None and ReLU, which the GEMM epilogue applies).
struct ActivationSpanKernels {
  ActivationSpanFn fn[kNumActivations];
};

DLK_INTERNAL const ActivationSpanKernels& activation_span_kernels_avx512();
DLK_INTERNAL const ActivationSpanKernels& activation_span_kernels_avx2();
#endif

}  // namespace cpu
}  // namespace dlkernels
