// Run-time ISA detection (cpu_isa, isa_name) and zero_fill: see simd.h.
#include "cpu/simd.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

namespace dlkernels {
namespace cpu {

namespace {

Isa detect_isa() {
  Isa best = Isa::Base;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc also checks that the OS saves the ymm/zmm registers (XGETBV) before reporting these.
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
  if (best == Isa::Avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    best = Isa::Avx512;
  }
#endif
  if (const char* env = std::getenv("DLKERNELS_CPU_ISA")) {
    const std::string want(env);
    Isa cap = best;
    if (want == "base") cap = Isa::Base;
    else if (want == "avx2") cap = Isa::Avx2;
    else if (want == "avx512") cap = Isa::Avx512;
    else TORCH_WARN("dlkernels: ignoring DLKERNELS_CPU_ISA=", want, " (expected base, avx2 or avx512)");
    best = static_cast<int>(cap) < static_cast<int>(best) ? cap : best;  // can only lower it
  }
  return best;
}

#if defined(__x86_64__)
DLK_TARGET_AVX2 void zero_fill_avx2(char* p, size_t bytes) {
  const __m256i z = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + i), z);
  for (; i < bytes; ++i) p[i] = 0;
}
#endif

}  // namespace

Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "base";
  }
}

void zero_fill(void* p, size_t bytes) {
#if defined(__x86_64__)
  if (cpu_isa() != Isa::Base) return zero_fill_avx2(static_cast<char*>(p), bytes);
#endif
  std::memset(p, 0, bytes);
}

}  // namespace cpu
}  // namespace dlkernels
