// Argument checks and derived sizes of each op, shared by its CPU and CUDA kernels so that both devices
// accept and reject exactly the same calls (with the same messages). They are the only checks of the native
// path: dlkernels.ops normalises its arguments (pairs, padding="same", 3-D input, activation_params) and calls
// the op without checking them again.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include "common/checks.h"
#include "common/shapes.h"

namespace dlkernels {

// The dtypes every kernel implements; the device type the kernel was registered for.
inline void check_kernel_input(const at::Tensor& t, const char* arg, const char* op, c10::DeviceType device) {
  check_floating(t, arg, op);
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, "dlkernels.", op,
                   ": expected '", arg, "' of dtype float32, float64, bfloat16 or float16, got ", st);
  TORCH_CHECK(t.device().type() == device, "dlkernels.", op, ": the ", c10::DeviceTypeName(device), " kernel got '",
              arg, "' on ", t.device());
}

inline bool has_bias(const std::optional<at::Tensor>& bias) { return bias.has_value() && bias->defined(); }

inline void check_bias(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t size, const char* op) {
  if (!has_bias(bias)) return;
  check_same_device_dtype(x, "x", *bias, "bias", op);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == size, "dlkernels.", op, ": expected 'bias' of shape (", size,
                    ",) (weight.shape[0]), got ", bias->sizes());
}

// A tensor a backward op receives in the forward output's shape (grad_out, the saved output): that shape,
// and x's device and dtype.
inline void check_output_like(const at::Tensor& x, const at::Tensor& t, const char* arg, c10::IntArrayRef out_shape,
                              const char* op) {
  check_same_device_dtype(x, "x", t, arg, op);
  TORCH_CHECK(t.sizes() == out_shape, "dlkernels.", op, ": expected '", arg, "' of shape ", out_shape,
              " (the forward output's), got ", t.sizes());
}

// The saved output a backward op receives: required (and then checked like grad_out) when the activation's
// derivative is read from it, ignored otherwise (it may be None then).
inline void check_saved_output(const at::Tensor& x, const std::optional<at::Tensor>& out, bool needed,
                               c10::string_view activation, c10::IntArrayRef out_shape, const char* op) {
  if (!needed) return;
  TORCH_CHECK(out.has_value() && out->defined(), "dlkernels.", op, ": activation '", std::string(activation),
              "' takes its derivative from the forward output: 'out' must be given, got None");
  check_output_like(x, *out, "out", out_shape, op);
}

// ---------------------------------------------------------------------------------------------------------
// linear_act: x [..., K], weight [N, K], bias [N].

struct LinearShape {
  int64_t M, N, K;                 // M = product of the leading dims of x
  std::vector<int64_t> out_shape;  // x.shape[:-1] + [N]
};

