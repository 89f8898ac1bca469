// Activation functors shared by the CPU and CUDA kernels.
//
// Each activation knows its forward value and its derivative. The derivative is computed from the saved
// tensor of the forward pass: the output where the output alone determines it (relu, sigmoid, tanh), the
// pre-activation otherwise (gelu, gelu_tanh, silu are not invertible from their output).
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

enum class Activation { None, ReLU, Sigmoid, Tanh, GELU, GELUTanh, SiLU };

// The names of the public API, in the order of the enum.
inline constexpr const char* kActivationNames[] = {"none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu"};

inline Activation parse_activation(c10::string_view name) {
  for (int i = 0; i < 7; ++i) {
    if (name == kActivationNames[i]) return static_cast<Activation>(i);
  }
  TORCH_CHECK(false, "dlkernels: unknown activation '", std::string(name),
              "'; expected one of none, relu, sigmoid, tanh, gelu, gelu_tanh, silu");
}

// Where the backward takes the derivative from (the same table as contract.GRAD_FROM_OUTPUT and
// contract.GRAD_FROM_PREACTIVATION on the Python side): the forward output (the backward ops' `out`, which
// autograd saves only for these), the pre-activation recomputed from x, weight and bias, or neither ("none").
inline bool grad_needs_output(Activation act) {
  return act == Activation::ReLU || act == Activation::Sigmoid || act == Activation::Tanh;
}
inline bool grad_needs_preactivation(Activation act) {
  return act == Activation::GELU || act == Activation::GELUTanh || act == Activation::SiLU;
}

template <Activation A>
struct ActivationFn;

template <>
struct ActivationFn<Activation::None> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z) { return z; }
  template <typename T> static DLK_HOST_DEVICE T grad(T /*saved*/) { return T(1); }
};

template <>
struct ActivationFn<Activation::ReLU> {
  // NaN propagates as in torch.relu: the comparison is false for NaN, so z is returned.
  template <typename T> static DLK_HOST_DEVICE T forward(T z) { return z < T(0) ? T(0) : z; }
  // From the output, as torch's threshold_backward: the gradient is blocked where y <= 0 and passes
  // elsewhere, NaN outputs included.
  template <typename T> static DLK_HOST_DEVICE T grad(T y) { return y <= T(0) ? T(0) : T(1); }
};

template <>
struct ActivationFn<Activation::Sigmoid> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z) { return T(1) / (T(1) + DLK_MATH(exp)(-z)); }
  template <typename T> static DLK_HOST_DEVICE T grad(T y) { return y * (T(1) - y); }
};

template <>
struct ActivationFn<Activation::Tanh> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z) { return DLK_MATH(tanh)(z); }
  template <typename T> static DLK_HOST_DEVICE T grad(T y) { return T(1) - y * y; }
};

template <>
struct ActivationFn<Activation::GELU> {
  // The erf form, as nn.GELU() with approximate="none".
  template <typename T> static DLK_HOST_DEVICE T forward(T z) {
    return T(0.5) * z * (T(1) + DLK_MATH(erf)(z * T(0.70710678118654752440)));
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T z) {
    const T cdf = T(0.5) * (T(1) + DLK_MATH(erf)(z * T(0.70710678118654752440)));
    const T pdf = DLK_MATH(exp)(T(-0.5) * z * z) * T(0.39894228040143267794);  // 1/sqrt(2*pi)
    return cdf + z * pdf;
  }
};

template <>
struct ActivationFn<Activation::GELUTanh> {
  // nn.GELU(approximate="tanh").
  template <typename T> static DLK_HOST_DEVICE T forward(T z) {
    const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);  // sqrt(2/pi)
    return T(0.5) * z * (T(1) + DLK_MATH(tanh)(inner));
  }
  template <typename T> static DLK_HOST_DEVICE T grad(T z) {
    const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
    const T t = DLK_MATH(tanh)(inner);
    const T dinner = T(0.79788456080286535588) * (T(1) + T(3) * T(0.044715) * z * z);
    return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * dinner;
  }
};

template <>
struct ActivationFn<Activation::SiLU> {
  template <typename T> static DLK_HOST_DEVICE T forward(T z) { return z / (T(1) + DLK_MATH(exp)(-z)); }
  template <typename T> static DLK_HOST_DEVICE T grad(T z) {
    const T s = T(1) / (T(1) + DLK_MATH(exp)(-z));
    return s * (T(1) + z * (T(1) - s));
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
  }
  TORCH_CHECK(false, "dlkernels: unhandled activation");
}

}  // namespace dlkernels
