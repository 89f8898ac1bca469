// The conv2d kernels (csrc/cuda/conv2d_cuda.cu has the op-level glue that checks, allocates and dispatches).
//
// Implicit GEMM on the tensor-core core (cuda/gemm_core.cuh): per group g, C[M, N] = A[M, K] . B[K, N] with
//   forward     M = batch*OH*OW output positions, N = K/groups output channels, K = C/groups*KH*KW;
//               A(m, k) = x at the tap k of position m (im2col), B = the weights.
//   grad_input  M = batch*H*W input positions, N = C/groups input channels, K = K/groups*KH*KW;
//               A(m, k) = gz at the output position whose tap k lands on m (the transposed gather: a tap
//               off the stride grid or outside the output is zero), B = the weights, transposed per group.
// A is never materialised: Im2colSource gathers each k-tile straight into the core's shared-memory stage with
// cp.async. The reduction index k runs (r, s, c) with c fastest for channels_last sources, so that 16-byte
// chunks of k are 16-byte vectors along channels (when C/groups and C are multiples of the vector width and
// the source is 16-byte aligned), and (c, r, s) for NCHW, the weights' own order. Without vectors, every
// element is its own copy: a 4-byte cp.async for float (src-size 0 zero-fills padding and edges), a plain
// load and shared store for 16-bit types (cp.async has no 2-byte form). B is the weights repacked by the
// host into [groups][N][ldb] rows of the reduction's order, zero-padded to whole 16-byte chunks (a copy of
// the weights, not of the activations), and loaded densely by the core. blockIdx.z is the group.
//
// The weight gradient is a third implicit GEMM per group, C[Kg, Kred] = gz^T . im2col(x), reduced over the
// batch*OH*OW positions: both operands MN-major (stored [position][channel]), A = gz read as it is, B = the
// forward's im2col gather of x. Its long reduction is split along the positions (blockIdx.z = group * splits
// + split), the float partial sums reduced in split order by conv2d_grad_weight_reduce_kernel, which also
// puts the (r, s, c) columns of channels_last back into the weights' (c, r, s) layout (deterministic, no
// atomics).
//
// Direct kernels (conv2d_direct_*): float64, float32 with TF32 off and depthwise convolutions, on
// NCHW-contiguous tensors.
#pragma once

#include <cstdint>

#include "common/activation.h"
#include "common/shapes.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/gemm_core.cuh"

namespace dlkernels {
namespace cuda {
namespace conv {

// bias[k] + sum_{c, r, s} x[n, g*Cg + c, oh*sh - ph + r*dh, ow*sw - pw + s*dw] * w[k, c, r, s] (x and w
// NCHW-contiguous, bias may be null): one output of the direct kernels, in opmath.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> direct_conv_at(const scalar_t* __restrict__ x,
                                                                    const scalar_t* __restrict__ w,
                                                                    const scalar_t* __restrict__ bias,
                                                                    const ConvShape& g, int64_t n, int64_t k,
                                                                    int64_t oh, int64_t ow) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t group = k / g.Kg;
  const int64_t ih0 = oh * g.sh - g.ph;
  const int64_t iw0 = ow * g.sw - g.pw;
  acc_t acc = 0;
  for (int64_t c = 0; c < g.Cg; ++c) {
    const scalar_t* xc = x + ((n * g.C + group * g.Cg + c) * g.H) * g.W;
    const scalar_t* wc = w + ((k * g.Cg + c) * g.KH) * g.KW;
    for (int64_t r = 0; r < g.KH; ++r) {
      const int64_t ih = ih0 + r * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t s = 0; s < g.KW; ++s) {
        const int64_t iw = iw0 + s * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        acc += static_cast<acc_t>(xc[ih * g.W + iw]) * static_cast<acc_t>(wc[r * g.KW + s]);
      }
    }
  }
  if (bias != nullptr) acc += static_cast<acc_t>(bias[k]);
  return acc;
}

// out[n, k, oh, ow] = act(direct_conv_at(n, k, oh, ow))
template <typename scalar_t, Activation A>
__global__ void conv2d_direct_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                             const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, ConvShape g,
                                             int64_t total, ActivationParams p) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t ow = i % g.OW;
    const int64_t oh = (i / g.OW) % g.OH;
    const int64_t k = (i / (g.OW * g.OH)) % g.K;
    const int64_t n = i / (g.OW * g.OH * g.K);
    out[i] = static_cast<scalar_t>(ActivationFn<A>::forward(direct_conv_at(x, w, bias, g, n, k, oh, ow), p));
  }
}