inline LinearShape check_linear_args(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, const char* op, c10::DeviceType device) {
  check_kernel_input(x, "x", op, device);
  TORCH_CHECK_VALUE(x.dim() >= 1, "dlkernels.", op, ": expected 'x' to have at least 1 dimension, got a 0-D tensor");
  check_same_device_dtype(x, "x", weight, "weight", op);
  TORCH_CHECK_VALUE(weight.dim() == 2, "dlkernels.", op,
                    ": expected 'weight' to be 2-D (out_features, in_features), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(x.size(-1) == weight.size(1), "dlkernels.", op, ": x.shape[-1] (", x.size(-1),
                    ") must equal weight.shape[1] (", weight.size(1), "); got x ", x.sizes(), " and weight ",
                    weight.sizes());
  check_bias(x, bias, weight.size(0), op);
  LinearShape s;
  s.N = weight.size(0);
  s.K = weight.size(1);
  s.M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) s.M *= x.size(d);  // not numel() / K: K may be 0
  s.out_shape.assign(x.sizes().begin(), x.sizes().end() - 1);
  s.out_shape.push_back(s.N);
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// conv2d: x [N, C, H, W], weight [K, C / groups, KH, KW], bias [K].

struct ConvShape {
  int64_t N, C, H, W;  // input
  int64_t K, KH, KW;   // output channels, kernel
  int64_t OH, OW;      // output
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t groups, Cg, Kg;  // groups; input and output channels per group
};

inline ConvShape check_conv_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                 int64_t groups, const char* op, c10::DeviceType device) {
  check_kernel_input(x, "x", op, device);
  check_spatial_input(x, op);
  check_same_device_dtype(x, "x", weight, "weight", op);
  TORCH_CHECK_VALUE(weight.dim() == 4, "dlkernels.", op,
                    ": expected 'weight' to be 4-D (out_channels, in_channels/groups, kH, kW), got shape ",
                    weight.sizes());
  check_pair(stride, "stride", op, 1);
  check_pair(padding, "padding", op, 0);
  check_pair(dilation, "dilation", op, 1);
  TORCH_CHECK_VALUE(groups >= 1, "dlkernels.", op, ": expected 'groups' to be a positive int, got ", groups);
  ConvShape s;
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  s.K = weight.size(0), s.KH = weight.size(2), s.KW = weight.size(3);
  s.sh = stride[0], s.sw = stride[1], s.ph = padding[0], s.pw = padding[1], s.dh = dilation[0], s.dw = dilation[1];
  s.groups = groups;
  // As torch: zero batch and zero channels are fine, an empty image is not.
  TORCH_CHECK_VALUE(s.H >= 1 && s.W >= 1, "dlkernels.", op, ": expected 'x' with non-zero height and width, got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(s.C % groups == 0 && s.K % groups == 0, "dlkernels.", op, ": 'groups' (", groups,
                    ") must divide the input channels (", s.C, ") and the output channels (", s.K, ")");
  s.Cg = s.C / groups;
  s.Kg = s.K / groups;
  TORCH_CHECK_VALUE(weight.size(1) * groups == s.C, "dlkernels.", op,
                    ": expected weight.shape[1] * groups == input channels, got weight ", weight.sizes(),
                    ", groups=", groups, " and x ", x.sizes());
  TORCH_CHECK_VALUE(s.K >= 1, "dlkernels.", op, ": expected at least one output channel (weight.size(0) >= 1), got ",
                    "weight shape ", weight.sizes());
  TORCH_CHECK_VALUE(s.KH >= 1 && s.KW >= 1, "dlkernels.", op,
                    ": expected a kernel of at least 1 x 1, got weight shape ", weight.sizes());
  check_bias(x, bias, s.K, op);
  s.OH = conv_output_size(s.H, s.KH, s.sh, s.ph, s.dh);
  s.OW = conv_output_size(s.W, s.KW, s.sw, s.pw, s.dw);
  TORCH_CHECK_VALUE(s.OH >= 1 && s.OW >= 1, "dlkernels.", op,
                    ": the input (H x W after padding) is smaller than the dilated ", "kernel: input ", s.H + 2 * s.ph,
                    " x ", s.W + 2 * s.pw, " (with padding ", padding, "), dilated kernel ", s.dh * (s.KH - 1) + 1,
                    " x ", s.dw * (s.KW - 1) + 1);
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// max_pool2d: x [N, C, H, W].

struct PoolShape {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t N, C, H, W, OH, OW;
};

inline PoolShape check_pool_args(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode, const char* op,
                                 c10::DeviceType device) {
  check_kernel_input(x, "x", op, device);
  check_spatial_input(x, op);
  check_pair(kernel_size, "kernel_size", op, 1);
  check_pair(stride, "stride", op, 1);
  check_pair(padding, "padding", op, 0);
  check_pair(dilation, "dilation", op, 1);
  // PyTorch's rule: padding at most half of the kernel size (floor), per dimension. (It also checks half of
  // the dilated kernel, which is implied since dilation >= 1.)
  TORCH_CHECK_VALUE(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, "dlkernels.", op,
                    ": expected 'padding' to be at most half of 'kernel_size', got padding=", padding,
                    " and kernel_size=", kernel_size);
  PoolShape p;
  p.kh = kernel_size[0], p.kw = kernel_size[1], p.sh = stride[0], p.sw = stride[1];
  p.ph = padding[0], p.pw = padding[1], p.dh = dilation[0], p.dw = dilation[1];
  p.N = x.size(0), p.C = x.size(1), p.H = x.size(2), p.W = x.size(3);
  TORCH_CHECK_VALUE(
      p.C > 0 && p.H > 0 && p.W > 0, "dlkernels.", op,
      ": expected 'x' to have non-zero channels, height and width (only the batch may be empty), got shape ",
      x.sizes());
  p.OH = pool_output_size(p.H, p.kh, p.sh, p.ph, p.dh, ceil_mode);
  p.OW = pool_output_size(p.W, p.kw, p.sw, p.pw, p.dw, ceil_mode);
  TORCH_CHECK_VALUE(p.OH >= 1 && p.OW >= 1, "dlkernels.", op, ": the input (", p.H, "x", p.W,
                    ") is too small: the output would be empty with kernel_size=", kernel_size, ", stride=", stride,
                    ", padding=", padding, ", dilation=", dilation, ", ceil_mode=", (ceil_mode ? "true" : "false"),
                    " gives ", p.OH, "x", p.OW);
  return p;
}

// The backward's grad_out and indices: the pooled shape of x, x's device; indices int64.
inline void check_pool_backward_args(const at::Tensor& x, const at::Tensor& grad_out, const at::Tensor& indices,
                                     const PoolShape& p, const char* op) {
  const std::array<int64_t, 4> out_shape{p.N, p.C, p.OH, p.OW};
  check_output_like(x, grad_out, "grad_out", out_shape, op);
  TORCH_CHECK(indices.device() == x.device(), "dlkernels.", op, ": expected 'indices' on ", x.device(),
              " like 'x', got ", indices.device());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "dlkernels.", op, ": expected 'indices' of dtype int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.sizes() == c10::IntArrayRef(out_shape), "dlkernels.", op, ": expected 'indices' of shape ",
              c10::IntArrayRef(out_shape), " (the pooled shape of 'x'), got ", indices.sizes());
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_maxpool: conv2d's arguments, then max pooling of the conv output (dilation 1).

struct BlockShape {
  ConvShape conv;
  int64_t kh, kw, sh, sw, ph, pw;  // the pooling window
  int64_t PH, PW;                  // pooled output
};

// The window index's dtype (contract.pool_index_dtype): int8 when the window has at most 128 positions.
inline at::ScalarType pool_index_dtype(int64_t kh, int64_t kw) { return kh * kw <= 128 ? at::kChar : at::kInt; }

inline BlockShape check_conv2d_maxpool_args(const at::Tensor& x, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                            c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                            c10::IntArrayRef pool_kernel_size, c10::IntArrayRef pool_stride,
                                            c10::IntArrayRef pool_padding, bool ceil_mode, const char* op,
                                            c10::DeviceType device) {
  BlockShape b;
  b.conv = check_conv_args(x, weight, bias, stride, padding, dilation, groups, op, device);
  check_pair(pool_kernel_size, "pool_kernel_size", op, 1);
  check_pair(pool_stride, "pool_stride", op, 1);
  check_pair(pool_padding, "pool_padding", op, 0);
  TORCH_CHECK_VALUE(pool_padding[0] <= pool_kernel_size[0] / 2 && pool_padding[1] <= pool_kernel_size[1] / 2,
                    "dlkernels.", op, ": expected 'pool_padding' to be at most half of 'pool_kernel_size', got ",
                    "pool_padding=", pool_padding, " and pool_kernel_size=", pool_kernel_size);
  b.kh = pool_kernel_size[0], b.kw = pool_kernel_size[1], b.sh = pool_stride[0], b.sw = pool_stride[1];
  b.ph = pool_padding[0], b.pw = pool_padding[1];
  b.PH = pool_output_size(b.conv.OH, b.kh, b.sh, b.ph, 1, ceil_mode);
  b.PW = pool_output_size(b.conv.OW, b.kw, b.sw, b.pw, 1, ceil_mode);
  TORCH_CHECK_VALUE(b.PH >= 1 && b.PW >= 1, "dlkernels.", op, ": the conv output (", b.conv.OH, "x", b.conv.OW,
                    ") is too small for pool_kernel_size=", pool_kernel_size, ", pool_stride=", pool_stride,
                    ", pool_padding=", pool_padding, ", pool_ceil_mode=", (ceil_mode ? "true" : "false"),
                    ": the pooled output would be empty");
  return b;
}

// The backward's index: the forward's, of the pooled shape, x's device and pool_index_dtype.
inline void check_block_index(const at::Tensor& x, const at::Tensor& index, const BlockShape& b, const char* op) {
  const std::array<int64_t, 4> shape{b.conv.N, b.conv.K, b.PH, b.PW};
  TORCH_CHECK_VALUE(index.device() == x.device(), "dlkernels.", op, ": expected 'index' on ", x.device(),
                    " like 'x', got ", index.device());
  const at::ScalarType dtype = pool_index_dtype(b.kh, b.kw);
  TORCH_CHECK_TYPE(index.scalar_type() == dtype, "dlkernels.", op, ": expected 'index' of dtype ", dtype,
                   " (the forward's window index for pool_kernel_size ", b.kh, "x", b.kw, "), got ",
                   index.scalar_type());
  TORCH_CHECK_VALUE(index.sizes() == c10::IntArrayRef(shape), "dlkernels.", op, ": expected 'index' of shape ",
                    c10::IntArrayRef(shape), " (the pooled output's), got ", index.sizes());
}

}  // namespace dlkernels
