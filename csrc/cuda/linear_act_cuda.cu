// Linear + bias + activation on CUDA: y = act(x @ weight^T + bias), and its backward.
//
// Three GEMMs, each C[M, N] = A . B in the orientation of the tensors as they are (nothing is copied
// transposed):
//   forward      y      = x  @ W^T  (A = x [M, K] and B = W [N, K]: both K-major; bias + act fused)
//   grad_input   grad_x = gz @ W    (A = gz [M, N] K-major, B = W [N, K] MN-major)
//   grad_weight  grad_W = gz^T @ x  (A = gz [M, N] MN-major, B = x [M, K] MN-major)
// float16 and bfloat16, and float32 when torch.backends.cuda.matmul.allow_tf32 is on, run on the
// tensor-core core (cuda/gemm_core.cuh) in one of the named configurations below; float64, float32 with TF32
// off and operands whose rows are not 16-byte aligned (K, or N for the backward, not a multiple of 8 16-bit
// or 4 float elements) run on a 64x64 CUDA-core GEMM (gemm_bias_act_kernel). gz = grad_out * act'(saved)
// is one elementwise pass before the two backward GEMMs, which both read it (cuda_utils.cuh); grad_bias is
// its column sum.
//
// Which configuration runs (choose_plan): M <= 16 (decode-style batches) takes kSmallM, 16 x 128 tiles with
// the reduction split so that about two waves of CTAs stream the weight once at memory bandwidth (partial
// sums in float, finished by split_k_reduce_kernel with bias and activation); a problem with at least one
// wave of 128 x 128 tiles takes kLarge; anything else kMedium (64 x 64), split along K up to two waves.
// DLKERNELS_CUDA_GEMM_CONFIG=cuda_core|large|medium|small_m[:splits] forces one (tests use it to cover each);
// grad_weight has M as its output rows' count, not a batch, and takes kMedium for small_m.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/gemm_core.cuh"

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

// linear_act's three GEMMs (see the top of the file).
enum class GemmKind { kForward, kGradInput, kGradWeight };

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

