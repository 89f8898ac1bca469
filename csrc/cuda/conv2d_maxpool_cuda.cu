// The fused Conv -> activation -> MaxPool block on CUDA, max_pool2d(act(conv2d(x))), and its backward: the
// op-level glue (argument checks, allocation, layouts, the choice of kernel); the kernels and the pooling's
// semantics (PyTorch's, bit for bit) are in cuda/conv2d_maxpool_kernels.cuh.
//
//   forward  where conv2d runs its implicit GEMM (bfloat16, float16, float32 as TF32 when
//            torch.backends.cudnn.allow_tf32 is on; not depthwise): the implicit GEMM with the pooling in its
//            epilogue (conv2d_maxpool_forward_kernel), each CTA a block of pooled outputs whose windows' conv
//            patch fills at most the tile's rows (choose_tiling). Elsewhere, and for windows of more than 128
//            positions, the direct kernel (one pooled output per thread).
//   backward gz = dL/dz (z the pre-activation) by the routing kernel, act' from the pooled output or from z
//            recomputed by conv2d's forward with no activation (conv2d's rule); then conv2d's own backward
//            passes over gz (grad_x, grad_w, grad_b: cuda/conv2d_cuda.cuh). gz is the one buffer of the conv
//            output's size, the one conv2d's backward needs too (z is overwritten by gz in place).
//
// The tile follows conv2d's rule and DLKERNELS_CUDA_CONV_CONFIG=direct|large|medium: 128 x 128 (large) when
// that gives at least one wave of CTAs, else 64 x 64 (medium); a window of more than 64 positions takes the
// large tile. Results come in x.suggest_memory_format() (the pooled output and the index alike).
#include <array>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "common/shapes.h"
#include "cuda/conv2d_cuda.cuh"
#include "cuda/conv2d_maxpool_kernels.cuh"
#include "cuda/cuda_utils.cuh"

