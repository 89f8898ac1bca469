// Activation functors shared by the CPU and CUDA kernels.
//
// Each activation knows its forward value and its derivative, torch's definitions (F.relu6, F.hardtanh,
// F.hardswish, ... and their backward formulas, kinks and NaN included). The derivative is computed from the
// saved tensor of the forward pass: the output where the output alone determines it (relu, sigmoid, tanh,
// relu6, hardtanh, hardsigmoid, leaky_relu and elu with a parameter >= 0), the pre-activation otherwise
// (gelu, gelu_tanh, silu, hardswish, mish are not invertible from their output).
//
// The parameters (hardtanh's min_val/max_val, leaky_relu's negative_slope, elu's alpha) come at run time in
// an ActivationParams; the activation itself stays a template parameter, so the ones without parameters
// compile exactly as before.
#pragma once

#include <cmath>
#include <type_traits>

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DLK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DLK_HOST_DEVICE inline
#endif

// Host code uses the std:: overloads; device code the global CUDA math overloads for float and double.
#ifdef __CUDA_ARCH__
#define DLK_MATH(fn) ::fn
#else
#define DLK_MATH(fn) std::fn
#endif

namespace dlkernels {

enum class Activation {
  None,
  ReLU,
  Sigmoid,
  Tanh,
  GELU,
  GELUTanh,
  SiLU,
  ReLU6,
  Hardtanh,
  Hardswish,
  Hardsigmoid,
  LeakyReLU,
  ELU,
  Mish
};

// The names of the public API, in the order of the enum (contract.ACTIVATIONS).
inline constexpr const char* kActivationNames[] = {"none",        "relu",       "sigmoid", "tanh",     "gelu",
                                                   "gelu_tanh",   "silu",       "relu6",   "hardtanh", "hardswish",
                                                   "hardsigmoid", "leaky_relu", "elu",     "mish"};
inline constexpr int kNumActivations = static_cast<int>(sizeof(kActivationNames) / sizeof(kActivationNames[0]));

inline Activation parse_activation(c10::string_view name) {
  for (int i = 0; i < kNumActivations; ++i) {
    if (name == kActivationNames[i]) return static_cast<Activation>(i);
  }
  TORCH_CHECK(false, "dlkernels: unknown activation '", std::string(name),
              "'; expected one of none, relu, sigmoid, tanh, gelu, gelu_tanh, silu, relu6, hardtanh, hardswish, ",
              "hardsigmoid, leaky_relu, elu, mish");
}

// The ops' (alpha, beta) arguments (contract.activation_args): leaky_relu alpha = negative_slope, hardtanh
// alpha = min_val and beta = max_val, elu alpha; the other activations ignore them.
struct ActivationParams {
  double alpha = 0;
  double beta = 0;
};

// What the kernels support: leaky_relu's and elu's parameter >= 0 (their derivative is taken from the output,
// which no longer tells the sign of the pre-activation otherwise), hardtanh's min_val <= max_val.
inline void check_activation_params(Activation act, const ActivationParams& p, const char* op) {
  if (act == Activation::LeakyReLU || act == Activation::ELU) {
    TORCH_CHECK(p.alpha >= 0, "dlkernels.", op, ": activation '", kActivationNames[static_cast<int>(act)],
                "' needs alpha (", act == Activation::ELU ? "alpha" : "negative_slope", ") >= 0, got ", p.alpha);
  }
  if (act == Activation::Hardtanh) {
    TORCH_CHECK(p.alpha <= p.beta, "dlkernels.", op, ": activation 'hardtanh' needs alpha (min_val) <= beta ",
                "(max_val), got ", p.alpha, " and ", p.beta);
  }
}

// Where the backward takes the derivative from (the same table as contract.GRAD_FROM_OUTPUT and
// contract.GRAD_FROM_PREACTIVATION on the Python side): the forward output (the backward ops' `out`, which
// autograd saves only for these), the pre-activation recomputed from x, weight and bias, or neither ("none").
constexpr bool grad_needs_output(Activation act) {
  switch (act) {
    case Activation::ReLU:
    case Activation::Sigmoid:
    case Activation::Tanh:
    case Activation::ReLU6:
    case Activation::Hardtanh:
    case Activation::Hardsigmoid:
    case Activation::LeakyReLU:
    case Activation::ELU: return true;
    default: return false;
  }
}
constexpr bool grad_needs_preactivation(Activation act) {
  switch (act) {
    case Activation::GELU:
    case Activation::GELUTanh:
    case Activation::SiLU:
    case Activation::Hardswish:
    case Activation::Mish: return true;
    default: return false;
  }
}

template <Activation A>
struct ActivationFn;

template <>
struct ActivationFn<Activation::None> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) { return z; }
  template <typename T> static DLK_HOST_DEVICE T grad(T /*saved*/, const ActivationParams&) { return T(1); }
};