// One of the three GEMMs on the CUDA-core kernel (operands as for run_gemm).
template <GemmKind G, typename scalar_t>
void launch_cuda_core(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c, int64_t M, int64_t N,
                      int64_t K, Activation act, const ActivationParams& ap) {
  if constexpr (G == GemmKind::kForward) {
    launch_gemm<scalar_t>({a, K, 1}, {b, 1, K}, bias, c, M, N, K, act, ap);
  } else if constexpr (G == GemmKind::kGradInput) {
    launch_gemm<scalar_t>({a, K, 1}, {b, N, 1}, bias, c, M, N, K, act, ap);
  } else {
    launch_gemm<scalar_t>({a, 1, M}, {b, N, 1}, bias, c, M, N, K, act, ap);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The tensor-core GEMMs

enum class Config { kCudaCore, kLarge, kMedium, kSmallM };

using LargeTile = gemm::Tile<128, 128, 64, 64, 3>;
using MediumTile = gemm::Tile<64, 64, 32, 32, 4>;
using SmallMTile = gemm::Tile<16, 128, 16, 32, 4>;

template <GemmKind G>
constexpr gemm::Major kAMajor = G == GemmKind::kGradWeight ? gemm::Major::kMN : gemm::Major::kK;
template <GemmKind G>
constexpr gemm::Major kBMajor = G == GemmKind::kForward ? gemm::Major::kK : gemm::Major::kMN;

// The kernels of the three GEMMs: the core with each one's operand layouts. Split: partial sums only.
template <typename T, class TileT, Activation A, bool Split>
__global__ void __launch_bounds__(TileT::kThreads)
    linear_act_forward_kernel(gemm::Problem<T> p, const T* bias, T* out, float* partial, ActivationParams ap) {
  gemm::run<T, TileT, kAMajor<GemmKind::kForward>, kBMajor<GemmKind::kForward>, A, Split>(p, bias, out, partial, ap);
}
template <typename T, class TileT, Activation A, bool Split>
__global__ void __launch_bounds__(TileT::kThreads)
    linear_act_grad_input_kernel(gemm::Problem<T> p, const T* bias, T* out, float* partial, ActivationParams ap) {
  gemm::run<T, TileT, kAMajor<GemmKind::kGradInput>, kBMajor<GemmKind::kGradInput>, A, Split>(p, bias, out, partial,
                                                                                              ap);
}
template <typename T, class TileT, Activation A, bool Split>
__global__ void __launch_bounds__(TileT::kThreads)
    linear_act_grad_weight_kernel(gemm::Problem<T> p, const T* bias, T* out, float* partial, ActivationParams ap) {
  gemm::run<T, TileT, kAMajor<GemmKind::kGradWeight>, kBMajor<GemmKind::kGradWeight>, A, Split>(p, bias, out, partial,
                                                                                                ap);
}

template <GemmKind G, typename T, class TileT, Activation A, bool Split>
constexpr auto kernel_of() {
  if constexpr (G == GemmKind::kForward) return &linear_act_forward_kernel<T, TileT, A, Split>;
  if constexpr (G == GemmKind::kGradInput) return &linear_act_grad_input_kernel<T, TileT, A, Split>;
  if constexpr (G == GemmKind::kGradWeight) return &linear_act_grad_weight_kernel<T, TileT, A, Split>;
}

struct Plan {
  Config config;
  int splits;  // 0: as many as fill two waves
};

// DLKERNELS_CUDA_GEMM_CONFIG, read on every call (tests change it between calls).
std::optional<Plan> forced_plan() {
  const char* env = std::getenv("DLKERNELS_CUDA_GEMM_CONFIG");
  if (env == nullptr || *env == 0) return std::nullopt;
  const std::string text(env);
  const auto colon = text.find(':');
  const std::string name = text.substr(0, colon);
  int splits = 0;
  if (colon != std::string::npos) {
    splits = std::atoi(text.c_str() + colon + 1);
    TORCH_CHECK(splits >= 1 && splits <= 64, "DLKERNELS_CUDA_GEMM_CONFIG: splits must be in [1, 64], got '", text, "'");
  }
  const std::pair<const char*, Config> names[] = {{"cuda_core", Config::kCudaCore},
                                                  {"large", Config::kLarge},
                                                  {"medium", Config::kMedium},
                                                  {"small_m", Config::kSmallM}};
  for (const auto& [n, c] : names) {
    if (name == n) return Plan{c, splits};
  }
  TORCH_CHECK(false,
              "DLKERNELS_CUDA_GEMM_CONFIG must be cuda_core, large, medium or small_m (optionally :splits), got '",
              text, "'");
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits of the reduction that give about two waves of CTAs, each split at least one k-tile.
int fill_splits(int64_t ctas, int64_t k_tiles) {
  const int64_t want = ceil_div(2 * sm_count(), std::max<int64_t>(ctas, 1));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, k_tiles, 64})));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The configuration of one GEMM (see the top of the file).
