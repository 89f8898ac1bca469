// The Winograd convolution F(2x2, 3x3) on the CPU (conv2d_cpu_winograd.cpp): 3x3 convolutions with stride 1,
// no dilation and one group, in float. Each 2x2 block of output pixels (a tile) comes from a 4x4 block of
// input pixels with 16 products per (input, output) channel pair instead of 36: the 16 entries of the
// transformed input tile (B^T d B) times those of the transformed filter (G g G^T), summed over the input
// channels, are 16 independent GEMMs [K x C] @ [C x tiles] on the GEMM micro-kernel (gemm.h), and the output
// transform (A^T m A) gives the tile's 4 pixels. 2.25 times fewer multiply-adds than the direct (im2col)
// GEMM; the transforms are additions, shared across all output (input) channels. The backward's grad_x is the
// forward of the flipped filter; its grad_w (winograd_grad_weight) is the same products turned around.
//
// Rounding: the transforms reorder the sum of the 9 taps and scale by halves, so results differ from the
// direct convolution's in the last bits (float accumulation over C, like any other order); deterministic:
// every output sums its terms in the same order whatever the thread count.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/op_args.h"

namespace dlkernels {
namespace cpu {

// False under DLKERNELS_CPU_WINOGRAD=0 (read once): every convolution then takes the implicit GEMM.
bool winograd_enabled();

// Whether conv2d takes the Winograd path for this shape (float): 3x3, stride 1, dilation 1, one group,
// padding at most 2, 16 channels or more in and out (the transforms, which cost per channel, stay small next to
// the products, which cost per channel pair), and 64 tiles or more over the batch.
bool conv2d_winograd_applies(const ConvShape& s);

// z [N, K, OH, OW] = conv(x, w) + bias (relu applied if asked); bias may be null; NCHW-contiguous buffers.
void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* z, bool relu);

// gw [K, C, 3, 3] = the weight gradient of a convolution that conv2d_winograd_applies to, from gz [N, K, OH, OW] and
// x [N, C, H, W] (NCHW-contiguous): the transformed input tiles and the transformed gz tiles of the batch (in
// chunks of tile rows), per entry of the 4x4 tile one GEMM [C x tiles] @ [tiles x K], then G^T dU G. 2.25 times fewer
// multiply-adds than the implicit GEMM (as the forward); deterministic.
void winograd_grad_weight(const ConvShape& s, const float* gz, const float* x, float* gw);

// Whether conv2d's backward takes winograd_grad_weight for grad_w: float, where the forward takes Winograd.
template <typename T>
bool winograd_grad_weight_applies(const ConvShape& s) {
  return std::is_same_v<T, float> && conv2d_winograd_applies(s);
}

// winograd_forward where conv2d_winograd_applies and T is float; false, and nothing done, otherwise.
template <typename T>
bool try_winograd_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* z, bool relu) {
  if constexpr (std::is_same_v<T, float>) {
    if (conv2d_winograd_applies(s)) {
      winograd_forward(s, x, w, bias, z, relu);
      return true;
    }
  }
  return false;
}

}  // namespace cpu
}  // namespace dlkernels