namespace dlkernels {
namespace cuda {
namespace {

constexpr const char* kOp = "conv2d_maxpool";
constexpr const char* kOpBwd = "conv2d_maxpool_backward";

using block::PoolTiling;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The QH x QW pooled outputs per CTA whose windows' conv patch ((QH-1)*sh + kh rows, (QW-1)*sw + kw columns)
// fits in `rows` positions, with the fewest CTAs per image; of those, the widest (longer runs of neighbouring
// positions for the gathers). None when a single window does not fit.
std::optional<PoolTiling> choose_tiling(const BlockShape& b, int rows) {
  std::optional<PoolTiling> best;
  for (int64_t qh = 1; qh <= b.PH; ++qh) {
    const int64_t rh = (qh - 1) * b.sh + b.kh;
    if (rh > rows) break;
    for (int64_t qw = 1; qw <= b.PW; ++qw) {
      const int64_t rw = (qw - 1) * b.sw + b.kw;
      if (rh * rw > rows) break;
      const PoolTiling t{static_cast<int>(qh), static_cast<int>(qw), static_cast<int>(rh),
                         static_cast<int>(rw), ceil_div(b.PH, qh),   ceil_div(b.PW, qw)};
      const int64_t ctas = t.tiles_h * t.tiles_w;
      if (!best || ctas < best->tiles_h * best->tiles_w || (ctas == best->tiles_h * best->tiles_w && t.QW > best->QW)) {
        best = t;
      }
    }
  }
  return best;
}

// The implicit GEMM with the pooling epilogue, on tile TileT: p.out the pooled output and `index` the window
// index, both in the source's layout.
template <typename T, class TileT>
void launch_fused_forward(const conv::ConvGemm<T>& p, const BlockShape& b, const PoolTiling& t, bool channels_last,
                          void* index, bool index8, Activation act, const ActivationParams& ap) {
  using Core = gemm::Core<T, TileT, gemm::Major::kK, gemm::Major::kK>;
  constexpr int kVec = gemm::Smem<T>::kVec;
  const bool vec = channels_last && p.cg % kVec == 0 && p.SC % kVec == 0 && aligned16(p.src);
  const int64_t tiles = b.conv.N * t.tiles_h * t.tiles_w, tiles_n = ceil_div(p.N, TileT::BN);
  TORCH_CHECK(tiles < (int64_t(1) << 31) && tiles_n <= 65535 && b.conv.groups <= 65535, "dlkernels.", kOp,
              ": the problem is too large for the CUDA kernel's grid");
  const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(tiles_n),
                  static_cast<unsigned int>(b.conv.groups));
  const auto stream = current_stream();
  dispatch_bool(channels_last, [&](auto cl_tag) {
    constexpr bool kCl = decltype(cl_tag)::value;
    dispatch_bool(vec, [&](auto vec_tag) {
      constexpr bool kVecLoads = kCl && decltype(vec_tag)::value;
      dispatch_activation(act, [&](auto tag) {
        constexpr Activation kAct = decltype(tag)::value;
        launch<block::conv2d_maxpool_forward_kernel<T, TileT, kCl, kVecLoads, kAct>>(
            grid, TileT::kThreads, Core::kSmemBytes, stream, p, b, t, index, index8, ap);
      });
    });
  });
}

// The fused implicit GEMM, when the tile's rows hold a window; false (nothing launched) otherwise.
bool fused_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const BlockShape& b,
                   bool channels_last, at::Tensor& out, at::Tensor& index, Activation act,
                   const ActivationParams& params) {
  const ConvShape& g = b.conv;
  std::optional<ConvConfig> config = forced_conv_config();
  if (!config) {
    const auto large = choose_tiling(b, ConvLargeTile::BM);
    const int64_t ctas =
        large ? g.N * large->tiles_h * large->tiles_w * ceil_div(g.Kg, ConvLargeTile::BN) * g.groups : 0;
    config = ctas >= sm_count() ? ConvConfig::kLarge : ConvConfig::kMedium;
  }
  std::optional<PoolTiling> tiling =
      *config == ConvConfig::kMedium ? choose_tiling(b, ConvMediumTile::BM) : std::nullopt;
  if (!tiling) {
    config = ConvConfig::kLarge;
    tiling = choose_tiling(b, ConvLargeTile::BM);
  }
  if (!tiling) return false;
  const bool index8 = index.scalar_type() == at::kChar;
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_conv2d_maxpool_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = GemmType<scalar_t>;
      const at::Tensor bp = conv2d_forward_b(weight, g, channels_last, gemm::Smem<T>::kVec);
      const conv::ConvGemm<T> p =
          conv2d_forward_gemm(reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()), bp,
                              bias.defined() ? reinterpret_cast<const T*>(bias.const_data_ptr<scalar_t>()) : nullptr,
                              reinterpret_cast<T*>(out.mutable_data_ptr<scalar_t>()), g);
      if (*config == ConvConfig::kLarge) {
        launch_fused_forward<T, ConvLargeTile>(p, b, *tiling, channels_last, index.mutable_data_ptr(), index8, act,
                                               params);
      } else {
        launch_fused_forward<T, ConvMediumTile>(p, b, *tiling, channels_last, index.mutable_data_ptr(), index8, act,
                                                params);
      }
    }
  });
  return true;
}

