// The vector activations of activation_span_x86.cpp, generic over a vector-ops set `O` (V, M, L and the
// operations the x86 file's sets define). Included once per ISA, inside that ISA's target region and namespace
// (templates defined there get the ISA); no include guard for that reason.

// exp(x) for the generic bodies below, on a vector-ops set O: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a
// degree-6 polynomial, times 2^n (O::ldexp); +inf above ln(FLT_MAX), NaN stays NaN. 0 below ln(FLT_MIN) instead of
// the subnormals: arithmetic on subnormals takes a microcode assist per operation on x86, which made gelu of large
// negative inputs several times slower.
template <typename O>
DLK_ALWAYS_INLINE typename O::V vexp(typename O::V x) {
  using V = typename O::V;
  const V xc = O::min(O::set1(O::kExpMax), O::max(O::set1(-87.3365479f), x));  // NaN passes (second operand)
  const V n = O::round(O::mul(xc, O::set1(1.44269504088896341f)));
  V r = O::fma(n, O::set1(-0.693359375f), xc);
  r = O::fma(n, O::set1(2.12194440e-4f), r);
  V p = O::set1(1.9875691500e-4f);
  p = O::fma(p, r, O::set1(1.3981999507e-3f));
  p = O::fma(p, r, O::set1(8.3334519073e-3f));
  p = O::fma(p, r, O::set1(4.1665795894e-2f));
  p = O::fma(p, r, O::set1(1.6666665459e-1f));
  p = O::fma(p, r, O::set1(5.0000001201e-1f));
  p = O::fma(p, O::mul(r, r), O::add(r, O::set1(1.0f)));
  const V y = O::select(O::gt(x, O::set1(88.7228391f)), O::set1(__builtin_inff()), O::ldexp(p, n));
  return O::select(O::lt(x, O::set1(-87.3365479f)), O::zero(), y);
}

// tanh(x): x + x^3 P(x^2) below 0.625 in magnitude, else 1 - 2 / (exp(2|x|) + 1), with x's sign.
template <typename O>
DLK_ALWAYS_INLINE typename O::V vtanh(typename O::V x) {
  using V = typename O::V;
  const V a = O::abs(x);
  const V x2 = O::mul(x, x);
  V p = O::set1(-5.70498872745e-3f);
  p = O::fma(p, x2, O::set1(2.06390887954e-2f));
  p = O::fma(p, x2, O::set1(-5.37397155531e-2f));
  p = O::fma(p, x2, O::set1(1.33314422036e-1f));
  p = O::fma(p, x2, O::set1(-3.33332819422e-1f));
  const V small = O::fma(O::mul(p, x2), x, x);
  const V e = vexp<O>(O::add(a, a));
  const V large = O::copysign(O::sub(O::set1(1.0f), O::div(O::set1(2.0f), O::add(e, O::set1(1.0f)))), x);
  return O::select(O::lt(a, O::set1(0.625f)), small, large);
}

// erf(x) = 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p |x|), with x's sign (Abramowitz and Stegun 7.1.26).
template <typename O>
DLK_ALWAYS_INLINE typename O::V verf(typename O::V x) {
  using V = typename O::V;
  const V a = O::min(O::set1(4.0f), O::abs(x));  // erf is 1 in float from 3.92 on; no subnormals further out
  const V t = O::div(O::set1(1.0f), O::fma(O::set1(0.3275911f), a, O::set1(1.0f)));
  V p = O::set1(1.061405429f);
  p = O::fma(p, t, O::set1(-1.453152027f));
  p = O::fma(p, t, O::set1(1.421413741f));
  p = O::fma(p, t, O::set1(-0.284496736f));
  p = O::fma(p, t, O::set1(0.254829592f));
  const V e = vexp<O>(O::neg(O::mul(a, a)));
  return O::copysign(O::sub(O::set1(1.0f), O::mul(O::mul(p, t), e)), x);
}

// cond ? a : b where cond is the comparison; compares are false for NaN, so NaN takes b.
template <typename O>
DLK_ALWAYS_INLINE typename O::V clamp_like_scalar(typename O::V z, typename O::V lo, typename O::V hi) {
  // z < lo ? lo : (z > hi ? hi : z)
  return O::select(O::lt(z, lo), lo, O::select(O::gt(z, hi), hi, z));
}

