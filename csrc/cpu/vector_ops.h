// The vector ops of the direct convolution kernels (conv2d_cpu_depthwise_kernels.h,
// conv2d_cpu_small_kernels.h, conv2d_maxpool_cpu_backward_kernels.h): per ISA, a type per element type with T, V, L
// (lanes), R (vector registers) and zero, set1, load, loadn (the first n lanes, the others 0), store, storen, add,
// fma(a, b, c) = a * b + c, relu and sum. ScalarOps is the portable one-lane set; the x86 sets are each defined in a
// target region of their own, so their functions get that ISA, and the kernels that use them are compiled in the same
// region.
#pragma once

#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

template <typename E>
struct ScalarOps {
  using T = E;
  using V = E;
  static constexpr int L = 1;
  static constexpr int R = 16;  // the accumulators a kernel may keep (the compiler decides)
  static DLK_ALWAYS_INLINE V zero() { return V(0); }
  static DLK_ALWAYS_INLINE V set1(T v) { return v; }
  static DLK_ALWAYS_INLINE V load(const T* p) { return *p; }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return n > 0 ? *p : V(0); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { *p = v; }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) {
    if (n > 0) *p = v;
  }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return a + b; }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return a * b + c; }
  static DLK_ALWAYS_INLINE V relu(V v) { return v < V(0) ? V(0) : v; }  // NaN passes, as torch.relu
  static DLK_ALWAYS_INLINE T sum(V v) { return v; }
};

}  // namespace cpu
}  // namespace dlkernels

#if defined(__x86_64__)
#include <immintrin.h>

namespace dlkernels {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace vo_avx512 {

struct F32 {
  using T = float;
  using V = __m512;
  static constexpr int L = 16;
  static constexpr int R = 32;  // vector registers
  static DLK_ALWAYS_INLINE V zero() { return _mm512_setzero_ps(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm512_set1_ps(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm512_loadu_ps(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static DLK_ALWAYS_INLINE V relu(V v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }  // NaN and -0 pass
  static DLK_ALWAYS_INLINE T sum(V v) { return _mm512_reduce_add_ps(v); }
  static DLK_ALWAYS_INLINE __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1); }
};

struct F64 {
  using T = double;
  using V = __m512d;
  static constexpr int L = 8;
  static constexpr int R = 32;  // vector registers
  static DLK_ALWAYS_INLINE V zero() { return _mm512_setzero_pd(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm512_set1_pd(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm512_loadu_pd(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static DLK_ALWAYS_INLINE V relu(V v) { return _mm512_max_pd(_mm512_setzero_pd(), v); }
  static DLK_ALWAYS_INLINE T sum(V v) { return _mm512_reduce_add_pd(v); }
  static DLK_ALWAYS_INLINE __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1); }
};

}  // namespace vo_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace vo_avx2 {
// loadn / storen take the plain move for a whole vector: AVX2's masked moves (vmaskmov) are slow on some
// cores (a masked store is microcoded on AMD's), and most calls move whole vectors.

struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int L = 8;
  static constexpr int R = 16;  // vector registers
  static DLK_ALWAYS_INLINE V zero() { return _mm256_setzero_ps(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm256_set1_ps(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm256_loadu_ps(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return n >= L ? load(p) : _mm256_maskload_ps(p, mask(n)); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) {
    if (n >= L) return store(p, v);
    _mm256_maskstore_ps(p, mask(n), v);
  }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static DLK_ALWAYS_INLINE V relu(V v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }  // NaN and -0 pass
  static DLK_ALWAYS_INLINE T sum(V v) {
    alignas(32) T t[L];
    _mm256_store_ps(t, v);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
  static DLK_ALWAYS_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
};

struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int L = 4;
  static constexpr int R = 16;  // vector registers
  static DLK_ALWAYS_INLINE V zero() { return _mm256_setzero_pd(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm256_set1_pd(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm256_loadu_pd(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return n >= L ? load(p) : _mm256_maskload_pd(p, mask(n)); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) {
    if (n >= L) return store(p, v);
    _mm256_maskstore_pd(p, mask(n), v);
  }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static DLK_ALWAYS_INLINE V relu(V v) { return _mm256_max_pd(_mm256_setzero_pd(), v); }
  static DLK_ALWAYS_INLINE T sum(V v) {
    alignas(32) T t[L];
    _mm256_store_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
  static DLK_ALWAYS_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
};

}  // namespace vo_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace vo_avx512 {

// 256-bit vectors with AVX-512's masked loads and stores (AVX2's vmaskmov stores are slow on some CPUs), for
// kernels whose vectors run along 8 floats or 4 doubles (conv2d_cpu_grouped_kernels.h).
struct F32x8 : vo_avx2::F32 {
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm256_maskz_loadu_ps(mask(n), p); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm256_mask_storeu_ps(p, mask(n), v); }
  static DLK_ALWAYS_INLINE __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1); }
};
struct F64x4 : vo_avx2::F64 {
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm256_maskz_loadu_pd(mask(n), p); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm256_mask_storeu_pd(p, mask(n), v); }
  static DLK_ALWAYS_INLINE __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1); }
};

}  // namespace vo_avx512
#pragma GCC pop_options

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
