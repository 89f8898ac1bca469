// The x86 kernels of the sparse backward of conv2d_maxpool: the loops of conv2d_maxpool_cpu_backward_kernels.h
// over AVX-512 and AVX2+FMA vector ops, each set compiled in a target region of its own (functions defined
// there, templates included, get that ISA), in a namespace of its own.
#include "cpu/conv2d_maxpool_cpu_backward_x86.h"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>

namespace dlkernels {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace sp_avx512 {

struct F32 {
  using T = float;
  using V = __m512;
  static constexpr int L = 16;
  static DLK_ALWAYS_INLINE V zero() { return _mm512_setzero_ps(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm512_set1_ps(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm512_loadu_ps(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static DLK_ALWAYS_INLINE T sum(V v) { return _mm512_reduce_add_ps(v); }
  static DLK_ALWAYS_INLINE __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1); }
};

struct F64 {
  using T = double;
  using V = __m512d;
  static constexpr int L = 8;
  static DLK_ALWAYS_INLINE V zero() { return _mm512_setzero_pd(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm512_set1_pd(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm512_loadu_pd(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static DLK_ALWAYS_INLINE T sum(V v) { return _mm512_reduce_add_pd(v); }
  static DLK_ALWAYS_INLINE __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1); }
};

#include "cpu/conv2d_maxpool_cpu_backward_kernels.h"

template <class VO>
const SparseBlockKernels<typename VO::T>& kernels() {
  static const SparseBlockKernels<typename VO::T> k{sp_gather_lists<VO>, sp_patch_dot<VO>};
  return k;
}

}  // namespace sp_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace sp_avx2 {

struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int L = 8;
  static DLK_ALWAYS_INLINE V zero() { return _mm256_setzero_ps(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm256_set1_ps(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm256_loadu_ps(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
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
  static DLK_ALWAYS_INLINE V zero() { return _mm256_setzero_pd(); }
  static DLK_ALWAYS_INLINE V set1(T v) { return _mm256_set1_pd(v); }
  static DLK_ALWAYS_INLINE V load(const T* p) { return _mm256_loadu_pd(p); }
  static DLK_ALWAYS_INLINE V loadn(const T* p, int n) { return _mm256_maskload_pd(p, mask(n)); }
  static DLK_ALWAYS_INLINE void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static DLK_ALWAYS_INLINE void storen(T* p, V v, int n) { _mm256_maskstore_pd(p, mask(n), v); }
  static DLK_ALWAYS_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static DLK_ALWAYS_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static DLK_ALWAYS_INLINE T sum(V v) {
    alignas(32) T t[L];
    _mm256_store_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
  static DLK_ALWAYS_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
};

#include "cpu/conv2d_maxpool_cpu_backward_kernels.h"

template <class VO>
const SparseBlockKernels<typename VO::T>& kernels() {
  static const SparseBlockKernels<typename VO::T> k{sp_gather_lists<VO>, sp_patch_dot<VO>};
  return k;
}

}  // namespace sp_avx2
#pragma GCC pop_options

const SparseBlockKernels<float>& sparse_block_kernels_f32_avx512() { return sp_avx512::kernels<sp_avx512::F32>(); }
const SparseBlockKernels<double>& sparse_block_kernels_f64_avx512() { return sp_avx512::kernels<sp_avx512::F64>(); }
const SparseBlockKernels<float>& sparse_block_kernels_f32_avx2() { return sp_avx2::kernels<sp_avx2::F32>(); }
const SparseBlockKernels<double>& sparse_block_kernels_f64_avx2() { return sp_avx2::kernels<sp_avx2::F64>(); }

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
