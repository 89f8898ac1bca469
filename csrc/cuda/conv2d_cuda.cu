// Conv2d + bias + activation on CUDA, and its backward: the op-level glue (argument checks, allocation,
// layouts, and the choice of kernel); the kernels are in cuda/conv2d_kernels.cuh.
//
//   forward  an implicit GEMM on the tensor cores (conv2d_forward_kernel) for bfloat16 and float16, and for
//            float32 as TF32 when torch.backends.cudnn.allow_tf32 is on (as torch's own convolution);
//            bias + activation fused in its epilogue. float64, float32 with TF32 off and depthwise
//            convolutions (groups == C == K) run the direct kernel.
//   grad_x   the transposed implicit GEMM (conv2d_grad_input_kernel) on the same terms, else the direct
//            gather kernel.
//   grad_w   the weight-gradient implicit GEMM (conv2d_grad_weight_kernel), split along the positions, its
//            partial sums reduced in a fixed order (deterministic); else one block per weight element.
//   grad_b   per-channel sum of gz (cuda_utils.cuh).
// gz = grad_out * act'(saved) is one elementwise pass before the backward kernels (as linear_act's), with
// saved = out, or the pre-activation recomputed by the forward for gelu/gelu_tanh/silu. The implicit GEMMs
// work in x.suggest_memory_format() (channels_last or NCHW, no layout copy of the activations); results come
// in that format; grad_weight is contiguous.
//
// Which implicit-GEMM tile runs: 128 x 128 (kLarge) when that gives at least one wave of CTAs, else 64 x 64
// (kMedium). DLKERNELS_CUDA_CONV_CONFIG=direct|large|medium forces one (tests use it to cover each; what the
// tensor cores cannot run stays on the direct kernels).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "common/shapes.h"
#include "cuda/conv2d_cuda.cuh"
#include "cuda/conv2d_kernels.cuh"
#include "cuda/cuda_utils.cuh"

