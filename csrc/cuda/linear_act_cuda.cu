// Linear + bias + activation on CUDA: y = act(x @ weight^T + bias), and its backward.
//
// One shared-memory tiled GEMM, written once: C[M, N] = A[M, K] . B[K, N] with A and B given by pointer and
// two strides each, so the same kernel computes
//   forward  y      = x  @ W^T  (A = x [M, K] row-major, B = W^T through W's strides; bias + act fused),
//   backward grad_x = gz @ W    (A = gz [M, N], B = W [N, K]),
//            grad_W = gz^T @ x  (A = gz^T through gz's strides, B = x [M, K]).
// Each block computes a 64x64 tile of C with 16x16 threads (a 4x4 micro-tile each), stepping through K in
// slices of 16 staged in shared memory as opmath values (float for half types), with float accumulation.
// The epilogue adds the bias, applies the activation and writes C once. Readable, not tuned.
#include <array>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "cuda/cuda_utils.cuh"

namespace dlkernels {
namespace cuda {
namespace {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreadsM = 16;                        // threads along M (threadIdx.y)
constexpr int kThreadsN = 16;                        // threads along N (threadIdx.x)
constexpr int kMicroM = kTileM / kThreadsM;          // 4 rows per thread
constexpr int kMicroN = kTileN / kThreadsN;          // 4 columns per thread
constexpr int kGemmThreads = kThreadsM * kThreadsN;  // 256
static_assert((kTileM * kTileK) % kGemmThreads == 0 && (kTileK * kTileN) % kGemmThreads == 0,
              "tile loads must divide evenly among the threads");

// C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]) for a row-major contiguous C [M, N].
// A[m, k] = a[m * a_sm + k * a_sk], B[k, n] = b[k * b_sk + n * b_sn]; bias may be null.
template <typename scalar_t, Activation A>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_bias_act_kernel(const scalar_t* __restrict__ a, int64_t a_sm, int64_t a_sk, const scalar_t* __restrict__ b,
                         int64_t b_sk, int64_t b_sn, const scalar_t* __restrict__ bias, scalar_t* __restrict__ c,
                         int64_t M, int64_t N, int64_t K, ActivationParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  // As is stored k-major ([k][m]) so the inner product reads a row of it; +1 column avoids bank conflicts
  // when the tile is written.
  __shared__ acc_t As[kTileK][kTileM + 1];
  __shared__ acc_t Bs[kTileK][kTileN];

  const int tx = threadIdx.x;  // along N
  const int ty = threadIdx.y;  // along M
  const int tid = ty * kThreadsN + tx;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;

  acc_t acc[kMicroM][kMicroN];
#pragma unroll
  for (int i = 0; i < kMicroM; ++i) {
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) acc[i][j] = acc_t(0);
  }

  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    // Stage A[m0:m0+64, k0:k0+16] and B[k0:k0+16, n0:n0+64], zero outside the matrices.
#pragma unroll
    for (int r = 0; r < (kTileM * kTileK) / kGemmThreads; ++r) {
      const int l = tid + r * kGemmThreads;
      const int kl = l % kTileK;
      const int ml = l / kTileK;
      const int64_t gm = m0 + ml;
      const int64_t gk = k0 + kl;
      As[kl][ml] = (gm < M && gk < K) ? static_cast<acc_t>(a[gm * a_sm + gk * a_sk]) : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < (kTileK * kTileN) / kGemmThreads; ++r) {
      const int l = tid + r * kGemmThreads;
      const int nl = l % kTileN;
      const int kl = l / kTileN;
      const int64_t gn = n0 + nl;
      const int64_t gk = k0 + kl;
      Bs[kl][nl] = (gn < N && gk < K) ? static_cast<acc_t>(b[gk * b_sk + gn * b_sn]) : acc_t(0);
    }
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t av[kMicroM];
      acc_t bv[kMicroN];
#pragma unroll
      for (int i = 0; i < kMicroM; ++i) av[i] = As[kk][ty + i * kThreadsM];
#pragma unroll
      for (int j = 0; j < kMicroN; ++j) bv[j] = Bs[kk][tx + j * kThreadsN];
#pragma unroll
      for (int i = 0; i < kMicroM; ++i) {
#pragma unroll
        for (int j = 0; j < kMicroN; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }

  // Epilogue: bias, activation, one write per element. Thread (ty, tx) owns rows ty + 16 i, columns tx + 16 j.
#pragma unroll
  for (int i = 0; i < kMicroM; ++i) {
    const int64_t m = m0 + ty + i * kThreadsM;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) {
      const int64_t n = n0 + tx + j * kThreadsN;
      if (n >= N) continue;
      acc_t v = acc[i][j];
      if (bias != nullptr) v += static_cast<acc_t>(bias[n]);
      c[m * N + n] = static_cast<scalar_t>(ActivationFn<A>::forward(v, p));
    }
  }
}

// One operand of the GEMM: a pointer and the strides of its two logical dimensions.
template <typename scalar_t>
struct Operand {
  const scalar_t* ptr;
  int64_t stride0;
  int64_t stride1;
};

// c [M, N] (contiguous, already allocated) = act(A . B + bias). Launches nothing when c is empty; an
// empty inner dimension (K == 0) gives act(bias).
template <typename scalar_t>
void launch_gemm(Operand<scalar_t> a, Operand<scalar_t> b, const scalar_t* bias, scalar_t* c, int64_t M, int64_t N,
                 int64_t K, Activation act, const ActivationParams& params = {}) {
  if (M == 0 || N == 0) return;
  const int64_t tiles_m = (M + kTileM - 1) / kTileM;
  const int64_t tiles_n = (N + kTileN - 1) / kTileN;
  TORCH_CHECK(tiles_m <= std::numeric_limits<int32_t>::max() && tiles_n <= 65535,
              "dlkernels.linear_act: the matrix is too large for the CUDA kernel's grid (", M, " x ", N, ")");
  const dim3 grid(static_cast<unsigned int>(tiles_m), static_cast<unsigned int>(tiles_n));
  const dim3 block(kThreadsN, kThreadsM);
  const auto stream = current_stream();
  dispatch_activation(act, [&](auto tag) {
    constexpr Activation kAct = decltype(tag)::value;
    launch<gemm_bias_act_kernel<scalar_t, kAct>>(grid, block, 0, stream, a.ptr, a.stride0, a.stride1, b.ptr, b.stride0,
                                                 b.stride1, bias, c, M, N, K, params);
  });
}

// act(x2 @ w^T + bias) into a new contiguous tensor of `shape` (M x N elements); x2 [M, K] and w [N, K]
// contiguous.
at::Tensor linear_act_forward_2d(const at::Tensor& x2, const at::Tensor& w, const at::Tensor& b, const LinearShape& d,
                                 Activation act, const ActivationParams& params, c10::IntArrayRef shape) {
  at::Tensor out = at::empty(shape, x2.options());
  if (out.numel() == 0) return out;
  DLK_DISPATCH_FLOAT_TYPES(x2.scalar_type(), "dlkernels_linear_act_cuda", [&] {
    launch_gemm<scalar_t>({x2.const_data_ptr<scalar_t>(), d.K, 1}, {w.const_data_ptr<scalar_t>(), 1, d.K},
                          b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), d.M,
                          d.N, d.K, act, params);
  });
  return out;
}

at::Tensor linear_act_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              c10::string_view activation, double alpha, double beta) {
  constexpr const char* op = "linear_act";
  const LinearShape d = check_linear_args(x, weight, bias, op, kDeviceType);
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, op);
  const DeviceGuard guard(x.device());
  if (d.M * d.N == 0) return at::empty(d.out_shape, x.options());
  const at::Tensor x2 = x.reshape({d.M, d.K}).contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  // Allocated in its final shape: a custom op must not return a view (the caller may modify it in place).
  return linear_act_forward_2d(x2, w, b, d, act, params, d.out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const at::Tensor& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   const std::optional<at::Tensor>& out,
                                                                   c10::string_view activation, double alpha,
                                                                   double beta, std::array<bool, 3> output_mask) {
  constexpr const char* op = "linear_act_backward";
  const LinearShape d = check_linear_args(x, weight, bias, op, kDeviceType);
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, op);
  check_output_like(x, grad_out, "grad_out", d.out_shape, op);
  check_saved_output(x, out, grad_needs_output(act), activation, d.out_shape, op);
  const bool with_bias = has_bias(bias);
  const DeviceGuard guard(x.device());

  // x, weight and bias are read only where needed: autograd passes expanded stand-ins for the others.
  const bool recompute = grad_needs_preactivation(act);
  const at::Tensor x2 = output_mask[1] || recompute ? x.reshape({d.M, d.K}).contiguous() : at::Tensor();
  const at::Tensor w = output_mask[0] || recompute ? weight.contiguous() : at::Tensor();
  const at::Tensor b = with_bias && recompute ? bias->contiguous() : at::Tensor();
  const at::Tensor g2 = grad_out.reshape({d.M, d.N}).contiguous();

  // gz = grad_out * act'(saved): saved is the output, or the pre-activation recomputed by the forward GEMM.
  at::Tensor gz = g2;
  if (act != Activation::None && d.M * d.N > 0) {
    const at::Tensor saved = recompute ? linear_act_forward_2d(x2, w, b, d, Activation::None, params, {d.M, d.N})
                                       : out->reshape({d.M, d.N}).contiguous();
    gz = activation_grad_cuda(g2, saved, act, params);
  }

  at::Tensor grad_x, grad_w, grad_b;
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_linear_act_backward_cuda", [&] {
    const scalar_t* gz_ptr = gz.const_data_ptr<scalar_t>();
    if (output_mask[0]) {
      // grad_x [M, K] = gz [M, N] . W [N, K]
      grad_x = at::empty({d.M, d.K}, x.options());
      launch_gemm<scalar_t>({gz_ptr, d.N, 1}, {w.const_data_ptr<scalar_t>(), d.K, 1}, nullptr,
                            grad_x.mutable_data_ptr<scalar_t>(), d.M, d.K, d.N, Activation::None);
      grad_x = grad_x.view(x.sizes());
    }
    if (output_mask[1]) {
      // grad_W [N, K] = gz^T [N, M] . x [M, K]  (M == 0 gives zeros)
      grad_w = at::empty({d.N, d.K}, x.options());
      launch_gemm<scalar_t>({gz_ptr, 1, d.N}, {x2.const_data_ptr<scalar_t>(), d.K, 1}, nullptr,
                            grad_w.mutable_data_ptr<scalar_t>(), d.N, d.K, d.M, Activation::None);
    }
  });
  if (output_mask[2] && with_bias) grad_b = channel_sum_cuda(gz, d.M, d.N, 1);
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace cuda
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(DLK_CUDA_NAMESPACE, DLK_CUDA_DISPATCH_KEY, m) {
  m.impl("linear_act", &dlkernels::cuda::linear_act_forward);
  m.impl("linear_act_backward", &dlkernels::cuda::linear_act_backward);
}
