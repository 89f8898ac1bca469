// Fused Linear + bias + activation on the CPU: y = act(x @ W^T + b), and its backward.
//
// Forward and backward run on the shared packed GEMM of cpu/gemm.h (register-blocked micro-kernel, chosen
// at run time for AVX-512 / AVX2 / SSE2). Forward: y = x @ W^T with bias and relu in the micro-kernel's
// epilogue and other activations applied on each finished tile. Backward: grad_x = gz @ W and
// grad_w = gz^T @ x, with the transposes done by the packing (strided reads), not by copies.
//
// Half types (bf16, fp16) are converted to float once before the GEMM, so the inner loops only ever see
// the accumulation type (float, or double for double inputs) and the result is rounded once, on its write.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mish.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "cpu/activation_span.h"
#include "cpu/cpu_utils.h"
#include "cpu/gemm.h"
#include "cpu/linear_act_cpu.h"
#include "cpu/memory.h"
#include "cpu/skinny_gemm.h"

namespace dlkernels {
namespace cpu {
namespace {

constexpr const char* kOp = "linear_act";
constexpr const char* kOpBwd = "linear_act_backward";

// C = A @ B (+ bias per column, relu if asked), then post(i0, j0, m, n, tile, ldc) on each finished tile
// when has_post. A(i, k) = A[i * a_sm + k * a_sk], B(k, j) = B[k * b_sk + j * b_sn].
// Batch sizes up to 4, 8 on AVX2 (and grad_w's inner dimension up to 4, 8 on AVX2) take the skinny float kernels,
// which stream W once instead of packing it; bias, relu and post then run over all of C.
template <typename acc_t, typename Post>
void linear_gemm(int64_t M, int64_t N, int64_t K, const acc_t* A, int64_t a_sm, int64_t a_sk, const acc_t* B,
                 int64_t b_sk, int64_t b_sn, acc_t* C, const acc_t* bias, bool relu, bool has_post, Post post) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (skinny_gemm_f32(M, N, K, A, a_sm, a_sk, B, b_sk, b_sn, C, N)) {
      if (bias || relu) {
        for (int64_t i = 0; i < M; ++i) {
          acc_t* row = C + i * N;
          for (int64_t j = 0; j < N; ++j) {
            const acc_t z = bias ? row[j] + bias[j] : row[j];
            row[j] = relu ? ActivationFn<Activation::ReLU>::forward(z, ActivationParams{}) : z;
          }
        }
      }
      if (has_post) post(0, 0, static_cast<int>(M), static_cast<int>(N), C, N);
      return;
    }
  }
  StridedGemm<acc_t, Post> g{1, M, N, K, 1, A, a_sm, a_sk, B, b_sk, b_sn, C, N, bias, relu, has_post, post};
  gemm_run<acc_t>(g);
}

struct NoPost {
  template <typename T>
  void operator()(int64_t, int64_t, int, int, T*, int64_t) const {}
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Forward.

namespace {

// The activations linear_act_forward_impl leaves out of its epilogue (float and double): PyTorch's in-place op
// applying `act` to a finished output, or null for the activations the epilogue keeps.
using InPlaceActivation = void (*)(at::Tensor& out, const ActivationParams& params);
InPlaceActivation in_place_activation(Activation act) {
  switch (act) {
    case Activation::GELU: return [](at::Tensor& out, const ActivationParams&) { at::gelu_(out, "none"); };
    case Activation::GELUTanh: return [](at::Tensor& out, const ActivationParams&) { at::gelu_(out, "tanh"); };
    case Activation::SiLU: return [](at::Tensor& out, const ActivationParams&) { at::silu_(out); };
    case Activation::Sigmoid: return [](at::Tensor& out, const ActivationParams&) { out.sigmoid_(); };
    case Activation::Tanh: return [](at::Tensor& out, const ActivationParams&) { out.tanh_(); };
    case Activation::ELU: return [](at::Tensor& out, const ActivationParams& p) { at::elu_(out, p.alpha); };
    default: return nullptr;
  }
}

}  // namespace

at::Tensor linear_act_forward_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   c10::string_view activation, double alpha, double beta, bool vectorised_activation) {
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, kOp);
  const LinearShape shape = check_linear_args(x, weight, bias, kOp, c10::DeviceType::CPU);
  const int64_t M = shape.M, N = shape.N, K = shape.K;
  at::Tensor out = empty_output(shape.out_shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (M == 0 || N == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_linear_act_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor xa = as_acc(x, acc_type);
    const at::Tensor wa = as_acc(weight, acc_type);
    const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    // float/double accumulate straight into the output; half types into a float buffer, rounded in `post`.
    constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
    at::Tensor cbuf = direct ? out : empty_output({M, N}, out.options().dtype(acc_type));
    acc_t* C = cbuf.mutable_data_ptr<acc_t>();
    const InPlaceActivation after = vectorised_activation && direct ? in_place_activation(act) : nullptr;
    dispatch_activation(after ? Activation::None : act, [&](auto act_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      constexpr bool in_kernel = A == Activation::None || A == Activation::ReLU;  // vectorised in the kernel
      // Epilogue: bias (+ relu) in the micro-kernel; other activations in place on the finished tile (C is the
      // output itself for float and double), then the one rounding into the output for the half types.
      auto post = [&](int64_t i0, int64_t j0, int m, int n, acc_t* c, int64_t ldc) {
        if constexpr (!in_kernel) activation_span<A>(c, m, n, ldc, params);
        if constexpr (!direct) {
          for (int i = 0; i < m; ++i) {
            scalar_t* row = y + (i0 + i) * N + j0;
            for (int j = 0; j < n; ++j) row[j] = static_cast<scalar_t>(c[i * ldc + j]);
          }
        }
      };
      linear_gemm<acc_t>(M, N, K, xa.const_data_ptr<acc_t>(), K, 1, wa.const_data_ptr<acc_t>(), 1, K, C,
                         ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr, A == Activation::ReLU,
                         !(direct && in_kernel), post);
    });
    if (after) after(out, params);
  });
  return out;
}

