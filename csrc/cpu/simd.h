// Run-time ISA dispatch for the CPU kernels.
//
// The package is built for the baseline x86-64 ISA so that one wheel runs everywhere (never -march=native).
// The hot loops exist as functions carrying __attribute__((target(...))) (AVX-512, AVX2+FMA), written with
// intrinsics in the *_x86.cpp files, next to a portable version in the op's own file; which one runs is
// decided once, at run time, from what the CPU reports (cpu_isa()). The op files keep the tensor glue
// (checks, allocation, dispatch) and call the x86 kernels through tables or functions their *_x86.h declares.
//
// Why intrinsics and not one template over GCC vector extensions compiled per target: GCC 12 lowers the
// vector-extension compares and selects of such a template to scalar code before it is inlined into the
// AVX-512 wrapper, and its SLP pass turns a run of broadcasts into a vector load plus two shuffles each.
// Plain arithmetic on vector extensions is fine, which is what the portable GEMM kernel uses.
//
// Results are deterministic for a given ISA; they may differ in the last bits between ISAs (FMA or not).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

// GCC notes that passing vectors by value changes the ABI outside a target that has them; our vector
// helpers are always inlined.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12 reports its own _mm512_undefined_*() placeholders inside AVX-512 intrinsics as (maybe) used
// uninitialised when those intrinsics are inlined: false positives in the compiler's headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define DLK_ALWAYS_INLINE inline __attribute__((always_inline))
// The ISA sets of the wrappers (AMD Zen 4 and Intel since Skylake-SP have all of the first).
#define DLK_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"), flatten))
#define DLK_TARGET_AVX2 __attribute__((target("avx2,fma"), flatten))
// Functions one translation unit of the library calls in another (the glue of an op calls the ISA kernels
// of its *_x86.cpp file): hidden, so the call is a direct one, as within one file, not one through the PLT.
#define DLK_INTERNAL __attribute__((visibility("hidden")))

namespace dlkernels {
namespace cpu {

enum class Isa { Base = 0, Avx2 = 1, Avx512 = 2 };

// The best ISA this CPU supports, detected once (simd.cpp). The environment variable DLKERNELS_CPU_ISA (base,
// avx2, avx512) can lower it, which is how the fallback paths are tested on a machine that has AVX-512.
Isa cpu_isa();
// "avx512", "avx2" or "base", as DLKERNELS_CPU_ISA spells them (what `python -m dlkernels info` shows).
const char* isa_name(Isa isa);

// The kernel set for cpu_isa() among one per level: the AVX-512 and AVX2 sets from an x86 file's getters
// (DLK_X86_KERNELS(getter): null where x86 code is not built) or the portable `base`.
template <typename K>
const K& kernels_for_isa(const K& base, const K& (*avx512)(), const K& (*avx2)()) {
  switch (cpu_isa()) {
    case Isa::Avx512: return avx512 ? avx512() : base;
    case Isa::Avx2: return avx2 ? avx2() : base;
    default: return base;
  }
}
#if defined(__x86_64__)
#define DLK_X86_KERNELS(getter) (getter)
#else
#define DLK_X86_KERNELS(getter) nullptr
#endif

// Zeroes `bytes` bytes with plain vector stores. memset / std::fill of a large freshly allocated buffer
// goes to glibc's `rep stosb`, and the page faults of new memory taken inside it cost more than inside
// ordinary stores (profiled in max_pool2d's backward).
void zero_fill(void* p, size_t bytes);

// dst[0, n) = src[0, n) (src null: zeros), n small: copies of fixed sizes (a few vector moves), not a library
// call per run (an output row of im2col, the padding of a Winograd tile row).
template <typename T>
DLK_ALWAYS_INLINE void copy_short(const T* src, int64_t n, T* dst) {
  constexpr T zeros[8] = {};
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    std::memcpy(dst + t, src ? src + t : zeros, 8 * sizeof(T));
    // GCC's -O3 turns this loop back into one memcpy / memset call of n / 8 * 8 elements (loop distribution); an
    // empty statement that may touch memory keeps the moves in line.
    __asm__("" : : "r"(dst) : "memory");
  }
  if (t + 4 <= n) std::memcpy(dst + t, src ? src + t : zeros, 4 * sizeof(T)), t += 4;
  if (t + 2 <= n) std::memcpy(dst + t, src ? src + t : zeros, 2 * sizeof(T)), t += 2;
  if (t < n) dst[t] = src ? src[t] : T(0);
}

// GCC vector of `Bytes / sizeof(T)` lanes, for the portable kernels.
template <typename T, int Bytes>
struct VecType;
#define DLK_VEC_TYPE(T, BYTES)                                                                                         \
  template <>                                                                                                          \
  struct VecType<T, BYTES> {                                                                                           \
    typedef T type __attribute__((vector_size(BYTES), aligned(sizeof(T))));                                            \
  };
DLK_VEC_TYPE(float, 16)
DLK_VEC_TYPE(double, 16)
#undef DLK_VEC_TYPE
template <typename T, int Bytes>
using Vec = typename VecType<T, Bytes>::type;

// Unaligned loads and stores through memcpy: a vector type passed as a template argument loses its
// aligned(...) attribute in GCC, so a plain dereference could be compiled as an aligned move.
template <typename V, typename T>
DLK_ALWAYS_INLINE V vload(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
DLK_ALWAYS_INLINE void vstore(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// s - 0 is exactly s for every s (unlike s + 0, which turns -0.0 into +0.0), so the compiler folds the
// subtraction and emits one broadcast.
template <typename V, typename T>
DLK_ALWAYS_INLINE V vbroadcast(T s) {
  return s - V{};
}

}  // namespace cpu
}  // namespace dlkernels