template <>
struct ActivationFn<Activation::ReLU> {
  // NaN propagates as in torch.relu: the comparison is false for NaN, so z is returned.
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) { return z < T(0) ? T(0) : z; }
  // From the output, as torch's threshold_backward: the gradient is blocked where y <= 0 and passes
  // elsewhere, NaN outputs included.
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams&) { return y <= T(0) ? T(0) : T(1); }
};

template <>
struct ActivationFn<Activation::Sigmoid> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    return T(1) / (T(1) + DLK_MATH(exp)(-z));
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams&) { return y * (T(1) - y); }
};

template <>
struct ActivationFn<Activation::Tanh> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) { return DLK_MATH(tanh)(z); }
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams&) { return T(1) - y * y; }
};

template <>
struct ActivationFn<Activation::GELU> {
  // The erf form, as nn.GELU() with approximate="none".
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    return T(0.5) * z * (T(1) + DLK_MATH(erf)(z * T(0.70710678118654752440)));
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T z, const ActivationParams&) {
    const T cdf = T(0.5) * (T(1) + DLK_MATH(erf)(z * T(0.70710678118654752440)));
    const T pdf = DLK_MATH(exp)(T(-0.5) * z * z) * T(0.39894228040143267794);  // 1/sqrt(2*pi)
    return cdf + z * pdf;
  }
};

template <>
struct ActivationFn<Activation::GELUTanh> {
  // nn.GELU(approximate="tanh").
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);  // sqrt(2/pi)
    return T(0.5) * z * (T(1) + DLK_MATH(tanh)(inner));
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T z, const ActivationParams&) {
    const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
    const T t = DLK_MATH(tanh)(inner);
    const T dinner = T(0.79788456080286535588) * (T(1) + T(3) * T(0.044715) * z * z);
    return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * dinner;
  }
};

template <>
struct ActivationFn<Activation::SiLU> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    return z / (T(1) + DLK_MATH(exp)(-z));
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T z, const ActivationParams&) {
    const T s = T(1) / (T(1) + DLK_MATH(exp)(-z));
    return s * (T(1) + z * (T(1) - s));
  }
};

template <>
struct ActivationFn<Activation::ReLU6> {
  // hardtanh(0, 6): NaN propagates (both comparisons are false).
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    return z < T(0) ? T(0) : (z > T(6) ? T(6) : z);
  }
  // As hardtanh_backward: passes where 0 < y < 6 (equivalently 0 < z < 6), and for NaN.
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams&) {
    return (y <= T(0) || y >= T(6)) ? T(0) : T(1);
  }
};

template <>
struct ActivationFn<Activation::Hardtanh> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams& p) {
    const T lo = static_cast<T>(p.alpha), hi = static_cast<T>(p.beta);
    return z < lo ? lo : (z > hi ? hi : z);
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams& p) {
    return (y <= static_cast<T>(p.alpha) || y >= static_cast<T>(p.beta)) ? T(0) : T(1);
  }
};

template <>
struct ActivationFn<Activation::Hardswish> {
  // z * min(max(z + 3, 0), 6) / 6, in torch's order of operations; NaN propagates.
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    T r = z + T(3);
    r = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
    return z * r / T(6);
  }
  // From the pre-activation, as hardswish_backward: 0 up to -3, z / 3 + 1/2 on (-3, 3), 1 from 3 (and NaN).
  template <typename T> static DLK_HOST_DEVICE T grad(T z, const ActivationParams&) {
    return z <= T(-3) ? T(0) : (z < T(3) ? z / T(3) + T(0.5) : T(1));
  }
};

