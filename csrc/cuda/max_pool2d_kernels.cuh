// The max_pool2d kernels (csrc/cuda/max_pool2d_cuda.cu has the op-level glue).
//
// The semantics are PyTorch's, as in csrc/cpu/max_pool2d_cpu.cpp: the search starts at the first in-bounds
// position of the window with max = -inf, and takes a value when (val > max || isnan(val)); indices are flat
// offsets h*W + w into the input plane. Every kernel keeps exactly that order per output element, so values
// and indices are bit-exact with torch's.
//
//   forward, scalar     one thread per output element.
//   forward, channels_last vectors   one thread per 16 bytes of channels of one output position
//                       (C a multiple of the vector width): 16-byte loads of the window's inputs and
//                       16-byte stores of the values (and indices), each lane its own running max.
//   forward, NCHW vectors   one thread per 16 bytes of one output row (OW a multiple of the vector width):
//                       the loads stay scalar (windows of neighbouring outputs overlap and are rarely
//                       16-byte aligned), the stores are 16-byte vectors.
//   backward            one thread per input element (or per 16 bytes of channels for channels_last): a
//                       gather over the windows that can contain it, in output order (deterministic, no
//                       atomics).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/op_args.h"
#include "cuda/cuda_utils.cuh"

namespace dlkernels {
namespace cuda {
namespace pool {

// The in-bounds part of the window of output (oh, ow): rows h0, h0 + dh, .. < h1, likewise columns.
struct Window {
  int64_t h0, h1, w0, w1;
};

__device__ __forceinline__ Window window(const PoolShape& g, int64_t oh, int64_t ow) {
  int64_t h0 = oh * g.sh - g.ph;
  int64_t w0 = ow * g.sw - g.pw;
  const int64_t h1 = min64(h0 + (g.kh - 1) * g.dh + 1, g.H);
  const int64_t w1 = min64(w0 + (g.kw - 1) * g.dw + 1, g.W);
  while (h0 < 0) h0 += g.dh;
  while (w0 < 0) w0 += g.dw;
  return {h0, h1, w0, w1};
}

// 16 bytes of elements, copied with one 128-bit load or store.
template <typename scalar_t>
struct Pack {
  static constexpr int kLanes = 16 / static_cast<int>(sizeof(scalar_t));
  scalar_t v[kLanes];

  static __device__ __forceinline__ Pack load(const scalar_t* p) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    Pack out;
    std::memcpy(&out, &raw, 16);
    return out;
  }
  __device__ __forceinline__ void store(scalar_t* p) const {
    uint4 raw;
    std::memcpy(&raw, this, 16);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};

// Lanes consecutive int64 indices, stored as 16-byte pairs (p 16-byte aligned).
template <int Lanes>
__device__ __forceinline__ void store_indices(int64_t* p, const int64_t (&idx)[Lanes]) {
#pragma unroll
  for (int l = 0; l < Lanes; l += 2) {
    uint4 raw;
    std::memcpy(&raw, &idx[l], 16);
    *reinterpret_cast<uint4*>(p + l) = raw;
  }
}

// Element `i` of an [N, C, Hs, Ws] tensor stored contiguously in NCHW (ChannelsLast = false) or NHWC order.
template <bool ChannelsLast>
__device__ __forceinline__ void decode(int64_t i, int64_t C, int64_t Hs, int64_t Ws, int64_t& n, int64_t& c, int64_t& h,
                                       int64_t& w) {
  if (ChannelsLast) {
    c = i % C;
    i /= C;
    w = i % Ws;
    i /= Ws;
    h = i % Hs;
    n = i / Hs;
  } else {
    w = i % Ws;
    i /= Ws;
    h = i % Hs;
    i /= Hs;
    c = i % C;
    n = i / C;
  }
}

// Offset of (n, c, h, w) in an [N, C, Hs, Ws] tensor in the given layout.
template <bool ChannelsLast>
__device__ __forceinline__ int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t Hs,
                                          int64_t Ws) {
  return ChannelsLast ? ((n * Hs + h) * Ws + w) * C + c : ((n * C + c) * Hs + h) * Ws + w;
}

template <typename scalar_t, bool WithIndices, bool ChannelsLast>
__global__ void max_pool2d_forward_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                          int64_t* __restrict__ ind, PoolShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t n, c, oh, ow;
    decode<ChannelsLast>(i, g.C, g.OH, g.OW, n, c, oh, ow);
    const Window win = window(g, oh, ow);
    const int64_t h0 = win.h0, h1 = win.h1, w0 = win.w0, w1 = win.w1;
    acc_t maxval = -static_cast<acc_t>(INFINITY);  // INFINITY (a float constant) needs no constexpr host call
    int64_t maxidx = h0 * g.W + w0;
    for (int64_t h = h0; h < h1; h += g.dh) {
      for (int64_t w = w0; w < w1; w += g.dw) {
        const acc_t val = static_cast<acc_t>(in[offset<ChannelsLast>(n, c, h, w, g.C, g.H, g.W)]);
        if (val > maxval || val != val) {  // val != val: NaN propagates
          maxval = val;
          maxidx = h * g.W + w;
        }
      }
    }
    // Output element i sits at offset i in the output's layout (the same as the input's).
    out[i] = static_cast<scalar_t>(maxval);
    if (WithIndices) ind[i] = maxidx;
  }
}