namespace dlkernels {
namespace cuda {

using conv::ConvGemm;

// DLKERNELS_CUDA_CONV_CONFIG, read on every call (tests change it between calls).
std::optional<ConvConfig> forced_conv_config() {
  const char* env = std::getenv("DLKERNELS_CUDA_CONV_CONFIG");
  if (env == nullptr || *env == 0) return std::nullopt;
  const std::string name(env);
  if (name == "direct") return ConvConfig::kDirect;
  if (name == "large") return ConvConfig::kLarge;
  if (name == "medium") return ConvConfig::kMedium;
  TORCH_CHECK(false, "DLKERNELS_CUDA_CONV_CONFIG must be direct, large or medium, got '", name, "'");
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether an implicit GEMM of this dtype and shape may run on the tensor cores.
bool implicit_gemm_ok(at::ScalarType dtype, const ConvShape& g) {
  const bool tensor_cores =
      dtype == at::kHalf || dtype == at::kBFloat16 || (dtype == at::kFloat && at::globalContext().allowTF32CuDNN());
  const bool depthwise = g.groups == g.C && g.groups == g.K;
  return tensor_cores && !depthwise;
}

// The tile of an implicit GEMM with M x N outputs per group.
ConvConfig choose_conv_config(int64_t M, int64_t N, int64_t groups) {
  if (const auto forced = forced_conv_config()) return *forced;
  const int64_t large = ceil_div(M, ConvLargeTile::BM) * ceil_div(N, ConvLargeTile::BN) * groups;
  return large >= sm_count() ? ConvConfig::kLarge : ConvConfig::kMedium;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// B of an implicit GEMM: w3 [groups, N, K] (any strides) as [groups][N][ldb] rows, zero past K, ldb the next
// multiple of the 16-byte vector width (the core loads B in 16-byte chunks).
at::Tensor pack_b(const at::Tensor& w3, int64_t vec) {
  const int64_t K = w3.size(2);
  at::Tensor b = at::zeros({w3.size(0), w3.size(1), ceil_div(K, vec) * vec}, w3.options());
  b.narrow(2, 0, K).copy_(w3);
  return b;
}

}  // namespace

at::Tensor conv2d_forward_b(const at::Tensor& weight, const ConvShape& g, bool channels_last, int64_t vec) {
  // [groups, K/groups, reduction] in the gather's order: (r, s, c) for channels_last, (c, r, s) for NCHW.
  const at::Tensor w3 =
      (channels_last ? weight.permute({0, 2, 3, 1}) : weight).reshape({g.groups, g.Kg, g.Cg * g.KH * g.KW});
  return pack_b(w3, vec);
}

namespace {

// out (allocated in the source's layout) = act(implicit GEMM + bias) per group, on tile TileT.
template <typename T, class TileT, bool Transposed>
void launch_implicit_gemm(const ConvGemm<T>& p, int64_t groups, bool channels_last, Activation act,
                          const ActivationParams& ap) {
  using Core = gemm::Core<T, TileT, gemm::Major::kK, gemm::Major::kK>;
  constexpr int kVec = gemm::Smem<T>::kVec;
  const bool vec = channels_last && p.cg % kVec == 0 && p.SC % kVec == 0 && aligned16(p.src);
  const int64_t tiles_m = ceil_div(p.M, TileT::BM), tiles_n = ceil_div(p.N, TileT::BN);
  TORCH_CHECK(tiles_m < (int64_t(1) << 31) && tiles_n <= 65535 && groups <= 65535,
              "dlkernels.conv2d: the problem is too large for the CUDA kernel's grid");
  const dim3 grid(static_cast<unsigned int>(tiles_m), static_cast<unsigned int>(tiles_n),
                  static_cast<unsigned int>(groups));
  const auto stream = current_stream();
  dispatch_bool(channels_last, [&](auto cl_tag) {
    constexpr bool kCl = decltype(cl_tag)::value;
    dispatch_bool(vec, [&](auto vec_tag) {
      constexpr bool kVecLoads = kCl && decltype(vec_tag)::value;
      if constexpr (Transposed) {
        launch<conv::conv2d_grad_input_kernel<T, TileT, kCl, kVecLoads>>(grid, TileT::kThreads, Core::kSmemBytes,
                                                                         stream, p, ap);
      } else {
        dispatch_activation(act, [&](auto tag) {
          constexpr Activation kAct = decltype(tag)::value;
          launch<conv::conv2d_forward_kernel<T, TileT, kCl, kVecLoads, kAct>>(grid, TileT::kThreads, Core::kSmemBytes,
                                                                              stream, p, ap);
        });
      }
    });
  });
}

template <typename T, bool Transposed>
void run_implicit_gemm(const ConvGemm<T>& p, int64_t groups, bool channels_last, Activation act,
                       const ActivationParams& ap) {
  if (p.M == 0 || p.N == 0) return;
  switch (choose_conv_config(p.M, p.N, groups)) {
    case ConvConfig::kLarge:
      launch_implicit_gemm<T, ConvLargeTile, Transposed>(p, groups, channels_last, act, ap);
      break;
    case ConvConfig::kMedium:
    case ConvConfig::kDirect:  // the caller runs the direct kernel for kDirect; not reached
      launch_implicit_gemm<T, ConvMediumTile, Transposed>(p, groups, channels_last, act, ap);
      break;
  }
}

}  // namespace

bool use_implicit_gemm(at::ScalarType dtype, const ConvShape& g) {
  if (!implicit_gemm_ok(dtype, g)) return false;
  const auto forced = forced_conv_config();
  return !forced || *forced != ConvConfig::kDirect;
}

namespace {

// act(conv(x, w) + bias) on the implicit GEMM: x contiguous in `fmt`, the result in `fmt`.
at::Tensor conv2d_forward_implicit(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& b,
                                   const ConvShape& g, at::MemoryFormat fmt, Activation act,
                                   const ActivationParams& params) {
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({g.N, g.K, g.OH, g.OW}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_conv2d_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = GemmType<scalar_t>;
      const at::Tensor bp = conv2d_forward_b(weight, g, cl, gemm::Smem<T>::kVec);
      const ConvGemm<T> p =
          conv2d_forward_gemm(reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()), bp,
                              b.defined() ? reinterpret_cast<const T*>(b.const_data_ptr<scalar_t>()) : nullptr,
                              reinterpret_cast<T*>(out.mutable_data_ptr<scalar_t>()), g);
      run_implicit_gemm<T, false>(p, g.groups, cl, act, params);
    }
  });
  return out;
}

// grad_x = the transposed implicit GEMM of gz (contiguous in `fmt`) with the weights; the result in `fmt`.
at::Tensor conv2d_grad_input_implicit(const at::Tensor& gz, const at::Tensor& weight, const ConvShape& g,
                                      at::MemoryFormat fmt) {
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_x = at::empty({g.N, g.C, g.H, g.W}, gz.options().memory_format(fmt));
  if (grad_x.numel() == 0) return grad_x;
  // B [groups, C/groups, reduction]: (r, s, k) for channels_last, (k, r, s) for NCHW.
  const at::Tensor w5 = weight.reshape({g.groups, g.Kg, g.Cg, g.KH, g.KW});
  const at::Tensor w3 =
      (cl ? w5.permute({0, 2, 3, 4, 1}) : w5.permute({0, 2, 1, 3, 4})).reshape({g.groups, g.Cg, g.Kg * g.KH * g.KW});
  DLK_DISPATCH_FLOAT_TYPES(gz.scalar_type(), "dlkernels_conv2d_grad_input_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = GemmType<scalar_t>;
      const at::Tensor bp = pack_b(w3, gemm::Smem<T>::kVec);
      const ConvGemm<T> p{reinterpret_cast<const T*>(gz.const_data_ptr<scalar_t>()),
                          reinterpret_cast<const T*>(bp.const_data_ptr<scalar_t>()),
                          bp.size(2),
                          nullptr,
                          reinterpret_cast<T*>(grad_x.mutable_data_ptr<scalar_t>()),
                          g.N * g.H * g.W,
                          g.Cg,
                          g.Kg * g.KH * g.KW,
                          g.K,
                          g.OH,
                          g.OW,
                          g.Kg,
                          g.H,
                          g.W,
                          g.C,
                          g.KH,
                          g.KW,
                          g.sh,
                          g.sw,
                          g.ph,
                          g.pw,
                          g.dh,
                          g.dw};
      run_implicit_gemm<T, true>(p, g.groups, cl, Activation::None, {});
    }
  });
  return grad_x;
}