// grad_x[n, c, ih, iw] = sum over k of c's group and taps (r, s) with ih = oh*sh - ph + r*dh and
// iw = ow*sw - pw + s*dw for a valid (oh, ow): gz[n, k, oh, ow] * w[k, c % Cg, r, s]
template <typename scalar_t>
__global__ void conv2d_direct_grad_input_kernel(const scalar_t* __restrict__ gz, const scalar_t* __restrict__ w,
                                                scalar_t* __restrict__ grad_x, ConvShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t iw = i % g.W;
    const int64_t ih = (i / g.W) % g.H;
    const int64_t c = (i / (g.W * g.H)) % g.C;
    const int64_t n = i / (g.W * g.H * g.C);
    const int64_t group = c / g.Cg;
    const int64_t cl = c - group * g.Cg;
    acc_t acc = 0;
    for (int64_t kk = 0; kk < g.Kg; ++kk) {
      const int64_t k = group * g.Kg + kk;
      const scalar_t* gzk = gz + ((n * g.K + k) * g.OH) * g.OW;
      const scalar_t* wk = w + ((k * g.Cg + cl) * g.KH) * g.KW;
      for (int64_t r = 0; r < g.KH; ++r) {
        const int64_t th = ih + g.ph - r * g.dh;  // = oh * sh
        if (th < 0 || th % g.sh != 0) continue;
        const int64_t oh = th / g.sh;
        if (oh >= g.OH) continue;
        for (int64_t s = 0; s < g.KW; ++s) {
          const int64_t tw = iw + g.pw - s * g.dw;  // = ow * sw
          if (tw < 0 || tw % g.sw != 0) continue;
          const int64_t ow = tw / g.sw;
          if (ow >= g.OW) continue;
          acc += static_cast<acc_t>(gzk[oh * g.OW + ow]) * static_cast<acc_t>(wk[r * g.KW + s]);
        }
      }
    }
    grad_x[i] = static_cast<scalar_t>(acc);
  }
}

// grad_w[k, c, r, s] = sum over (n, oh, ow) of gz[n, k, oh, ow] * x[n, group*Cg + c, ih, iw]: one block per
// weight element, the threads split (n, oh, ow) and a fixed-order reduction combines them.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    conv2d_direct_grad_weight_kernel(const scalar_t* __restrict__ gz, const scalar_t* __restrict__ x,
                                     scalar_t* __restrict__ grad_w, ConvShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const int64_t count = g.N * g.OH * g.OW;
  for (int64_t e = blockIdx.x; e < total; e += gridDim.x) {
    const int64_t s = e % g.KW;
    const int64_t r = (e / g.KW) % g.KH;
    const int64_t cl = (e / (g.KW * g.KH)) % g.Cg;
    const int64_t k = e / (g.KW * g.KH * g.Cg);
    const int64_t c = (k / g.Kg) * g.Cg + cl;
    acc_t acc = 0;
    for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
      const int64_t ow = j % g.OW;
      const int64_t oh = (j / g.OW) % g.OH;
      const int64_t n = j / (g.OW * g.OH);
      const int64_t ih = oh * g.sh - g.ph + r * g.dh;
      const int64_t iw = ow * g.sw - g.pw + s * g.dw;
      if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
      acc += static_cast<acc_t>(gz[((n * g.K + k) * g.OH + oh) * g.OW + ow]) *
             static_cast<acc_t>(x[((n * g.C + c) * g.H + ih) * g.W + iw]);
    }
    acc = block_reduce_sum(acc, smem);
    if (threadIdx.x == 0) grad_w[e] = static_cast<scalar_t>(acc);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The implicit GEMM

// One implicit GEMM per group (see the top of the file). The source is [batch][SH][SW][SC] (channels_last) or
// [batch][SC][SH][SW] (NCHW); C is written in the same layout with OC channels and PH x PW positions.
template <typename T>
struct ConvGemm {
  const T* src;
  const T* b;  // [groups][N][ldb], the reduction's order, zero past K
  int64_t ldb;
  const T* bias;  // [groups * N] or null
  T* out;
  int64_t M, N, K;         // per group
  int64_t SC, SH, SW, cg;  // source channels, height, width; channels per group (the reduction's)
  int64_t PH, PW, OC;      // positions and channels of the result
  int64_t KH, KW, sh, sw, ph, pw, dh, dw;
};