template <typename T>
Plan choose_plan(GemmKind g, const T* a, const T* b, int64_t M, int64_t N, int64_t K) {
  constexpr int kVec = gemm::Smem<T>::kVec;
  bool tensor_cores = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16> ||
                      (std::is_same_v<T, float> && at::globalContext().allowTF32CuBLAS());
  // Rows of both operands start on 16 bytes: lda and ldb are K for the forward, N and K of the linear layer
  // (here: K and N) for the backward.
  const int64_t lda = g == GemmKind::kForward ? K : g == GemmKind::kGradInput ? K : M;
  const int64_t ldb = g == GemmKind::kForward ? K : N;
  tensor_cores = tensor_cores && lda % kVec == 0 && ldb % kVec == 0 && aligned16(a) && aligned16(b);
  if (const auto forced = forced_plan()) {
    Plan plan = *forced;
    if (!tensor_cores) return {Config::kCudaCore, 1};  // what the tensor cores cannot run stays correct
    if (plan.config == Config::kSmallM && g == GemmKind::kGradWeight) plan.config = Config::kMedium;
    return plan;
  }
  if (!tensor_cores) return {Config::kCudaCore, 1};
  const int64_t k_tiles = ceil_div(K, gemm::Smem<T>::BK);
  if (M <= 16 && g != GemmKind::kGradWeight) {
    return {Config::kSmallM, fill_splits(ceil_div(M, SmallMTile::BM) * ceil_div(N, SmallMTile::BN), k_tiles)};
  }
  if (ceil_div(M, LargeTile::BM) * ceil_div(N, LargeTile::BN) >= sm_count()) return {Config::kLarge, 1};
  const int64_t medium = ceil_div(M, MediumTile::BM) * ceil_div(N, MediumTile::BN);
  return {Config::kMedium, medium >= sm_count() ? 1 : fill_splits(medium, k_tiles)};
}

// c [M, N] = act(A . B + bias) on the tensor cores with tile TileT, the reduction in `splits` slices.
template <GemmKind G, typename T, class TileT>
void launch_tensor_core_gemm(const gemm::Problem<T>& problem, int splits, const T* bias, T* c, Activation act,
                             const ActivationParams& ap, const at::TensorOptions& options) {
  using Core = gemm::Core<T, TileT, kAMajor<G>, kBMajor<G>>;
  gemm::Problem<T> p = problem;
  const int64_t k_tiles = std::max<int64_t>(1, ceil_div(p.K, Core::BK));
  splits = std::max(1, std::min<int>(splits, static_cast<int>(std::min<int64_t>(k_tiles, 64))));
  p.k_per_split = ceil_div(k_tiles, splits) * Core::BK;
  splits = static_cast<int>(std::max<int64_t>(1, ceil_div(p.K, p.k_per_split)));
  const bool split = splits > 1 || std::is_same_v<TileT, SmallMTile>;  // kSmallM always finishes in the reduce
  const int64_t tiles_m = ceil_div(p.M, TileT::BM), tiles_n = ceil_div(p.N, TileT::BN);
  TORCH_CHECK(tiles_n < (int64_t(1) << 31) && tiles_m <= 65535, "dlkernels.linear_act: the matrix is too large for ",
              "the CUDA kernel's grid (", p.M, " x ", p.N, ")");
  const dim3 grid(static_cast<unsigned int>(tiles_n), static_cast<unsigned int>(tiles_m), splits);
  const auto stream = current_stream();
  if (!split) {
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation kAct = decltype(tag)::value;
      if constexpr (G == GemmKind::kForward || kAct == Activation::None) {
        launch<kernel_of<G, T, TileT, kAct, false>()>(grid, TileT::kThreads, Core::kSmemBytes, stream, p, bias, c,
                                                      nullptr, ap);
      }
    });
    return;
  }
  at::Tensor partial = at::empty({splits, p.M, p.N}, options.dtype(at::kFloat));
  launch<kernel_of<G, T, TileT, Activation::None, true>()>(grid, TileT::kThreads, Core::kSmemBytes, stream, p, nullptr,
                                                           nullptr, partial.mutable_data_ptr<float>(), ap);
  dispatch_activation(act, [&](auto tag) {
    constexpr Activation kAct = decltype(tag)::value;
    if constexpr (G == GemmKind::kForward || kAct == Activation::None) {
      launch<gemm::split_k_reduce_kernel<T, kAct>>(grid_size(p.M * p.N), kThreads, 0, stream,
                                                   partial.const_data_ptr<float>(), splits, bias, c, p.M, p.N, ap);
    }
  });
}