template <Activation A, typename O>
DLK_ALWAYS_INLINE typename O::V activation_vec(typename O::V z, float alpha, float beta) {
  using V = typename O::V;
  const V one = O::set1(1.0f);
  if constexpr (A == Activation::Sigmoid) {
    return O::div(one, O::add(one, vexp<O>(O::neg(z))));
  } else if constexpr (A == Activation::Tanh) {
    return vtanh<O>(z);
  } else if constexpr (A == Activation::GELU) {  // z * 0.5 * (1 + erf(z / sqrt(2)))
    const V g = O::mul(O::mul(z, O::set1(0.5f)), O::add(one, verf<O>(O::mul(z, O::set1(0.70710678118654752440f)))));
    // NaN at +inf, as torch's vectorised CPU gelu gives (its one-element scalar path gives inf).
    return O::select(O::gt(z, O::set1(3.40282347e38f)), O::set1(__builtin_nanf("")), g);
  } else if constexpr (A == Activation::GELUTanh) {  // 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))
    const V inner =
        O::mul(O::set1(0.79788456080286535588f), O::add(z, O::mul(O::mul(O::set1(0.044715f), z), O::mul(z, z))));
    return O::mul(O::mul(O::set1(0.5f), z), O::add(one, vtanh<O>(inner)));
  } else if constexpr (A == Activation::SiLU) {
    return O::div(z, O::add(one, vexp<O>(O::neg(z))));
  } else if constexpr (A == Activation::ReLU6) {
    return clamp_like_scalar<O>(z, O::zero(), O::set1(6.0f));
  } else if constexpr (A == Activation::Hardtanh) {
    return clamp_like_scalar<O>(z, O::set1(alpha), O::set1(beta));
  } else if constexpr (A == Activation::Hardswish) {
    const V r = clamp_like_scalar<O>(O::add(z, O::set1(3.0f)), O::zero(), O::set1(6.0f));
    return O::div(O::mul(z, r), O::set1(6.0f));
  } else if constexpr (A == Activation::Hardsigmoid) {
    return O::div(clamp_like_scalar<O>(O::add(z, O::set1(3.0f)), O::zero(), O::set1(6.0f)), O::set1(6.0f));
  } else if constexpr (A == Activation::LeakyReLU) {
    return O::select(O::gt(z, O::zero()), z, O::mul(z, O::set1(alpha)));
  } else if constexpr (A == Activation::ELU) {
    // expm1 near 0 by its Taylor series (exp(z) - 1 would cancel there), exp(z) - 1 further out.
    V p = O::set1(1.0f / 40320);
    p = O::fma(p, z, O::set1(1.0f / 5040));
    p = O::fma(p, z, O::set1(1.0f / 720));
    p = O::fma(p, z, O::set1(1.0f / 120));
    p = O::fma(p, z, O::set1(1.0f / 24));
    p = O::fma(p, z, O::set1(1.0f / 6));
    p = O::fma(p, z, O::set1(0.5f));
    const V near = O::fma(O::mul(p, z), z, z);
    const V em1 = O::select(O::gt(z, O::set1(-0.5f)), near, O::sub(vexp<O>(z), one));
    return O::select(O::gt(z, O::zero()), z, O::mul(em1, O::set1(alpha)));
  } else if constexpr (A == Activation::Mish) {
    // tanh(log1p(u)) = u (u + 2) / (u (u + 2) + 2) with u = exp(z): no log, no cancellation for negative z; 1 from
    // z = 20 on, where u (u + 2) would overflow further out.
    const V u = vexp<O>(z);
    const V t = O::mul(u, O::add(u, O::set1(2.0f)));
    const V th = O::select(O::gt(z, O::set1(20.0f)), one, O::div(t, O::add(t, O::set1(2.0f))));
    return O::mul(z, th);
  } else {
    static_assert(A == Activation::None, "activation without a vector form");
    return z;
  }
}

// y[r * ld + i] = A(y[r * ld + i]) for r < rows, i < n: per row whole vectors, then the tail as one more
// (O::loadn / O::storen). Whole tiles per call: the epilogue's rows are short (32 floats of a GEMM tile), and a call
// per row cost more than the row's activation.
template <Activation A>
void span(float* y, int64_t rows, int64_t n, int64_t ld, float alpha, float beta) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * ld;
    int64_t i = 0;
    for (; i + O::L <= n; i += O::L) O::store(row + i, activation_vec<A, O>(O::load(row + i), alpha, beta));
    if (i < n) {
      const int rest = static_cast<int>(n - i);
      O::storen(row + i, activation_vec<A, O>(O::loadn(row + i, rest), alpha, beta), rest);
    }
  }
}
