// The kernels of the fused Conv -> activation -> MaxPool block on CUDA, max_pool2d(act(conv2d(x)))
// (csrc/cuda/conv2d_maxpool_cuda.cu has the op-level glue).
//
// Pooling follows PyTorch bit for bit, as csrc/cpu/conv2d_maxpool_cpu.cpp: values are compared after the
// activation and after the rounding to the output dtype (as torch's composite compares them), the running max
// starts at -inf with the window's first in-bounds position and is replaced when (val > max || isnan(val)), so
// ties keep the first maximum and the last NaN of a window wins. The window index of an output is
// (h - h0) * KW + (w - w0) for its maximum at conv position (h, w) and the window's corner (h0, w0) (padding
// included): int8 for windows of up to 128 positions, else int32 (pool_index_dtype).
//
//   conv2d_maxpool_forward_kernel   the conv's implicit GEMM (cuda/conv2d_kernels.cuh on cuda/gemm_core.cuh)
//       whose CTA owns a QH x QW block of pooled outputs of one image: the rows of its A tile are the RH x RW
//       patch of conv positions those windows cover (PatchRows), so every window lies inside one CTA; where
//       windows overlap (kernel > stride), the conv rows and columns two CTAs share are computed by both. The
//       epilogue stages act(acc + bias) as the output dtype in shared memory (the core's stage_tile), pools it
//       there and writes only the pooled output and the window index: the conv output never reaches global
//       memory.
//   conv2d_maxpool_direct_forward_kernel   one thread per pooled output computes the conv at each position
//       of its window (direct_conv_at) and pools: float64, float32 with TF32 off, depthwise convolutions, and
//       windows larger than the implicit GEMM's tile.
//   conv2d_maxpool_route_kernel   the backward's gz = dL/dz (z the pre-activation), one thread per conv
//       output element: a gather over the windows that can contain it, in window order (deterministic, no
//       atomics), of grad_out * act'(.) where the window's index names it, zero elsewhere; overlapping windows
//       that pick the same position add. conv2d's backward kernels take it from there.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/activation.h"
#include "common/op_args.h"
#include "cuda/conv2d_kernels.cuh"
#include "cuda/cuda_utils.cuh"
#include "cuda/max_pool2d_kernels.cuh"