// One thread per input element: sums grad_out over the windows that picked it, in output order.
template <typename scalar_t, bool ChannelsLast>
__global__ void max_pool2d_backward_kernel(const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ ind,
                                           scalar_t* __restrict__ grad_in, PoolShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t span_h = (g.kh - 1) * g.dh + 1;
  const int64_t span_w = (g.kw - 1) * g.dw + 1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t n, c, h, w;
    decode<ChannelsLast>(i, g.C, g.H, g.W, n, c, h, w);
    // Windows oh whose span [oh*sh - ph, oh*sh - ph + span_h) contains h.
    const int64_t oh0 = (h + g.ph < span_h) ? 0 : (h + g.ph - span_h) / g.sh + 1;
    const int64_t oh1 = min64((h + g.ph) / g.sh + 1, g.OH);
    const int64_t ow0 = (w + g.pw < span_w) ? 0 : (w + g.pw - span_w) / g.sw + 1;
    const int64_t ow1 = min64((w + g.pw) / g.sw + 1, g.OW);
    const int64_t target = h * g.W + w;
    acc_t acc = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t o = offset<ChannelsLast>(n, c, oh, ow, g.C, g.OH, g.OW);
        if (ind[o] == target) acc += static_cast<acc_t>(grad_out[o]);
      }
    }
    grad_in[i] = static_cast<scalar_t>(acc);
  }
}

// channels_last, C a multiple of the lanes: thread i owns lanes channels [l0, l0 + lanes) of output position
// (n, oh, ow), i = position * C / lanes + l0 / lanes.
template <typename scalar_t, bool WithIndices>
__global__ void max_pool2d_forward_nhwc_vec_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                                   int64_t* __restrict__ ind, PoolShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t>;
  constexpr int L = P::kLanes;
  const int64_t packs = g.C / L;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t c0 = (i % packs) * L, pos = i / packs;
    const int64_t ow = pos % g.OW, oh = (pos / g.OW) % g.OH, n = pos / (g.OW * g.OH);
    const Window win = window(g, oh, ow);
    acc_t maxval[L];
    int64_t maxidx[L];
#pragma unroll
    for (int l = 0; l < L; ++l) {
      maxval[l] = -static_cast<acc_t>(INFINITY);
      maxidx[l] = win.h0 * g.W + win.w0;
    }
    for (int64_t h = win.h0; h < win.h1; h += g.dh) {
      for (int64_t w = win.w0; w < win.w1; w += g.dw) {
        const P v = P::load(in + ((n * g.H + h) * g.W + w) * g.C + c0);
#pragma unroll
        for (int l = 0; l < L; ++l) {
          const acc_t val = static_cast<acc_t>(v.v[l]);
          if (val > maxval[l] || val != val) {
            maxval[l] = val;
            maxidx[l] = h * g.W + w;
          }
        }
      }
    }
    P o;