// Which output position each row of a CTA's A tile is: rows m0, m0 + 1, .. of the M positions (the conv
// GEMMs), or -1 past them. (The fused conv + max-pool block maps its rows to a 2-D patch of positions
// instead: cuda/conv2d_maxpool_kernels.cuh.)
struct LinearRows {
  template <typename T>
  __device__ __forceinline__ int64_t position(const ConvGemm<T>& p, int64_t m0, int row) const {
    return m0 + row < p.M ? m0 + row : -1;
  }
};

// The implicit-im2col A operand and the dense B operand of one group's GEMM: the source for Core::mainloop.
template <typename T, bool ChannelsLast, bool Vec, bool Transposed, class Rows = LinearRows>
struct Im2colSource {
  ConvGemm<T> p;
  int64_t group;
  Rows rows = {};

  // The source element of A(m, k) (m < M, k < K), or null where the tap reads padding or, transposed, lands
  // off the stride grid.
  __device__ __forceinline__ const T* tap(int64_t m, int64_t k) const {
    const int64_t q = m % p.PW, t = m / p.PW, pr = t % p.PH, img = t / p.PH;
    int64_t c, r, s;
    if constexpr (ChannelsLast) {
      c = k % p.cg;
      const int64_t rs = k / p.cg;
      r = rs / p.KW;
      s = rs % p.KW;
    } else {
      s = k % p.KW;
      const int64_t cr = k / p.KW;
      r = cr % p.KH;
      c = cr / p.KH;
    }
    int64_t ih, iw;
    if constexpr (Transposed) {
      // Output position (oh, ow) of the forward with oh * sh - ph + r * dh == pr (likewise ow).
      const int64_t th = pr + p.ph - r * p.dh, tw = q + p.pw - s * p.dw;
      if (th < 0 || tw < 0 || th % p.sh != 0 || tw % p.sw != 0) return nullptr;
      ih = th / p.sh;
      iw = tw / p.sw;
    } else {
      ih = pr * p.sh - p.ph + r * p.dh;
      iw = q * p.sw - p.pw + s * p.dw;
      if (ih < 0 || iw < 0) return nullptr;
    }
    if (ih >= p.SH || iw >= p.SW) return nullptr;
    const int64_t ch = group * p.cg + c;
    return ChannelsLast ? p.src + ((img * p.SH + ih) * p.SW + iw) * p.SC + ch
                        : p.src + ((img * p.SC + ch) * p.SH + ih) * p.SW + iw;
  }

  template <class Core>
  __device__ __forceinline__ void load(T* sa, T* sb, int64_t m0, int64_t n0, int64_t k0, int64_t k_end) const {
    using S = gemm::Smem<T>;
    constexpr int kVec = S::kVec, BK = S::BK;
    Core::template load_dense<gemm::Major::kK, Core::kBRow, Core::kBElems>(sb, p.b + group * p.N * p.ldb, p.ldb, p.N,
                                                                           n0, k0, k_end);
    if constexpr (Vec) {
      // One 16-byte chunk per copy: kVec channels of one tap (C/groups is a multiple of kVec), in the same
      // order as the core's dense loads, so the stores to the swizzled stage are conflict-free.
#pragma unroll
      for (int i = threadIdx.x; i < Core::kAElems / kVec; i += Core::kThreads) {
        const int row = i / (BK / kVec), col = (i % (BK / kVec)) * kVec;
        const int64_t gm = rows.position(p, m0, row), gk = k0 + col;
        const T* at = gm >= 0 && gk < k_end ? tap(gm, gk) : nullptr;
        ptx::cp_async<16, true>(sa + S::offset(row, col, BK), at != nullptr ? at : p.src, at != nullptr ? 16 : 0);
      }
    } else {
      // One element per copy, consecutive threads on consecutive rows (consecutive output positions, which
      // are neighbours in memory along W for NCHW).
      for (int i = threadIdx.x; i < Core::kAElems; i += Core::kThreads) {
        const int row = i % Core::BM, col = i / Core::BM;
        const int64_t gm = rows.position(p, m0, row), gk = k0 + col;
        const T* at = gm >= 0 && gk < k_end ? tap(gm, gk) : nullptr;
        T* dst = sa + S::offset(row, col, BK);
        if constexpr (sizeof(T) == 4) {
          ptx::cp_async<4>(dst, at != nullptr ? at : p.src, at != nullptr ? 4 : 0);
        } else {
          *dst = at != nullptr ? *at : T(0.f);
        }
      }
    }
  }
};