// c [M, N] = act(A . B + bias) for one of linear_act's GEMMs (a and b as the table at the top: for the forward
// a = x [M, K] and b = W [N, K]; for grad_input a = gz [M, K] and b = W [K, N]; for grad_weight
// a = gz [K, M] and b = x [K, N]), all contiguous.
template <GemmKind G, typename scalar_t>
void run_gemm(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c, int64_t M, int64_t N, int64_t K,
              Activation act, const ActivationParams& ap, const at::TensorOptions& options) {
  if (M == 0 || N == 0) return;
  TORCH_CHECK(G == GemmKind::kForward || act == Activation::None, "linear_act: the backward GEMMs have no activation");
  if constexpr (std::is_same_v<scalar_t, double>) {
    launch_cuda_core<G>(a, b, bias, c, M, N, K, act, ap);
  } else {
    using T = std::conditional_t<std::is_same_v<scalar_t, at::Half>, c10::Half,
                                 std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, c10::BFloat16, float>>;
    const Plan plan = choose_plan<T>(G, a, b, M, N, K);
    const int64_t lda = G == GemmKind::kForward ? K : G == GemmKind::kGradInput ? K : M;
    const int64_t ldb = G == GemmKind::kForward ? K : N;
    const gemm::Problem<T> p{a, lda, b, ldb, M, N, K, K};
    switch (plan.config) {
      case Config::kCudaCore: launch_cuda_core<G>(a, b, bias, c, M, N, K, act, ap); break;
      case Config::kLarge:
        launch_tensor_core_gemm<G, T, LargeTile>(p, plan.splits == 0 ? 1 : plan.splits, bias, c, act, ap, options);
        break;
      case Config::kMedium: {
        const int splits = plan.splits != 0 ? plan.splits
                                            : fill_splits(ceil_div(M, MediumTile::BM) * ceil_div(N, MediumTile::BN),
                                                          ceil_div(K, gemm::Smem<T>::BK));
        launch_tensor_core_gemm<G, T, MediumTile>(p, splits, bias, c, act, ap, options);
        break;
      }
      case Config::kSmallM: {
        const int splits = plan.splits != 0 ? plan.splits
                                            : fill_splits(ceil_div(M, SmallMTile::BM) * ceil_div(N, SmallMTile::BN),
                                                          ceil_div(K, gemm::Smem<T>::BK));
        if constexpr (G != GemmKind::kGradWeight) {
          launch_tensor_core_gemm<G, T, SmallMTile>(p, splits, bias, c, act, ap, options);
        }
        break;
      }
    }
  }
}

// act(x2 @ w^T + bias) into a new contiguous tensor of `shape` (M x N elements); x2 [M, K] and w [N, K]
// contiguous.
at::Tensor linear_act_forward_2d(const at::Tensor& x2, const at::Tensor& w, const at::Tensor& b, const LinearShape& d,
                                 Activation act, const ActivationParams& params, c10::IntArrayRef shape) {
  at::Tensor out = at::empty(shape, x2.options());
  if (out.numel() == 0) return out;
  DLK_DISPATCH_FLOAT_TYPES(x2.scalar_type(), "dlkernels_linear_act_cuda", [&] {
    run_gemm<GemmKind::kForward, scalar_t>(x2.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                           b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                           out.mutable_data_ptr<scalar_t>(), d.M, d.N, d.K, act, params, x2.options());
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
      run_gemm<GemmKind::kGradInput, scalar_t>(gz_ptr, w.const_data_ptr<scalar_t>(), nullptr,
                                               grad_x.mutable_data_ptr<scalar_t>(), d.M, d.K, d.N, Activation::None, {},
                                               x.options());
      grad_x = grad_x.view(x.sizes());
    }
    if (output_mask[1]) {
      // grad_W [N, K] = gz^T [N, M] . x [M, K]  (M == 0 gives zeros)
      grad_w = at::empty({d.N, d.K}, x.options());
      run_gemm<GemmKind::kGradWeight, scalar_t>(gz_ptr, x2.const_data_ptr<scalar_t>(), nullptr,
                                                grad_w.mutable_data_ptr<scalar_t>(), d.N, d.K, d.M, Activation::None,
                                                {}, x.options());
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