template <>
struct ActivationFn<Activation::Hardsigmoid> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    const T r = z + T(3);
    return (r < T(0) ? T(0) : (r > T(6) ? T(6) : r)) / T(6);
  }
  // hardsigmoid_backward passes 1/6 where -3 < z < 3, that is 0 < y < 1; 0 elsewhere and for NaN. torch's
  // 1/6 is the float 1.0f / 6.0f in every dtype (float64 included): so is ours.
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams&) {
    return (y > T(0) && y < T(1)) ? static_cast<T>(1.0f / 6.0f) : T(0);
  }
};

template <>
struct ActivationFn<Activation::LeakyReLU> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams& p) {
    return z > T(0) ? z : z * static_cast<T>(p.alpha);
  }
  // With negative_slope >= 0, y > 0 exactly where z > 0 (leaky_relu_backward's test); NaN takes the slope.
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams& p) {
    return y > T(0) ? T(1) : static_cast<T>(p.alpha);
  }
};

template <>
struct ActivationFn<Activation::ELU> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams& p) {
    return z <= T(0) ? DLK_MATH(expm1)(z) * static_cast<T>(p.alpha) : z;
  }
  // elu_backward from the result (alpha >= 0): y + alpha where y <= 0, else 1 (NaN included).
  template <typename T> static DLK_HOST_DEVICE T grad(T y, const ActivationParams& p) {
    return y <= T(0) ? y + static_cast<T>(p.alpha) : T(1);
  }
};

template <>
struct ActivationFn<Activation::Mish> {
  // z * tanh(softplus(z)), as torch's CPU kernel: z * tanh(log1p(exp(z))).
  template <typename T> static DLK_HOST_DEVICE T forward(T z, const ActivationParams&) {
    return z * DLK_MATH(tanh)(DLK_MATH(log1p)(DLK_MATH(exp)(z)));
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T z, const ActivationParams&) {
    const T s = T(1) / (T(1) + DLK_MATH(exp)(-z));
    const T t = DLK_MATH(tanh)(DLK_MATH(log1p)(DLK_MATH(exp)(z)));
    return t + z * s * (T(1) - t * t);
  }
};

// Turns the runtime activation into a compile-time constant: f receives a std::integral_constant whose
// ::value is the Activation, so each kernel is instantiated once per activation without copies.
template <typename F>
decltype(auto) dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::None: return f(std::integral_constant<Activation, Activation::None>{});
    case Activation::ReLU: return f(std::integral_constant<Activation, Activation::ReLU>{});
    case Activation::Sigmoid: return f(std::integral_constant<Activation, Activation::Sigmoid>{});
    case Activation::Tanh: return f(std::integral_constant<Activation, Activation::Tanh>{});
    case Activation::GELU: return f(std::integral_constant<Activation, Activation::GELU>{});
    case Activation::GELUTanh: return f(std::integral_constant<Activation, Activation::GELUTanh>{});
    case Activation::SiLU: return f(std::integral_constant<Activation, Activation::SiLU>{});
    case Activation::ReLU6: return f(std::integral_constant<Activation, Activation::ReLU6>{});
    case Activation::Hardtanh: return f(std::integral_constant<Activation, Activation::Hardtanh>{});
    case Activation::Hardswish: return f(std::integral_constant<Activation, Activation::Hardswish>{});
    case Activation::Hardsigmoid: return f(std::integral_constant<Activation, Activation::Hardsigmoid>{});
    case Activation::LeakyReLU: return f(std::integral_constant<Activation, Activation::LeakyReLU>{});
    case Activation::ELU: return f(std::integral_constant<Activation, Activation::ELU>{});
    case Activation::Mish: return f(std::integral_constant<Activation, Activation::Mish>{});
  }
  TORCH_CHECK(false, "dlkernels: unhandled activation");
}

}  // namespace dlkernels