// Splits of a reduction of k_tiles k-tiles that give about two waves of `ctas` CTAs.
int fill_splits(int64_t ctas, int64_t k_tiles) {
  const int64_t want = ceil_div(2 * sm_count(), std::max<int64_t>(ctas, 1));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, k_tiles, 64})));
}

// grad_w (contiguous [K, C/groups, KH, KW]) of the weight-gradient GEMM on tile TileT: partial sums per split,
// then the ordered reduction.
template <typename T, class TileT>
void launch_grad_weight(const ConvGemm<T>& p, const T* gz, int64_t groups, bool channels_last, T* grad_w,
                        const ConvShape& g, const at::TensorOptions& options) {
  using Core = gemm::Core<T, TileT, gemm::Major::kMN, gemm::Major::kMN>;
  constexpr int kVec = gemm::Smem<T>::kVec;
  const bool vec = channels_last && g.Cg % kVec == 0 && g.C % kVec == 0 && g.Kg % kVec == 0 && g.K % kVec == 0 &&
                   aligned16(p.src) && aligned16(gz);
  // Rows: the group's output channels, columns: its taps, reduction: the positions.
  const int64_t tiles_m = ceil_div(p.N, TileT::BM), tiles_n = ceil_div(p.K, TileT::BN);
  const int64_t k_tiles = std::max<int64_t>(1, ceil_div(p.M, Core::BK));
  int splits = fill_splits(tiles_m * tiles_n * groups, k_tiles);
  const int64_t per_split = ceil_div(k_tiles, splits) * Core::BK;
  splits = static_cast<int>(std::max<int64_t>(1, ceil_div(p.M, per_split)));
  TORCH_CHECK(tiles_m < (int64_t(1) << 31) && tiles_n <= 65535 && groups * splits <= 65535,
              "dlkernels.conv2d: the weight gradient is too large for the CUDA kernel's grid");
  at::Tensor partial = at::empty({groups, splits, p.N, p.K}, options.dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned int>(tiles_m), static_cast<unsigned int>(tiles_n),
                  static_cast<unsigned int>(groups * splits));
  const auto stream = current_stream();
  dispatch_bool(channels_last, [&](auto cl_tag) {
    constexpr bool kCl = decltype(cl_tag)::value;
    dispatch_bool(vec, [&](auto vec_tag) {
      constexpr bool kVecLoads = kCl && decltype(vec_tag)::value;
      launch<conv::conv2d_grad_weight_kernel<T, TileT, kCl, kVecLoads>>(
          grid, TileT::kThreads, Core::kSmemBytes, stream, p, gz, per_split, splits, partial.mutable_data_ptr<float>());
    });
    const int64_t total = g.K * p.K;
    launch<conv::conv2d_grad_weight_reduce_kernel<T, kCl>>(grid_size(total), kThreads, 0, stream,
                                                           partial.const_data_ptr<float>(), splits, grad_w, total, g.Kg,
                                                           g.Cg, g.KH, g.KW);
  });
}

