// Fused Linear + bias + activation on the CPU: y = act(x @ W^T + b), and its backward.
//
// Everything runs on one blocked GEMM of the "NT" form C[m, n] = sum_k A[m, k] * B[n, k]: both operands are
// read along K, so the innermost loop is a contiguous dot product. The forward is exactly this form
// (A = x, B = W); the backward brings its two products into it with one transposed copy per operand
// (O(M*K + N*K) memory work next to O(M*N*K) arithmetic).
//
// Half types (bf16, fp16) are converted to float once before the GEMM, so the inner loops only ever see
// the accumulation type (float, or double for double inputs) and the result is rounded once, on its write.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "cpu/cpu_utils.h"

namespace dlkernels {
namespace {

constexpr const char* kOp = "linear_act";
constexpr const char* kOpBwd = "linear_act_backward";

// ---------------------------------------------------------------------------------------------------------
// The GEMM.
//
// Cache blocking: a (kTileM x kTileN) block of C is one unit of parallel work and is accumulated in a
// per-thread buffer while K is walked in slices of kTileK, so the A slice (kTileM x kTileK) and the B slice
// (kTileN x kTileK) both stay in L2 (64 KiB each for float) for the whole slice. Inside a slice, a
// register tile of kMR rows of A times kNR rows of B shares every load kNR resp. kMR times.
constexpr int64_t kTileM = 64;
constexpr int64_t kTileN = 64;
constexpr int64_t kTileK = 256;
// Register tile: kMR rows of A times NR<acc_t> rows of B, each with V<acc_t> lanes (below). Chosen by
// measurement with the baseline x86-64 flags this package builds with (SSE2: 16 vector registers); it
// stays a good shape when the compiler may use AVX2.
constexpr int kMR = 4;
template <typename acc_t> constexpr int kNR = sizeof(acc_t) == 4 ? 4 : 2;
template <typename acc_t> constexpr int kLanes = sizeof(acc_t) == 4 ? 8 : 2;

// C[i * ldc + j] += dot(A row i, B row j) over `len` elements, for i < MR, j < NR.
//
// A float dot product written as one running sum is not vectorised by the compiler (that would reorder
// the additions, which it may not do without -ffast-math). Keeping V independent partial sums ("lanes")
// per output makes the lane loop trivially vectorisable; the lanes are added up once at the end, in a
// fixed order, so the result is deterministic.
template <typename acc_t, int MR, int NR>
inline void dot_tile(const acc_t* A, int64_t lda, const acc_t* B, int64_t ldb, int64_t len, acc_t* C,
                     int64_t ldc) {
  constexpr int V = kLanes<acc_t>;
  acc_t lanes[MR][NR][V] = {};
  int64_t k = 0;
  for (; k + V <= len; k += V) {
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) {
        for (int l = 0; l < V; ++l) lanes[i][j][l] += A[i * lda + k + l] * B[j * ldb + k + l];
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      acc_t s = acc_t(0);
      for (int l = 0; l < V; ++l) s += lanes[i][j][l];
      for (int64_t kk = k; kk < len; ++kk) s += A[i * lda + kk] * B[j * ldb + kk];  // the K remainder
      C[i * ldc + j] += s;
    }
  }
}

// A partial register tile at the bottom/right edge of a block (mr <= kMR, nr <= kNR): one output at a time.
template <typename acc_t>
inline void dot_tile_edge(int mr, int nr, const acc_t* A, int64_t lda, const acc_t* B, int64_t ldb, int64_t len,
                          acc_t* C, int64_t ldc) {
  for (int i = 0; i < mr; ++i) {
    for (int j = 0; j < nr; ++j) dot_tile<acc_t, 1, 1>(A + i * lda, lda, B + j * ldb, ldb, len, C + i * ldc + j, ldc);
  }
}

// C = A[M, K] @ B[N, K]^T with both operands row-major and contiguous. C is never materialised here: each
// finished row segment of a block is handed to `epilogue(m, n0, values, count)`, which applies bias and
// activation and writes the output once. K == 0 hands over zeros.
template <typename acc_t, typename Epilogue>
void gemm_nt(const acc_t* A, const acc_t* B, int64_t M, int64_t N, int64_t K, const Epilogue& epilogue) {
  constexpr int NR = kNR<acc_t>;
  const int64_t tiles_m = (M + kTileM - 1) / kTileM;
  const int64_t tiles_n = (N + kTileN - 1) / kTileN;
  // One block is already ~kTileM*kTileN*K multiply-adds, so a grain of one block is not too fine.
  at::parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kTileM * kTileN);
    for (int64_t t = begin; t < end; ++t) {
      // Consecutive blocks of one thread share the same rows of A.
      const int64_t m0 = (t / tiles_n) * kTileM;
      const int64_t n0 = (t % tiles_n) * kTileN;
      const int64_t mb = std::min(kTileM, M - m0);
      const int64_t nb = std::min(kTileN, N - n0);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
        const int64_t kb = std::min(kTileK, K - k0);
        for (int64_t j = 0; j < nb; j += NR) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, nb - j));
          const acc_t* b = B + (n0 + j) * K + k0;
          for (int64_t i = 0; i < mb; i += kMR) {
            const int mr = static_cast<int>(std::min<int64_t>(kMR, mb - i));
            const acc_t* a = A + (m0 + i) * K + k0;
            acc_t* c = acc.data() + i * kTileN + j;
            if (mr == kMR && nr == NR) {
              dot_tile<acc_t, kMR, NR>(a, K, b, K, kb, c, kTileN);
            } else {
              dot_tile_edge<acc_t>(mr, nr, a, K, b, K, kb, c, kTileN);
            }
          }
        }
      }
      for (int64_t i = 0; i < mb; ++i) epilogue(m0 + i, n0, acc.data() + i * kTileN, nb);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Forward.