#pragma unroll
    for (int l = 0; l < L; ++l) o.v[l] = static_cast<scalar_t>(maxval[l]);
    o.store(out + pos * g.C + c0);
    if constexpr (WithIndices) store_indices<L>(ind + pos * g.C + c0, maxidx);
  }
}

// NCHW, OW a multiple of the lanes: thread i owns outputs [ow0, ow0 + lanes) of one row (i * lanes is the
// first one's offset).
template <typename scalar_t, bool WithIndices>
__global__ void max_pool2d_forward_nchw_vec_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                                   int64_t* __restrict__ ind, PoolShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t>;
  constexpr int L = P::kLanes;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t first = i * L;
    const int64_t ow0 = first % g.OW, oh = (first / g.OW) % g.OH, plane = first / (g.OW * g.OH);
    const scalar_t* src = in + plane * g.H * g.W;
    P o;
    int64_t maxidx[L];
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const Window win = window(g, oh, ow0 + l);
      acc_t maxval = -static_cast<acc_t>(INFINITY);
      maxidx[l] = win.h0 * g.W + win.w0;
      for (int64_t h = win.h0; h < win.h1; h += g.dh) {
        for (int64_t w = win.w0; w < win.w1; w += g.dw) {
          const acc_t val = static_cast<acc_t>(src[h * g.W + w]);
          if (val > maxval || val != val) {
            maxval = val;
            maxidx[l] = h * g.W + w;
          }
        }
      }
      o.v[l] = static_cast<scalar_t>(maxval);
    }
    o.store(out + first);
    if constexpr (WithIndices) store_indices<L>(ind + first, maxidx);
  }
}

// channels_last backward, C a multiple of the lanes: thread i owns lanes channels of input position
// (n, h, w), gathering grad_out over the windows that can contain it, in output order.
template <typename scalar_t>
__global__ void max_pool2d_backward_nhwc_vec_kernel(const scalar_t* __restrict__ grad_out,
                                                    const int64_t* __restrict__ ind, scalar_t* __restrict__ grad_in,
                                                    PoolShape g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t>;
  constexpr int L = P::kLanes;
  const int64_t packs = g.C / L;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t span_h = (g.kh - 1) * g.dh + 1;
  const int64_t span_w = (g.kw - 1) * g.dw + 1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t c0 = (i % packs) * L, pos = i / packs;
    const int64_t w = pos % g.W, h = (pos / g.W) % g.H, n = pos / (g.W * g.H);
    const int64_t oh0 = (h + g.ph < span_h) ? 0 : (h + g.ph - span_h) / g.sh + 1;
    const int64_t oh1 = min64((h + g.ph) / g.sh + 1, g.OH);
    const int64_t ow0 = (w + g.pw < span_w) ? 0 : (w + g.pw - span_w) / g.sw + 1;
    const int64_t ow1 = min64((w + g.pw) / g.sw + 1, g.OW);
    const int64_t target = h * g.W + w;
    acc_t acc[L];
#pragma unroll
    for (int l = 0; l < L; ++l) acc[l] = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t o = ((n * g.OH + oh) * g.OW + ow) * g.C + c0;
        const P go = P::load(grad_out + o);
#pragma unroll
        for (int l = 0; l < L; l += 2) {
          const uint4 raw = *reinterpret_cast<const uint4*>(ind + o + l);
          int64_t idx[2];
          std::memcpy(idx, &raw, 16);
          if (idx[0] == target) acc[l] += static_cast<acc_t>(go.v[l]);
          if (idx[1] == target) acc[l + 1] += static_cast<acc_t>(go.v[l + 1]);
        }
      }
    }
    P r;
#pragma unroll
    for (int l = 0; l < L; ++l) r.v[l] = static_cast<scalar_t>(acc[l]);
    r.store(grad_in + pos * g.C + c0);
  }
}

}  // namespace pool
}  // namespace cuda
}  // namespace dlkernels