// grad_w (contiguous) = the weight-gradient implicit GEMM of gz and x, both contiguous in `fmt`.
at::Tensor conv2d_grad_weight_implicit(const at::Tensor& gz, const at::Tensor& x, const at::Tensor& weight,
                                       const ConvShape& g, at::MemoryFormat fmt) {
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_w = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_w.numel() == 0) return grad_w;
  if (g.N * g.OH * g.OW == 0) return grad_w.zero_();
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_conv2d_grad_weight_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = GemmType<scalar_t>;
      // The forward's geometry, x as the source (its out and B unused).
      const ConvGemm<T> p = conv2d_forward_gemm<T>(reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()),
                                                   at::Tensor(), nullptr, nullptr, g);
      const T* gz_ptr = reinterpret_cast<const T*>(gz.const_data_ptr<scalar_t>());
      T* out = reinterpret_cast<T*>(grad_w.mutable_data_ptr<scalar_t>());
      const int64_t large = ceil_div(g.Kg, ConvLargeTile::BM) * ceil_div(p.K, ConvLargeTile::BN) * g.groups;
      const auto forced = forced_conv_config();
      const bool use_large = forced ? *forced == ConvConfig::kLarge : large >= sm_count();
      if (use_large) {
        launch_grad_weight<T, ConvLargeTile>(p, gz_ptr, g.groups, cl, out, g, x.options());
      } else {
        launch_grad_weight<T, ConvMediumTile>(p, gz_ptr, g.groups, cl, out, g, x.options());
      }
    }
  });
  return grad_w;
}

// act(conv(x, w) + bias) into a new NCHW-contiguous tensor; x and w NCHW-contiguous, b contiguous or undefined.
at::Tensor conv2d_forward_nchw(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const ConvShape& g,
                               Activation act, const ActivationParams& params) {
  at::Tensor out = at::empty({g.N, g.K, g.OH, g.OW}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = current_stream();
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_conv2d_cuda", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation kAct = decltype(tag)::value;
      launch<conv::conv2d_direct_forward_kernel<scalar_t, kAct>>(
          grid_size(total), kThreads, 0, stream, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), g, total, params);
    });
  });
  return out;
}

}  // namespace

at::Tensor in_format(const at::Tensor& t, at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast ? t.contiguous(fmt) : t;
}

at::Tensor conv2d_forward_in(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& b, const ConvShape& g,
                             at::MemoryFormat fmt, Activation act, const ActivationParams& params) {
  if (use_implicit_gemm(x_in.scalar_type(), g)) {
    return conv2d_forward_implicit(x_in.contiguous(fmt), weight, b, g, fmt, act, params);
  }
  return in_format(conv2d_forward_nchw(x_in.contiguous(), weight.contiguous(), b, g, act, params), fmt);
}