at::Tensor linear_act_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const LinearShape shape = check_linear_args(x, weight, bias, kOp, c10::DeviceType::CPU);
  const int64_t M = shape.M, N = shape.N, K = shape.K;
  at::Tensor out = at::empty(shape.out_shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (M == 0 || N == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_linear_act_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor xa = as_acc(x, acc_type);
    const at::Tensor wa = as_acc(weight, acc_type);
    const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
    const acc_t* b = ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr;
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    dispatch_activation(act, [&](auto act_tag) {
      using Fn = ActivationFn<decltype(act_tag)::value>;
      // Epilogue: bias, activation and the one rounding to the output dtype.
      gemm_nt<acc_t>(xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), M, N, K,
                     [&](int64_t m, int64_t n0, const acc_t* c, int64_t count) {
                       scalar_t* row = y + m * N + n0;
                       for (int64_t j = 0; j < count; ++j) {
                         const acc_t z = b ? c[j] + b[n0 + j] : c[j];
                         row[j] = static_cast<scalar_t>(Fn::forward(z));
                       }
                     });
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Backward.

// Rows of grad_out per bias partial sum. Fixed (not tied to the thread count) so that grad_bias is the same
// bit for bit whatever the number of threads.
constexpr int64_t kBiasRows = 32;

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& out, c10::string_view activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const LinearShape shape = check_linear_args(x, weight, bias, kOpBwd, c10::DeviceType::CPU);
  const int64_t M = shape.M, N = shape.N, K = shape.K;
  check_same_device_dtype(x, "x", grad_out, "grad_out", kOpBwd);
  check_same_device_dtype(x, "x", out, "out", kOpBwd);
  const std::vector<int64_t>& y_shape = shape.out_shape;
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(y_shape), "dlkernels.", kOpBwd, ": expected 'grad_out' of shape ",
              at::IntArrayRef(y_shape), " (the output's), got ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == at::IntArrayRef(y_shape), "dlkernels.", kOpBwd, ": expected 'out' of shape ",
              at::IntArrayRef(y_shape), " (the forward's output), got ", out.sizes());

  const bool need_x = output_mask[0];
  const bool need_w = output_mask[1];
  const bool need_b = output_mask[2] && has_bias(bias);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_x = need_x ? at::empty(x.sizes(), opts) : at::Tensor();
  at::Tensor grad_w = need_w ? at::empty({N, K}, opts) : at::Tensor();
  at::Tensor grad_b = need_b ? at::empty({N}, opts) : at::Tensor();
  if (!need_x && !need_w && !need_b) return {grad_x, grad_w, grad_b};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_linear_act_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor xa = as_acc(x, acc_type).reshape({M, K});
    const at::Tensor wa = as_acc(weight, acc_type);
    const at::Tensor go = grad_out.contiguous();
    const scalar_t* go_p = go.const_data_ptr<scalar_t>();

    // Step 1: gz = grad_out * act'(saved), in acc_t, with grad_bias's partial sums taken in the same pass.
    at::Tensor gz = at::empty({M, N}, opts.dtype(acc_type));
    acc_t* gz_p = gz.mutable_data_ptr<acc_t>();
    const int64_t chunks = (M + kBiasRows - 1) / kBiasRows;
    std::vector<acc_t> bias_parts(need_b ? chunks * N : 0, acc_t(0));
    dispatch_activation(act, [&](auto act_tag) {
      using Fn = ActivationFn<decltype(act_tag)::value>;
      // `saved(m, n)` is what Fn::grad expects: the pre-activation (recomputed in acc_t, never rounded) for
      // gelu/gelu_tanh/silu, the forward output otherwise.
      auto pass = [&](auto saved) {
        at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            acc_t* part = need_b ? bias_parts.data() + c * N : nullptr;
            for (int64_t m = c * kBiasRows; m < std::min(M, (c + 1) * kBiasRows); ++m) {
              for (int64_t n = 0; n < N; ++n) {
                const acc_t g = static_cast<acc_t>(go_p[m * N + n]) * Fn::grad(saved(m * N + n));
                gz_p[m * N + n] = g;
                if (part) part[n] += g;
              }
            }
          }
        });
      };
      if (grad_needs_preactivation(act)) {
        at::Tensor z = at::empty({M, N}, opts.dtype(acc_type));
        acc_t* z_p = z.mutable_data_ptr<acc_t>();
        const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
        const acc_t* b = ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr;
        gemm_nt<acc_t>(xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), M, N, K,
                       [&](int64_t m, int64_t n0, const acc_t* c, int64_t count) {
                         for (int64_t j = 0; j < count; ++j) z_p[m * N + n0 + j] = b ? c[j] + b[n0 + j] : c[j];
                       });
        pass([z_p](int64_t i) { return z_p[i]; });
      } else {
        const at::Tensor saved = out.contiguous();
        const scalar_t* s_p = saved.const_data_ptr<scalar_t>();
        pass([s_p](int64_t i) { return static_cast<acc_t>(s_p[i]); });
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

    // Writes a finished row segment of an [rows, cols] result, rounding once.
    auto write_to = [](scalar_t* dst, int64_t cols) {
      return [dst, cols](int64_t r, int64_t c0, const acc_t* c, int64_t count) {
        for (int64_t j = 0; j < count; ++j) dst[r * cols + c0 + j] = static_cast<scalar_t>(c[j]);
      };
    };
    // Step 2a: grad_x[M, K] = gz[M, N] @ W[N, K]  ==  NT GEMM of gz with W^T [K, N].
    if (need_x && K > 0) {
      const at::Tensor wt = wa.t().contiguous();
      gemm_nt<acc_t>(gz_p, wt.const_data_ptr<acc_t>(), M, K, N, write_to(grad_x.mutable_data_ptr<scalar_t>(), K));
    }
    // Step 2b: grad_w[N, K] = gz^T[N, M] @ x[M, K]  ==  NT GEMM of gz^T with x^T [K, M]. M == 0 gives zeros.
    if (need_w && K > 0) {
      const at::Tensor gzt = gz.t().contiguous();
      const at::Tensor xt = xa.t().contiguous();
      gemm_nt<acc_t>(gzt.const_data_ptr<acc_t>(), xt.const_data_ptr<acc_t>(), N, K, M,
                     write_to(grad_w.mutable_data_ptr<scalar_t>(), K));
    }
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(dlkernels, CPU, m) {
  m.impl("linear_act", &dlkernels::linear_act_cpu);
  m.impl("linear_act_backward", &dlkernels::linear_act_backward_cpu);
}