namespace dlkernels {
namespace cuda {
namespace block {

// The window index is int8 or int32: a run-time flag rather than a template parameter, which would double
// every kernel for one store (or load) per pooled output.
__device__ __forceinline__ void store_code(void* index, bool index8, int64_t i, int32_t code) {
  if (index8) {
    static_cast<int8_t*>(index)[i] = static_cast<int8_t>(code);
  } else {
    static_cast<int32_t*>(index)[i] = code;
  }
}

__device__ __forceinline__ int32_t load_code(const void* index, bool index8, int64_t i) {
  return index8 ? static_cast<const int8_t*>(index)[i] : static_cast<const int32_t*>(index)[i];
}

// The max over the in-bounds conv positions (h, w) of the window of pooled output (q, r) of value(h, w), by
// torch's rule; code receives the window index of the maximum.
template <typename acc_t, class Value>
__device__ __forceinline__ acc_t pool_window(const BlockShape& b, int64_t q, int64_t r, const Value& value,
                                             int32_t& code) {
  const int64_t h0 = q * b.sh - b.ph, w0 = r * b.sw - b.pw;
  const int64_t dh0 = h0 < 0 ? -h0 : 0, dh1 = min64(b.kh, b.conv.OH - h0);
  const int64_t dw0 = w0 < 0 ? -w0 : 0, dw1 = min64(b.kw, b.conv.OW - w0);
  acc_t best = -static_cast<acc_t>(INFINITY);
  code = static_cast<int32_t>(dh0 * b.kw + dw0);
  for (int64_t dh = dh0; dh < dh1; ++dh) {
    for (int64_t dw = dw0; dw < dw1; ++dw) {
      const acc_t val = value(h0 + dh, w0 + dw);
      if (val > best || val != val) {  // val != val: NaN propagates
        best = val;
        code = static_cast<int32_t>(dh * b.kw + dw);
      }
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------------
// Forward, direct: x and w NCHW-contiguous; out and index [N, K, PH, PW] contiguous in NCHW or channels_last
// order, one pooled output per thread.
template <typename scalar_t, Activation A, bool ChannelsLast>
__global__ void conv2d_maxpool_direct_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                                     const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                                     void* __restrict__ index, bool index8, BlockShape b, int64_t total,
                                                     ActivationParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t n, k, q, r;
    pool::decode<ChannelsLast>(i, b.conv.K, b.PH, b.PW, n, k, q, r);
    // act(z) rounded to the output dtype: the value torch's composite pools.
    const auto value = [&](int64_t h, int64_t wc) {
      const acc_t z = conv::direct_conv_at(x, w, bias, b.conv, n, k, h, wc);
      return static_cast<acc_t>(static_cast<scalar_t>(ActivationFn<A>::forward(z, p)));
    };
    int32_t code;
    const acc_t best = pool_window<acc_t>(b, q, r, value, code);
    out[i] = static_cast<scalar_t>(best);
    store_code(index, index8, i, code);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Forward on the implicit GEMM

// The CTA's pooled outputs and the conv patch they cover: QH x QW pooled outputs per CTA (tiles_h x tiles_w
// CTAs per image), whose windows span RH x RW conv positions, RH * RW <= the tile's BM.
struct PoolTiling {
  int QH, QW, RH, RW;
  int64_t tiles_h, tiles_w;
};

// The rows of the A tile: the patch of conv rows [h0, h0 + RH) x columns [w0, w0 + RW) of image img, row
// by row; -1 for rows past the patch and for positions outside the conv output (padding of the pooling).
struct PatchRows {
  int64_t img, h0, w0;
  int RH, RW;

  template <typename T>
  __device__ __forceinline__ int64_t position(const conv::ConvGemm<T>& p, int64_t /*m0*/, int row) const {
    if (row >= RH * RW) return -1;
    const int64_t h = h0 + row / RW, w = w0 + row % RW;
    if (h < 0 || w < 0 || h >= p.PH || w >= p.PW) return -1;
    return (img * p.PH + h) * p.PW + w;
  }
};

// p is conv2d's forward GEMM of one group (cuda/conv2d_kernels.cuh) with out = the pooled output [N, K, PH,
// PW] in the source's layout (p.OC channels); index in the same layout.
template <typename T, class TileT, bool ChannelsLast, bool Vec, Activation A>
__global__ void __launch_bounds__(TileT::kThreads)
    conv2d_maxpool_forward_kernel(conv::ConvGemm<T> p, BlockShape b, PoolTiling t, void* index, bool index8,
                                  ActivationParams ap) {
  using Core = gemm::Core<T, TileT, gemm::Major::kK, gemm::Major::kK>;
  DLK_DYNAMIC_SHARED(T, smem);
  const int64_t group = blockIdx.z;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * TileT::BN;
  const int64_t tile = blockIdx.x;
  const int64_t img = tile / (t.tiles_h * t.tiles_w);
  const int64_t q0 = (tile / t.tiles_w) % t.tiles_h * t.QH, r0 = tile % t.tiles_w * t.QW;
  const int64_t h0 = q0 * b.sh - b.ph, w0 = r0 * b.sw - b.pw;
  const conv::Im2colSource<T, ChannelsLast, Vec, false, PatchRows> source{p, group, PatchRows{img, h0, w0, t.RH, t.RW}};
  float acc[TileT::MI][TileT::NI][4];
  Core::mainloop(source, smem, 0, n0, 0, p.K, acc);
  // act(acc + bias) as T, row (h - h0) * RW + (w - w0) of the patch, column the channel.
  Core::template stage_tile<A>(acc, smem, p.N, n0, p.bias != nullptr ? p.bias + group * p.N : nullptr, ap);

  // Pooling: channels_last, consecutive threads on consecutive channels of one pooled output (contiguous
  // stores, one shared-memory row); NCHW, on consecutive pooled outputs of one channel.
  constexpr int ld = Core::kEpilogueLd;
  const int outputs = t.QH * t.QW;
  for (int i = threadIdx.x; i < outputs * TileT::BN; i += TileT::kThreads) {
    const int o = ChannelsLast ? i / TileT::BN : i % outputs;
    const int col = ChannelsLast ? i % TileT::BN : i / outputs;
    const int64_t q = q0 + o / t.QW, r = r0 + o % t.QW, gn = n0 + col;
    if (q >= b.PH || r >= b.PW || gn >= p.N) continue;
    const auto value = [&](int64_t h, int64_t w) {
      return static_cast<float>(smem[((h - h0) * t.RW + (w - w0)) * ld + col]);
    };
    int32_t code;
    const float best = pool_window<float>(b, q, r, value, code);
    const int64_t k = group * p.N + gn;
    const int64_t at =
        ChannelsLast ? ((img * b.PH + q) * b.PW + r) * p.OC + k : ((img * p.OC + k) * b.PH + q) * b.PW + r;
    p.out[at] = static_cast<T>(best);
    store_code(index, index8, at, code);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward: gz [N, K, OH, OW], grad_out, out and index [N, K, PH, PW], all contiguous in NCHW or channels_last
// order. For activations whose derivative needs the pre-activation, gz holds z on entry (each thread reads
// its own element before it writes it).
template <typename scalar_t, Activation A, bool ChannelsLast>
__global__ void conv2d_maxpool_route_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
                                            const void* __restrict__ index, bool index8, scalar_t* gz, BlockShape b,
                                            int64_t total, ActivationParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = b.conv.K, OH = b.conv.OH, OW = b.conv.OW;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t n, k, h, w;
    pool::decode<ChannelsLast>(i, K, OH, OW, n, k, h, w);
    // Windows q with q * sh - ph <= h < q * sh - ph + kh (likewise r).
    const int64_t q0 = h + b.ph < b.kh ? 0 : (h + b.ph - b.kh) / b.sh + 1;
    const int64_t q1 = min64((h + b.ph) / b.sh + 1, b.PH);
    const int64_t r0 = w + b.pw < b.kw ? 0 : (w + b.pw - b.kw) / b.sw + 1;
    const int64_t r1 = min64((w + b.pw) / b.sw + 1, b.PW);
    const acc_t z = grad_needs_preactivation(A) ? static_cast<acc_t>(gz[i]) : acc_t(0);
    // Pooled output (q, r) of this plane at first + (q * PW + r) * along.
    const int64_t first = ChannelsLast ? n * b.PH * b.PW * K + k : (n * K + k) * b.PH * b.PW;
    const int64_t along = ChannelsLast ? K : 1;
    acc_t acc = 0;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t row = first + q * b.PW * along, code_h = (h + b.ph - q * b.sh) * b.kw;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t o = row + r * along;
        if (load_code(index, index8, o) != code_h + (w + b.pw - r * b.sw)) continue;
        // act' from z, from the pooled output, or 1 ("none").
        const acc_t from = grad_needs_output(A) ? static_cast<acc_t>(out[o]) : z;
        acc += static_cast<acc_t>(grad_out[o]) * ActivationFn<A>::grad(from, p);
      }
    }
    gz[i] = static_cast<scalar_t>(acc);
  }
}

}  // namespace block
}  // namespace cuda
}  // namespace dlkernels