std::tuple<at::Tensor, at::Tensor> conv2d_maxpool_forward(const at::Tensor& x_in, const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                                          int64_t groups, c10::string_view activation, double alpha,
                                                          double beta, at::IntArrayRef pool_kernel_size,
                                                          at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                                                          bool pool_ceil_mode) {
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, kOp);
  const BlockShape b =
      check_conv2d_maxpool_args(x_in, weight, bias, stride, padding, dilation, groups, pool_kernel_size, pool_stride,
                                pool_padding, pool_ceil_mode, kOp, kDeviceType);
  const ConvShape& g = b.conv;
  const DeviceGuard guard(x_in.device());
  const auto fmt = x_in.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const auto opts = x_in.options().memory_format(fmt);
  at::Tensor out = at::empty({g.N, g.K, b.PH, b.PW}, opts);
  at::Tensor index = at::empty({g.N, g.K, b.PH, b.PW}, opts.dtype(pool_index_dtype(b.kh, b.kw)));
  if (out.numel() == 0) return {out, index};
  const at::Tensor bias_c = has_bias(bias) ? bias->contiguous() : at::Tensor();
  if (use_implicit_gemm(x_in.scalar_type(), g) &&
      fused_forward(x_in.contiguous(fmt), weight, bias_c, b, cl, out, index, act, params)) {
    return {out, index};
  }
  const at::Tensor x = x_in.contiguous(), w = weight.contiguous();
  const int64_t total = out.numel();
  const bool index8 = index.scalar_type() == at::kChar;
  const auto stream = current_stream();
  DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_conv2d_maxpool_cuda", [&] {
    dispatch_bool(cl, [&](auto cl_tag) {
      dispatch_activation(act, [&](auto tag) {
        launch<block::conv2d_maxpool_direct_forward_kernel<scalar_t, decltype(tag)::value, decltype(cl_tag)::value>>(
            grid_size(total), kThreads, 0, stream, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
            bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
            index.mutable_data_ptr(), index8, b, total, params);
      });
    });
  });
  return {out, index};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_maxpool_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& out, const at::Tensor& index, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view activation, double alpha, double beta,
    at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, bool pool_ceil_mode,
    std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, kOpBwd);
  const BlockShape b = check_conv2d_maxpool_args(x, weight, bias, stride, padding, dilation, groups, pool_kernel_size,
                                                 pool_stride, pool_padding, pool_ceil_mode, kOpBwd, kDeviceType);
  const ConvShape& g = b.conv;
  const std::array<int64_t, 4> y_shape = {g.N, g.K, b.PH, b.PW};
  check_output_like(x, grad_out, "grad_out", y_shape, kOpBwd);
  check_saved_output(x, out, grad_needs_output(act), activation, y_shape, kOpBwd);
  check_block_index(x, index, b, kOpBwd);
  const std::array<bool, 3> mask{output_mask[0], output_mask[1], output_mask[2] && has_bias(bias)};
  if (!mask[0] && !mask[1] && !mask[2]) return {at::Tensor(), at::Tensor(), at::Tensor()};
  const DeviceGuard guard(x.device());

  // gz in the layout conv2d's backward passes take it; z first where act' needs it (x, weight and bias are
  // read only then: autograd passes expanded stand-ins for what it did not save).
  const auto gz_fmt = conv2d_grad_format(x, g);
  const bool recompute = grad_needs_preactivation(act);
  const at::Tensor bias_c = recompute && has_bias(bias) ? bias->contiguous() : at::Tensor();
  at::Tensor gz = recompute ? conv2d_forward_in(x, weight, bias_c, g, gz_fmt, Activation::None, params)
                            : at::empty({g.N, g.K, g.OH, g.OW}, x.options().memory_format(gz_fmt));
  const int64_t total = gz.numel();
  if (total > 0) {
    const at::Tensor go = grad_out.contiguous(gz_fmt);
    const at::Tensor saved = grad_needs_output(act) ? out->contiguous(gz_fmt) : at::Tensor();
    const at::Tensor idx = index.contiguous(gz_fmt);
    const bool index8 = idx.scalar_type() == at::kChar;
    const auto stream = current_stream();
    DLK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dlkernels_conv2d_maxpool_backward_cuda", [&] {
      dispatch_bool(gz_fmt == at::MemoryFormat::ChannelsLast, [&](auto cl_tag) {
        dispatch_activation(act, [&](auto tag) {
          launch<block::conv2d_maxpool_route_kernel<scalar_t, decltype(tag)::value, decltype(cl_tag)::value>>(
              grid_size(total), kThreads, 0, stream, go.const_data_ptr<scalar_t>(),
              saved.defined() ? saved.const_data_ptr<scalar_t>() : nullptr, idx.const_data_ptr(), index8,
              gz.mutable_data_ptr<scalar_t>(), b, total, params);
        });
      });
    });
  }
  return conv2d_backward_from_gz(gz, x, weight, g, mask);
}

}  // namespace
}  // namespace cuda
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(DLK_CUDA_NAMESPACE, DLK_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d_maxpool", &dlkernels::cuda::conv2d_maxpool_forward);
  m.impl("conv2d_maxpool_backward", &dlkernels::cuda::conv2d_maxpool_backward);
}
