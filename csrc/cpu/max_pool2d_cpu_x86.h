// The x86 kernels of max_pool2d's float forward (max_pool2d_cpu_x86.cpp), in tables per ISA, stride and index
// choice; max_pool2d_cpu.cpp picks a table at run time from cpu_isa() and calls through it. Every kernel
// follows the scalar rule of max_pool2d_cpu.cpp exactly: window positions in row-major order, replaced when
// (v > max) | isnan(v), int32 running indices (the caller checks that the plane fits).
#pragma once

#include <cstdint>

#include "common/op_args.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

constexpr int kPoolMaxChunks = 4;  // independent vectors of outputs (or channels) per kernel call

// NCHW: kernel(src, p, ih0, ih1, ow0, n_last, out, ind) computes the outputs [ow0[u], ow0[u] + lanes) for
// u < U of one output row of the plane `src`, whose input rows are [ih0, ih1) (step dh) and whose window
// columns all lie inside the row; out and ind point at the output row. short_chunk computes the n_last <
// lanes outputs from ow0[0] (lanes past them masked off).
using PoolChunksFn = void (*)(const float*, const PoolShape&, int64_t, int64_t, const int64_t*, int, float*, int64_t*);
// The chunk kernels of one ISA, stride and index choice, for U = 1 .. kPoolMaxChunks, their lane count, and
// the short-chunk kernel (AVX-512 only; null otherwise).
struct PoolChunkKernels {
  PoolChunksFn chunks[kPoolMaxChunks];
  int lanes;
  PoolChunksFn short_chunk;
};

// channels_last: kernel(src_n, p, ih0, ih1, iw0, iw1, c0, count, out, ind) computes the channels
// [c0, c0 + lanes * U) of one output position over the window [ih0, ih1) x [iw0, iw1) (steps dh, dw) of the
// sample src_n; out and ind point at the position's first channel. With AVX-512 only the first `count`
// channels are read and written (the rest masked off); with AVX2 all of them exist.
using PoolChannelsFn = void (*)(const float*, const PoolShape&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                float*, int64_t*);
struct PoolChannelKernels {
  PoolChannelsFn channels[kPoolMaxChunks];  // U = 1 .. kPoolMaxChunks
  int lanes;
};

#if defined(__x86_64__)
// The tables, AVX-512 or AVX2 (explicitly instantiated for SW 1 and 2, with and without indices).
template <int SW, bool WithIndices>
DLK_INTERNAL PoolChunkKernels max_pool2d_chunk_kernels(bool avx512);
template <bool WithIndices>
DLK_INTERNAL PoolChannelKernels max_pool2d_channel_kernels(bool avx512);

// channels_last with more channels than the registers hold (AVX-512): all C channels of one output position,
// window positions outer and channels inner, the running maxima kept in `out` and the running indices in
// `idx` (int32, C of them, scratch of the caller) until they are widened into `ind`.
template <bool WithIndices>
DLK_TARGET_AVX512 DLK_INTERNAL void max_pool2d_position_taps_avx512(const float* src_n, const PoolShape& p, int64_t ih0,
                                                                    int64_t ih1, int64_t iw0, int64_t iw1, float* out,
                                                                    int64_t* ind, int32_t* idx);
#endif

}  // namespace cpu
}  // namespace dlkernels
