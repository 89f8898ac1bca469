// What csrc/cuda/conv2d_cuda.cu shares with the fused conv2d_maxpool block (csrc/cuda/conv2d_maxpool_cuda.cu):
// the choice between the implicit GEMM and the direct kernels, the implicit GEMM's tiles and operands, the
// forward for the recomputed pre-activation, and the backward passes that follow gz = dL/dz.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/activation.h"
#include "common/op_args.h"
#include "cuda/conv2d_kernels.cuh"
#include "cuda/gemm_core.cuh"

namespace dlkernels {
namespace cuda {

enum class ConvConfig { kDirect, kLarge, kMedium };

using ConvLargeTile = gemm::Tile<128, 128, 64, 64, 3>;
using ConvMediumTile = gemm::Tile<64, 64, 32, 32, 4>;

// DLKERNELS_CUDA_CONV_CONFIG=direct|large|medium, read on every call (tests change it between calls).
std::optional<ConvConfig> forced_conv_config();

// Whether the implicit GEMM runs this call: the tensor cores can (bfloat16, float16, float32 as TF32 when
// torch.backends.cudnn.allow_tf32 is on; not depthwise), and it is not forced off.
bool use_implicit_gemm(at::ScalarType dtype, const ConvShape& g);

// The element type of the implicit GEMM for an ATen scalar type (float64 never runs it).
template <typename scalar_t>
using GemmType = std::conditional_t<std::is_same_v<scalar_t, at::Half>, c10::Half,
                                    std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, c10::BFloat16, float>>;

// B of the forward implicit GEMM: the weights as [groups][K/groups][ldb] rows in the gather's order, zero
// past the reduction, ldb a multiple of vec.
at::Tensor conv2d_forward_b(const at::Tensor& weight, const ConvShape& g, bool channels_last, int64_t vec);

// The forward implicit GEMM of one group: x the source (contiguous in the layout the kernel is instantiated
// for), b_packed from conv2d_forward_b (or undefined where B is not read), bias and out as the kernel uses them.
template <typename T>
conv::ConvGemm<T> conv2d_forward_gemm(const T* x, const at::Tensor& b_packed, const T* bias, T* out,
                                      const ConvShape& g) {
  const bool has_b = b_packed.defined();
  return {x,
          has_b ? static_cast<const T*>(b_packed.const_data_ptr()) : nullptr,
          has_b ? b_packed.size(2) : 0,
          bias,
          out,
          g.N * g.OH * g.OW,
          g.Kg,
          g.Cg * g.KH * g.KW,
          g.C,
          g.H,
          g.W,
          g.Cg,
          g.OH,
          g.OW,
          g.K,
          g.KH,
          g.KW,
          g.sh,
          g.sw,
          g.ph,
          g.pw,
          g.dh,
          g.dw};
}

// An NCHW-contiguous result in the memory format the caller asked for.
at::Tensor in_format(const at::Tensor& t, at::MemoryFormat fmt);

// act(conv(x, w) + bias) in memory format fmt: the implicit GEMM where it runs, else the direct kernel.
at::Tensor conv2d_forward_in(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& b, const ConvShape& g,
                             at::MemoryFormat fmt, Activation act, const ActivationParams& params);

// The memory format the backward passes take gz in: x's when the implicit GEMM computes grad_x, else NCHW.
at::MemoryFormat conv2d_grad_format(const at::Tensor& x, const ConvShape& g);

// (grad_x, grad_w, grad_b) from gz = dL/dz, contiguous in conv2d_grad_format(x, g): those output_mask asks
// for, undefined tensors for the others. grad_x comes in x's format, grad_w contiguous.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_from_gz(const at::Tensor& gz, const at::Tensor& x_in,
                                                                       const at::Tensor& weight, const ConvShape& g,
                                                                       std::array<bool, 3> output_mask);

}  // namespace cuda
}  // namespace dlkernels