at::Tensor linear_act_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              c10::string_view activation, double alpha, double beta) {
  return linear_act_forward_impl(x, weight, bias, activation, alpha, beta, true);
}

// ---------------------------------------------------------------------------------------------------------
// Backward.

// Rows of grad_out per bias partial sum. Fixed (not tied to the thread count) so that grad_bias is the same
// bit for bit whatever the number of threads.
constexpr int64_t kBiasRows = 32;

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const at::Tensor& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   const std::optional<at::Tensor>& out,
                                                                   c10::string_view activation, double alpha,
                                                                   double beta, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, kOpBwd);
  const LinearShape shape = check_linear_args(x, weight, bias, kOpBwd, c10::DeviceType::CPU);
  const int64_t M = shape.M, N = shape.N, K = shape.K;
  check_output_like(x, grad_out, "grad_out", shape.out_shape, kOpBwd);
  check_saved_output(x, out, grad_needs_output(act), activation, shape.out_shape, kOpBwd);

  const bool need_x = output_mask[0];
  const bool need_w = output_mask[1];
  const bool need_b = output_mask[2] && has_bias(bias);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_x = need_x ? empty_output(x.sizes(), opts) : at::Tensor();
  at::Tensor grad_w = need_w ? empty_output({N, K}, opts) : at::Tensor();
  at::Tensor grad_b = need_b ? empty_output({N}, opts) : at::Tensor();
  if (!need_x && !need_w && !need_b) return {grad_x, grad_w, grad_b};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_linear_act_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    // x and weight are read only where needed: autograd passes expanded stand-ins for the others.
    const bool recompute = grad_needs_preactivation(act);
    const at::Tensor xa = need_w || recompute ? as_acc(x, acc_type).reshape({M, K}) : at::Tensor();
    const at::Tensor wa = need_x || recompute ? as_acc(weight, acc_type) : at::Tensor();
    const at::Tensor go = grad_out.contiguous();
    const scalar_t* go_p = go.const_data_ptr<scalar_t>();

    // Step 1: gz = grad_out * act'(saved), in acc_t, with grad_bias's partial sums taken in the same pass.
    // Without activation gz is grad_out itself where that is already acc_t (float/double).
    const bool gz_is_go = act == Activation::None && std::is_same_v<scalar_t, acc_t>;
    at::Tensor gz = gz_is_go ? go : empty_output({M, N}, opts.dtype(acc_type));
    const acc_t* gz_p = gz.const_data_ptr<acc_t>();
    acc_t* gz_out = gz_is_go ? nullptr : gz.mutable_data_ptr<acc_t>();
    const int64_t chunks = (M + kBiasRows - 1) / kBiasRows;
    std::vector<acc_t> bias_parts(need_b ? chunks * N : 0, acc_t(0));
    dispatch_activation(act, [&](auto act_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      // `saved(m, n)` is what Fn::grad expects: the pre-activation (recomputed in acc_t, never rounded) for
      // gelu/gelu_tanh/silu, the forward output otherwise.
      // g(i): gz at element i, written to gz_out when `write`, and added to grad_bias's partial sums.
      auto rows = [&](auto g, bool write) {
        // One loop per case, on restrict pointers: with the tests inside and `part` possibly aliasing gz_out,
        // the compiler kept the loop scalar (grad_bias of a large batch cost five times torch's sum).
        at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            acc_t* __restrict part = need_b ? bias_parts.data() + c * N : nullptr;
            for (int64_t m = c * kBiasRows; m < std::min(M, (c + 1) * kBiasRows); ++m) {
              acc_t* __restrict out = write && gz_out ? gz_out + m * N : nullptr;
              const int64_t i0 = m * N;
              if (out && part) {
                for (int64_t n = 0; n < N; ++n) {
                  const acc_t v = g(i0 + n);
                  out[n] = v;
                  part[n] += v;
                }
              } else if (out) {
                for (int64_t n = 0; n < N; ++n) out[n] = g(i0 + n);
              } else if (part) {
                for (int64_t n = 0; n < N; ++n) part[n] += g(i0 + n);
              }
            }
          }
        });
      };
      auto pass = [&](auto saved) {
        rows([&](int64_t i) { return grad_times<A>(static_cast<acc_t>(go_p[i]), saved(i), params); }, true);
      };
      if (recompute) {
        at::Tensor z = empty_output({M, N}, opts.dtype(acc_type));
        acc_t* z_p = z.mutable_data_ptr<acc_t>();
        const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
        const acc_t* b = ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr;
        linear_gemm<acc_t>(M, N, K, xa.const_data_ptr<acc_t>(), K, 1, wa.const_data_ptr<acc_t>(), 1, K, z_p, b, false,
                           false, NoPost{});
        if constexpr (A == Activation::GELU || A == Activation::GELUTanh || A == Activation::SiLU) {
          // ATen's vectorised derivative (the forward applies ATen's activation too): an erf or exp per element
          // one at a time cost several times the backward's GEMMs. Then grad_bias's partial sums over gz.
          const at::Tensor goa = go.reshape({M, N}).to(acc_type);
          if constexpr (A == Activation::SiLU) {
            at::silu_backward_out(gz, goa, z);
          } else {
            at::gelu_backward_out(gz, goa, z, A == Activation::GELU ? "none" : "tanh");
          }
          if (need_b) rows([gz_p](int64_t i) { return gz_p[i]; }, false);
          return;
        }
        pass([z_p](int64_t i) { return z_p[i]; });
      } else if (grad_needs_output(act)) {
        const at::Tensor saved = out->contiguous();
        const scalar_t* s_p = saved.const_data_ptr<scalar_t>();
        pass([s_p](int64_t i) { return static_cast<acc_t>(s_p[i]); });
      } else if (!gz_is_go || need_b) {  // none: the derivative is 1 and reads nothing
        pass([](int64_t) { return acc_t(0); });
      }
    });

    if (need_b) {
      // Chunks are summed in their order: deterministic.
      scalar_t* gb = grad_b.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, N, 256, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          acc_t s = acc_t(0);
          for (int64_t c = 0; c < chunks; ++c) s += bias_parts[c * N + n];
          gb[n] = static_cast<scalar_t>(s);
        }
      });
    }

    // dst[rows, cols] = A @ B through the GEMM: straight into dst for float/double, through a float buffer
    // rounded once per tile for half types.
    auto gemm_to = [&](scalar_t* dst, int64_t rows, int64_t cols, int64_t inner, const acc_t* A, int64_t a_sm,
                       int64_t a_sk, const acc_t* B, int64_t b_sk, int64_t b_sn) {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        linear_gemm<acc_t>(rows, cols, inner, A, a_sm, a_sk, B, b_sk, b_sn, reinterpret_cast<acc_t*>(dst), nullptr,
                           false, false, NoPost{});
      } else {
        at::Tensor tmp = empty_output({rows, cols}, opts.dtype(acc_type));
        linear_gemm<acc_t>(rows, cols, inner, A, a_sm, a_sk, B, b_sk, b_sn, tmp.mutable_data_ptr<acc_t>(), nullptr,
                           false, true, [&](int64_t i0, int64_t j0, int m, int n, acc_t* c, int64_t ldc) {
                             for (int i = 0; i < m; ++i) {
                               for (int j = 0; j < n; ++j)
                                 dst[(i0 + i) * cols + j0 + j] = static_cast<scalar_t>(c[i * ldc + j]);
                             }
                           });
      }
    };
    // Step 2a: grad_x[M, K] = gz[M, N] @ W[N, K].
    if (need_x && K > 0) {
      gemm_to(grad_x.mutable_data_ptr<scalar_t>(), M, K, N, gz_p, N, 1, wa.const_data_ptr<acc_t>(), K, 1);
    }
    // Step 2b: grad_w[N, K] = gz^T[N, M] @ x[M, K]: A is gz read down its columns. M == 0 gives zeros.
    if (need_w && K > 0) {
      gemm_to(grad_w.mutable_data_ptr<scalar_t>(), N, K, M, gz_p, 1, N, xa.const_data_ptr<acc_t>(), K, 1);
    }
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace cpu
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(dlkernels, CPU, m) {
  m.impl("linear_act", &dlkernels::cpu::linear_act_forward);
  m.impl("linear_act_backward", &dlkernels::cpu::linear_act_backward);
}