// One CTA of one group's implicit GEMM: C = act(A . B + bias), written in the source's layout.
template <typename T, class TileT, bool ChannelsLast, bool Vec, bool Transposed, Activation A>
__device__ __forceinline__ void run_implicit_gemm(const ConvGemm<T>& p, const ActivationParams& ap) {
  using Core = gemm::Core<T, TileT, gemm::Major::kK, gemm::Major::kK>;
  DLK_DYNAMIC_SHARED(T, smem);
  const int64_t group = blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TileT::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * TileT::BN;
  const Im2colSource<T, ChannelsLast, Vec, Transposed> source{p, group};
  float acc[TileT::MI][TileT::NI][4];
  Core::mainloop(source, smem, m0, n0, 0, p.K, acc);
  Core::template stage_tile<A>(acc, smem, p.N, n0, p.bias != nullptr ? p.bias + group * p.N : nullptr, ap);
  if constexpr (ChannelsLast) {
    // Rows of C are positions, contiguous along channels: the core's row stores.
    Core::store_rows(smem, p.out + group * p.N, p.OC, p.M, p.N, m0, n0);
  } else {
    // NCHW: consecutive threads on consecutive positions of one channel.
    constexpr int ld = Core::kEpilogueLd;
    const int64_t plane = p.PH * p.PW;
    for (int i = threadIdx.x; i < TileT::BM * TileT::BN; i += TileT::kThreads) {
      const int row = i % TileT::BM, col = i / TileT::BM;
      const int64_t gm = m0 + row, gn = n0 + col;
      if (gm >= p.M || gn >= p.N) continue;
      const int64_t img = gm / plane, pix = gm % plane;
      p.out[(img * p.OC + group * p.N + gn) * plane + pix] = smem[row * ld + col];
    }
  }
}

template <typename T, class TileT, bool ChannelsLast, bool Vec, Activation A>
__global__ void __launch_bounds__(TileT::kThreads) conv2d_forward_kernel(ConvGemm<T> p, ActivationParams ap) {
  run_implicit_gemm<T, TileT, ChannelsLast, Vec, false, A>(p, ap);
}

template <typename T, class TileT, bool ChannelsLast, bool Vec>
__global__ void __launch_bounds__(TileT::kThreads) conv2d_grad_input_kernel(ConvGemm<T> p, ActivationParams ap) {
  run_implicit_gemm<T, TileT, ChannelsLast, Vec, true, Activation::None>(p, ap);
}

// The two MN-major operands of one group's weight-gradient GEMM (rows: the group's Kg output channels;
// columns: its Kred = Cg*KH*KW taps in the gather's order; reduction: the batch*OH*OW positions). p is the
// forward's geometry with src = x; gz is in the same layout with p.OC channels.
template <typename T, bool ChannelsLast, bool Vec>
struct WeightGradSource {
  ConvGemm<T> p;
  const T* gz;
  int64_t group;

  // gz at position m, channel group * Kg + kg.
  __device__ __forceinline__ const T* gz_at(int64_t m, int64_t kg) const {
    const int64_t k = group * p.N + kg;
    if constexpr (ChannelsLast) {
      return gz + m * p.OC + k;
    } else {
      const int64_t plane = p.PH * p.PW, img = m / plane;
      return gz + (img * p.OC + k) * plane + (m - img * plane);
    }
  }

