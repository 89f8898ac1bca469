// The vector activations of activation_span.h: one generic body per activation over a small set of vector ops,
// instantiated for AVX-512 (16 lanes) and AVX2+FMA (8 lanes), the tail as one masked vector (vector_ops.h's loadn /
// storen: zeros in the lanes past it). Each element's result depends on its value only, not on where it lies in the
// run, so the conv's output and the fused conv2d_maxpool's, which apply the activation to runs of different
// lengths, agree bit for bit.
//
// exp and tanh are polynomial approximations within a few units in the last place of float, erf Abramowitz and
// Stegun's 7.1.26 (1.5e-7 absolute; gelu comes out within 5e-7 of float64); the piecewise-linear activations (relu6,
// hardtanh, hardswish, hardsigmoid, leaky_relu) are the scalar ActivationFn's operations in the same order, bit for
// bit. NaN propagates and the infinities give torch's vectorised results (gelu(+-inf) and silu(-inf) are NaN, as
// there).
#include "cpu/activation_span_x86.h"

#if defined(__x86_64__)
#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace act_avx512 {

// vector_ops.h's set (zero, set1, load, loadn, store, storen, add, fma) and what the activations need besides.
struct O : vo_avx512::F32 {
  using M = __mmask16;
  static DLK_ALWAYS_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static DLK_ALWAYS_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static DLK_ALWAYS_INLINE V div(V a, V b) { return _mm512_div_ps(a, b); }
  static DLK_ALWAYS_INLINE V min(V a, V b) { return _mm512_min_ps(a, b); }
  static DLK_ALWAYS_INLINE V max(V a, V b) { return _mm512_max_ps(a, b); }
  static DLK_ALWAYS_INLINE V neg(V a) { return _mm512_xor_ps(a, _mm512_set1_ps(-0.0f)); }
  static DLK_ALWAYS_INLINE V abs(V a) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), a); }
  static DLK_ALWAYS_INLINE V copysign(V mag, V sign) {  // mag >= 0
    return _mm512_or_ps(mag, _mm512_and_ps(sign, _mm512_set1_ps(-0.0f)));
  }
  static DLK_ALWAYS_INLINE V round(V a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // p 2^n for integral n; overflow to inf (exp's top: n = 128 and p < 1 stays finite). exp clamps x to ln(FLT_MAX).
  static constexpr float kExpMax = 88.7228391f;
  static DLK_ALWAYS_INLINE V ldexp(V p, V n) { return _mm512_scalef_ps(p, n); }
  static DLK_ALWAYS_INLINE M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static DLK_ALWAYS_INLINE M gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static DLK_ALWAYS_INLINE V select(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
};

#include "cpu/activation_span_kernels.h"

}  // namespace act_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace act_avx2 {

// vector_ops.h's set (zero, set1, load, loadn, store, storen, add, fma) and what the activations need besides.
struct O : vo_avx2::F32 {
  using M = __m256;
  static DLK_ALWAYS_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static DLK_ALWAYS_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static DLK_ALWAYS_INLINE V div(V a, V b) { return _mm256_div_ps(a, b); }
  static DLK_ALWAYS_INLINE V min(V a, V b) { return _mm256_min_ps(a, b); }
  static DLK_ALWAYS_INLINE V max(V a, V b) { return _mm256_max_ps(a, b); }
  static DLK_ALWAYS_INLINE V neg(V a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
  static DLK_ALWAYS_INLINE V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static DLK_ALWAYS_INLINE V copysign(V mag, V sign) {
    return _mm256_or_ps(mag, _mm256_and_ps(sign, _mm256_set1_ps(-0.0f)));
  }
  static DLK_ALWAYS_INLINE V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p 2^n for integral n in [-126, 127] through the exponent field: exp clamps x to ln(2^127.5), so n <= 127 (exp
  // of x in (88.38, 88.72] comes out at 2.4e38 rather than up to 3.4e38; above it is inf).
  static constexpr float kExpMax = 88.3762626f;
  static DLK_ALWAYS_INLINE V ldexp(V p, V n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
  static DLK_ALWAYS_INLINE M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static DLK_ALWAYS_INLINE M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static DLK_ALWAYS_INLINE V select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
};

#include "cpu/activation_span_kernels.h"

}  // namespace act_avx2
#pragma GCC pop_options

#define DLK_ACTIVATION_SPAN_TABLE(NS, TARGET)                                                                          \
  TARGET const ActivationSpanKernels& activation_span_kernels_##NS() {                                                 \
    static const ActivationSpanKernels table = {                                                                       \
        {nullptr, nullptr, &act_##NS::span<Activation::Sigmoid>, &act_##NS::span<Activation::Tanh>,                    \
         &act_##NS::span<Activation::GELU>, &act_##NS::span<Activation::GELUTanh>, &act_##NS::span<Activation::SiLU>,  \
         &act_##NS::span<Activation::ReLU6>, &act_##NS::span<Activation::Hardtanh>,                                    \
         &act_##NS::span<Activation::Hardswish>, &act_##NS::span<Activation::Hardsigmoid>,                             \
         &act_##NS::span<Activation::LeakyReLU>, &act_##NS::span<Activation::ELU>,                                     \
         &act_##NS::span<Activation::Mish>}};                                                                          \
    return table;                                                                                                      \
  }
DLK_ACTIVATION_SPAN_TABLE(avx512, DLK_TARGET_AVX512)
DLK_ACTIVATION_SPAN_TABLE(avx2, DLK_TARGET_AVX2)
#undef DLK_ACTIVATION_SPAN_TABLE

}  // namespace cpu
}  // namespace dlkernels
#endif  // defined(__x86_64__)
