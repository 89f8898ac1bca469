// The run-time choice of the vector activation kernels (activation_span.h).
#include "cpu/activation_span.h"

#include "cpu/activation_span_x86.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

bool activation_span_f32(Activation act, float* y, int64_t rows, int64_t n, int64_t ld, const ActivationParams& p) {
#if defined(__x86_64__)
  static const ActivationSpanKernels* const kernels = cpu_isa() == Isa::Avx512 ? &activation_span_kernels_avx512()
                                                      : cpu_isa() == Isa::Avx2 ? &activation_span_kernels_avx2()
                                                                               : nullptr;
  const ActivationSpanFn fn = kernels ? kernels->fn[static_cast<int>(act)] : nullptr;
  if (fn) {
    fn(y, rows, n, ld, static_cast<float>(p.alpha), static_cast<float>(p.beta));
    return true;
  }
#else
  (void)act, (void)y, (void)rows, (void)n, (void)ld, (void)p;
#endif
  return false;
}

}  // namespace cpu
}  // namespace dlkernels