  template <class Core>
  __device__ __forceinline__ void load(T* sa, T* sb, int64_t m0, int64_t n0, int64_t k0, int64_t k_end) const {
    using S = gemm::Smem<T>;
    constexpr int kVec = S::kVec, BK = S::BK, BM = Core::BM, BN = Core::BN;
    const Im2colSource<T, ChannelsLast, Vec, false> x_source{p, group};
    if constexpr (Vec) {
      // 16-byte chunks along channels of one position: the core's dense MN-major order (conflict-free).
#pragma unroll
      for (int i = threadIdx.x; i < Core::kAElems / kVec; i += Core::kThreads) {
        const int row = i / (BM / kVec), col = (i % (BM / kVec)) * kVec;
        const int64_t gk = k0 + row, gm = m0 + col;
        const bool ok = gk < k_end && gm < p.N;
        ptx::cp_async<16, true>(sa + S::offset(row, col, BM), ok ? gz_at(gk, gm) : gz, ok ? 16 : 0);
      }
#pragma unroll
      for (int i = threadIdx.x; i < Core::kBElems / kVec; i += Core::kThreads) {
        const int row = i / (BN / kVec), col = (i % (BN / kVec)) * kVec;
        const int64_t gk = k0 + row, gn = n0 + col;
        const T* at = gk < k_end && gn < p.K ? x_source.tap(gk, gn) : nullptr;
        ptx::cp_async<16, true>(sb + S::offset(row, col, BN), at != nullptr ? at : p.src, at != nullptr ? 16 : 0);
      }
    } else {
      // One element per copy; consecutive threads along channels (channels_last) or positions (NCHW), the
      // contiguous direction of the source.
      for (int i = threadIdx.x; i < Core::kAElems; i += Core::kThreads) {
        const int row = ChannelsLast ? i / BM : i % BK, col = ChannelsLast ? i % BM : i / BK;
        const int64_t gk = k0 + row, gm = m0 + col;
        copy_element(sa + S::offset(row, col, BM), gk < k_end && gm < p.N ? gz_at(gk, gm) : nullptr);
      }
      for (int i = threadIdx.x; i < Core::kBElems; i += Core::kThreads) {
        const int row = ChannelsLast ? i / BN : i % BK, col = ChannelsLast ? i % BN : i / BK;
        const int64_t gk = k0 + row, gn = n0 + col;
        copy_element(sb + S::offset(row, col, BN), gk < k_end && gn < p.K ? x_source.tap(gk, gn) : nullptr);
      }
    }
  }

  // *dst = *src, or zero for a null src: a 4-byte cp.async for float, a plain copy for 16-bit types.
  __device__ __forceinline__ void copy_element(T* dst, const T* src) const {
    if constexpr (sizeof(T) == 4) {
      ptx::cp_async<4>(dst, src != nullptr ? src : p.src, src != nullptr ? 4 : 0);
    } else {
      *dst = src != nullptr ? *src : T(0.f);
    }
  }
};

// The float partial sums of one (group, split) tile of the weight gradient: partial[group][split][Kg][Kred].
template <typename T, class TileT, bool ChannelsLast, bool Vec>
__global__ void __launch_bounds__(TileT::kThreads)
    conv2d_grad_weight_kernel(ConvGemm<T> p, const T* gz, int64_t positions_per_split, int splits, float* partial) {
  using Core = gemm::Core<T, TileT, gemm::Major::kMN, gemm::Major::kMN>;
  DLK_DYNAMIC_SHARED(T, smem);
  const int64_t group = blockIdx.z / splits, split = blockIdx.z % splits;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TileT::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * TileT::BN;
  const int64_t k_begin = split * positions_per_split;
  const int64_t k_end = k_begin + positions_per_split < p.M ? k_begin + positions_per_split : p.M;
  const WeightGradSource<T, ChannelsLast, Vec> source{p, gz, group};
  float acc[TileT::MI][TileT::NI][4];
  Core::mainloop(source, smem, m0, n0, k_begin, k_end, acc);
  Core::store_partial(acc, partial + static_cast<int64_t>(blockIdx.z) * p.N * p.K, p.N, p.K, m0, n0);
}

// grad_w[k, c, r, s] (contiguous) = the sum over the splits, in order, of its partial sums.
template <typename T, bool ChannelsLast>
__global__ void conv2d_grad_weight_reduce_kernel(const float* __restrict__ partial, int splits, T* __restrict__ grad_w,
                                                 int64_t total, int64_t Kg, int64_t Cg, int64_t KH, int64_t KW) {
  const int64_t kred = Cg * KH * KW;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t crs = i % kred, k = i / kred;
    const int64_t s = crs % KW, r = (crs / KW) % KH, c = crs / (KW * KH);
    const int64_t col = ChannelsLast ? (r * KW + s) * Cg + c : crs;
    const int64_t group = k / Kg, kg = k % Kg;
    const float* src = partial + (group * splits * Kg + kg) * kred + col;
    float v = 0.f;
    for (int sp = 0; sp < splits; ++sp) v += src[static_cast<int64_t>(sp) * Kg * kred];
    grad_w[i] = static_cast<T>(v);
  }
}

}  // namespace conv
}  // namespace cuda
}  // namespace dlkernels
