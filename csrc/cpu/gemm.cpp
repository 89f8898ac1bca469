// The GEMM's portable micro-kernel and the run-time choice of micro-kernel (see gemm.h for the blocking
// around them; the x86 kernels are in gemm_x86.cpp).
#include "cpu/gemm.h"

#include "cpu/gemm_x86.h"

namespace dlkernels {
namespace cpu {

namespace {

// The portable micro-kernel (any CPU; SSE2 on x86-64): GCC vector extensions, 4 rows x 2 vectors of 16 bytes.
template <typename T>
void micro_base(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t ldc, int m, int n, bool load_c,
                const T* bias_m, const T* bias_n, bool relu) {
  using V = Vec<T, 16>;
  constexpr int MR = 4, NV = 2, L = 16 / sizeof(T), NR = NV * L;
  V acc[MR][NV] = {};
  const T* arow[MR];
  for (int i = 0; i < MR; ++i) arow[i] = lda == 0 ? a + i : a + (i < m ? i : 0) * lda;
  const int64_t astep = lda == 0 ? MR : 1;
  for (int64_t k = 0; k < kc; ++k) {
    const V b0 = vload<V>(b + k * NR), b1 = vload<V>(b + k * NR + L);
    for (int i = 0; i < MR; ++i) {
      const V av = vbroadcast<V>(arow[i][k * astep]);
      acc[i][0] += av * b0;
      acc[i][1] += av * b1;
    }
  }
  alignas(64) T tile[MR * NR];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) vstore(tile + i * NR + v * L, acc[i][v]);
  }
  finish_edge_tile(tile, NR, c, ldc, m, n, load_c, bias_m, bias_n, relu);
}

template <typename T>
MicroKernel<T> select_micro_kernel() {
  constexpr bool f32 = sizeof(T) == 4;
#if defined(__x86_64__)
  switch (cpu_isa()) {
    case Isa::Avx512:
      if constexpr (f32) return {8, 32, &micro_f32_avx512, &micro_f32_avx512_half, &micro_f32_avx512_rows};
      else return {8, 16, &micro_f64_avx512, &micro_f64_avx512_half, &micro_f64_avx512_rows};
    case Isa::Avx2:
      if constexpr (f32) return {6, 16, &micro_f32_avx2, &micro_f32_avx2_half, &micro_f32_avx2_rows};
      else return {6, 8, &micro_f64_avx2, &micro_f64_avx2_half, &micro_f64_avx2_rows};
    default: break;
  }
#endif
  return {4, f32 ? 8 : 4, &micro_base<T>, &micro_base<T>};
}

}  // namespace

bool pack_transpose_f32(const float* const* rows, int nrows, int64_t kc, float* dst, int P) {
#if defined(__x86_64__)
  if (cpu_isa() == Isa::Base) return false;
  pack_transpose_f32_avx2(rows, nrows, kc, dst, P);
  return true;
#else
  return false;
#endif
}

bool pack_transpose_ranges_f32(const float* const* rows, const int64_t* lo, const int64_t* hi, int64_t kc, float* dst,
                               int P) {
#if defined(__x86_64__)
  if (cpu_isa() == Isa::Base) return false;
  pack_transpose_ranges_f32_avx2(rows, lo, hi, kc, dst, P);
  return true;
#else
  return false;
#endif
}

template <typename T>
const MicroKernel<T>& micro_kernel() {
  static const MicroKernel<T> k = select_micro_kernel<T>();
  return k;
}
template const MicroKernel<float>& micro_kernel<float>();
template const MicroKernel<double>& micro_kernel<double>();

template <typename T>
const MicroKernel<T>& micro_kernel_for_rows(int64_t M) {
  const MicroKernel<T>& k = micro_kernel<T>();
#if defined(__x86_64__)
  if constexpr (sizeof(T) == 4) {
    static const MicroKernel<T> k10{10, 32, &micro_f32_avx512_m10, &micro_f32_avx512_m10_half,
                                    &micro_f32_avx512_m10_rows};
    const auto padded = [M](int64_t mr) { return (M + mr - 1) / mr * mr; };
    if (k.run == &micro_f32_avx512 && padded(10) < padded(8)) return k10;
  }
#endif
  return k;
}
template const MicroKernel<float>& micro_kernel_for_rows<float>(int64_t);
template const MicroKernel<double>& micro_kernel_for_rows<double>(int64_t);

}  // namespace cpu
}  // namespace dlkernels