at::MemoryFormat conv2d_grad_format(const at::Tensor& x, const ConvShape& g) {
  // gz lives in x's format when the implicit GEMM computes grad_x, NCHW for the direct kernels.
  return use_implicit_gemm(x.scalar_type(), g) ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_from_gz(const at::Tensor& gz, const at::Tensor& x_in,
                                                                       const at::Tensor& weight, const ConvShape& g,
                                                                       std::array<bool, 3> output_mask) {
  const auto fmt = x_in.suggest_memory_format();
  const bool implicit = use_implicit_gemm(x_in.scalar_type(), g);
  const bool gz_cl = conv2d_grad_format(x_in, g) == at::MemoryFormat::ChannelsLast;
  const auto stream = current_stream();
  at::Tensor grad_x, grad_w, grad_b;
  if (output_mask[0]) {
    if (implicit) {
      grad_x = conv2d_grad_input_implicit(gz, weight, g, fmt);
    } else {
      const at::Tensor w = weight.contiguous();
      grad_x = at::empty({g.N, g.C, g.H, g.W}, x_in.options().memory_format(at::MemoryFormat::Contiguous));
      const int64_t total = grad_x.numel();
      if (total > 0) {
        DLK_DISPATCH_FLOAT_TYPES(x_in.scalar_type(), "dlkernels_conv2d_grad_input_cuda", [&] {
          launch<conv::conv2d_direct_grad_input_kernel<scalar_t>>(
              grid_size(total), kThreads, 0, stream, gz.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
              grad_x.mutable_data_ptr<scalar_t>(), g, total);
        });
      }
      grad_x = in_format(grad_x, fmt);
    }
  }
  if (output_mask[1]) {
    if (implicit) {
      grad_w = conv2d_grad_weight_implicit(gz, x_in.contiguous(fmt), weight, g, fmt);
    } else {
      const at::Tensor x = x_in.contiguous();
      grad_w = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
      const int64_t total = grad_w.numel();
      if (total > 0) {  // an empty batch gives zeros: every block sums nothing
        DLK_DISPATCH_FLOAT_TYPES(x_in.scalar_type(), "dlkernels_conv2d_grad_weight_cuda", [&] {
          launch<conv::conv2d_direct_grad_weight_kernel<scalar_t>>(
              grid_size_blocks(total), kThreads, 0, stream, gz.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
              grad_w.mutable_data_ptr<scalar_t>(), g, total);
        });
      }
    }
  }
  if (output_mask[2]) {
    grad_b = gz_cl ? channel_sum_cuda(gz, g.N * g.OH * g.OW, g.K, 1) : channel_sum_cuda(gz, g.N, g.K, g.OH * g.OW);
  }
  return {grad_x, grad_w, grad_b};
}

namespace {

at::Tensor conv2d_forward(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                          c10::string_view activation, double alpha, double beta) {
  constexpr const char* op = "conv2d";
  const ConvShape g = check_conv_args(x_in, weight, bias, stride, padding, dilation, groups, op, kDeviceType);
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, op);
  const DeviceGuard guard(x_in.device());
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  return conv2d_forward_in(x_in, weight, b, g, x_in.suggest_memory_format(), act, params);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out_in, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups, c10::string_view activation, double alpha,
    double beta, std::array<bool, 3> output_mask) {
  constexpr const char* op = "conv2d_backward";
  const ConvShape g = check_conv_args(x_in, weight, bias, stride, padding, dilation, groups, op, kDeviceType);
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, op);
  const std::array<int64_t, 4> out_shape{g.N, g.K, g.OH, g.OW};
  check_output_like(x_in, grad_out_in, "grad_out", out_shape, op);
  check_saved_output(x_in, out_in, grad_needs_output(act), activation, out_shape, op);
  const bool with_bias = has_bias(bias);
  const DeviceGuard guard(x_in.device());
  const auto gz_fmt = conv2d_grad_format(x_in, g);
  // x, weight and bias are read only where needed: autograd passes expanded stand-ins for the others.
  const bool recompute = grad_needs_preactivation(act);
  const at::Tensor b = with_bias && recompute ? bias->contiguous() : at::Tensor();
  const at::Tensor grad_out = grad_out_in.contiguous(gz_fmt);

  // gz = grad_out * act'(saved), contiguous in gz_fmt.
  at::Tensor gz = grad_out;
  if (act != Activation::None && grad_out.numel() > 0) {
    const at::Tensor saved = recompute ? conv2d_forward_in(x_in, weight, b, g, gz_fmt, Activation::None, params)
                                       : out_in->contiguous(gz_fmt);
    gz = activation_grad_cuda(grad_out, saved, act, params);
  }
  return conv2d_backward_from_gz(gz, x_in, weight, g, {output_mask[0], output_mask[1], output_mask[2] && with_bias});
}

}  // namespace
}  // namespace cuda
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(DLK_CUDA_NAMESPACE, DLK_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d", &dlkernels::cuda::conv2d_forward);
  m.impl("conv2d_backward", &dlkernels::cuda::conv2d_backward);
}
