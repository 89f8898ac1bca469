// MaxPool2d on the CPU: forward (with or without indices) and backward, NCHW and channels_last.
//
// Semantics follow PyTorch bit for bit:
//   - a window covers rows oh*stride - pad + j*dilation (j < kernel); its positions outside the input are
//     skipped, and its first in-bounds position is where the search starts;
//   - the running max starts at -inf with the index of that first position, and is replaced when
//     (val > max || isnan(val)): ties keep the first maximum, NaN propagates (the last NaN of a window wins);
//   - indices are int64 flat offsets h*W + w into the (H, W) input plane;
//   - output and indices come in x.suggest_memory_format().
// The backward scatters grad_out into the positions the indices name, in the order of the outputs, so the
// sums of overlapping windows are deterministic (each thread owns whole planes, or whole samples for
// channels_last); half types accumulate in a float buffer.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/op_args.h"
#include "common/shapes.h"
#include "cpu/cpu_utils.h"
#include "cpu/max_pool2d_cpu_x86.h"
#include "cpu/memory.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {
namespace {

// The first in-bounds position of a window starting at `start` (may be negative), stepping by `dilation`.
inline int64_t first_in_bounds(int64_t start, int64_t dilation) {
  while (start < 0) start += dilation;
  return start;
}

// One float output by the scalar rule, for the vector paths' leftovers: the window [ih0, ih1) x [iw0, iw1)
// (steps dh, dw) of a plane whose element (ih, iw) is at src[(ih * W + iw) * step].
inline void window_max_f32(const float* src, int64_t step, const PoolShape& p, int64_t ih0, int64_t ih1, int64_t iw0,
                           int64_t iw1, float* out, int64_t* ind) {
  float mv = -std::numeric_limits<float>::infinity();
  int64_t mi = ih0 * p.W + iw0;
  for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
    for (int64_t iw = iw0; iw < iw1; iw += p.dw) {
      const float v = src[(ih * p.W + iw) * step];
      if (v > mv || std::isnan(v)) mv = v, mi = ih * p.W + iw;
    }
  }
  *out = mv;
  if (ind) *ind = mi;
}

// ---------------------------------------------------------------------------------------------------------
// Forward, NCHW: one task per output row of one plane. For each in-bounds (ih, kw) of the row's windows the
// inner loop runs over ow, so each output still sees its window positions in row-major order (same ties and
// NaN rule as a per-output loop), and the loop body is branch-free.
// index_t is the type of the running index row: int32 when the plane fits (same lane width as the float max
// row, which lets the compiler vectorise the select), int64 otherwise.
template <typename scalar_t, bool WithIndices, typename index_t>
void max_pool2d_forward_kernel_nchw(const scalar_t* in, scalar_t* out, int64_t* ind, const PoolShape& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = p.N * p.C * p.OH;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> maxv(p.OW);
    std::vector<index_t> maxi(WithIndices ? p.OW : 0);
    // Per kw: the range of ow whose tap kw is inside the input (iw = ow*sw - pw + kw*dw in [0, W)).
    std::vector<int64_t> ow_lo(p.kw), ow_hi(p.kw);
    for (int64_t kw = 0; kw < p.kw; ++kw) {
      const int64_t off = kw * p.dw - p.pw;  // iw = ow*sw + off
      const int64_t lo = off >= 0 ? 0 : (-off + p.sw - 1) / p.sw;
      const int64_t hi_num = p.W - 1 - off;  // ow*sw <= W-1-off
      const int64_t hi = hi_num < 0 ? -1 : std::min(hi_num / p.sw, p.OW - 1);
      ow_lo[kw] = lo;
      ow_hi[kw] = hi;
    }
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / p.OH;
      const int64_t oh = r % p.OH;
      const scalar_t* src = in + plane * p.H * p.W;
      const int64_t ih_start = oh * p.sh - p.ph;
      const int64_t ih1 = std::min(ih_start + (p.kh - 1) * p.dh + 1, p.H);
      const int64_t ih0 = first_in_bounds(ih_start, p.dh);
      acc_t* mv = maxv.data();
      index_t* mi = maxi.data();
      for (int64_t ow = 0; ow < p.OW; ++ow) {
        mv[ow] = -std::numeric_limits<acc_t>::infinity();
        if (WithIndices) mi[ow] = static_cast<index_t>(ih0 * p.W + first_in_bounds(ow * p.sw - p.pw, p.dw));
      }
      for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
        const scalar_t* row = src + ih * p.W;
        for (int64_t kw = 0; kw < p.kw; ++kw) {
          const int64_t off = kw * p.dw - p.pw;
          const index_t base = static_cast<index_t>(ih * p.W + off);
          const index_t step = static_cast<index_t>(p.sw);
          for (int64_t ow = ow_lo[kw]; ow <= ow_hi[kw]; ++ow) {
            const acc_t val = static_cast<acc_t>(row[ow * p.sw + off]);
            const bool take = (val > mv[ow]) || std::isnan(val);
            mv[ow] = take ? val : mv[ow];
            if (WithIndices) mi[ow] = take ? base + static_cast<index_t>(ow) * step : mi[ow];
          }
        }
      }
      scalar_t* dst = out + r * p.OW;
      for (int64_t ow = 0; ow < p.OW; ++ow) dst[ow] = static_cast<scalar_t>(mv[ow]);
      if (WithIndices) std::copy(mi, mi + p.OW, ind + r * p.OW);
    }
  });
}

// The vectorised forward for float NCHW, stride 1 or 2 along W: chunks of L outputs (one per lane) by the
// kernels of max_pool2d_cpu_x86.cpp, bit for bit the rule above; the scalar rule still does the outputs
// whose window leaves the row (padding), other strides, and CPUs without AVX2.

// Output rows [r0, r1) (row = plane * OH + oh) of an NCHW float tensor: vector chunks of L outputs where the
// whole window is inside the row, the scalar rule elsewhere.
template <int SW>
void pool_rows_f32(const PoolChunkKernels& k, const float* in, float* out, int64_t* ind, const PoolShape& p, int64_t r0,
                   int64_t r1) {
  const int L = k.lanes;
  // Chunk starts ow0 whose L outputs have every window column in the row, counting the extra element the
  // stride-2 load reads: ow0*SW - pw >= 0 and (ow0 + L - 1)*SW - pw + (kw-1)*dw + (SW-1) <= W - 1.
  const int64_t lo = (p.pw + SW - 1) / SW;
  const int64_t hi_num = p.W - 1 - (SW - 1) + p.pw - (p.kw - 1) * p.dw - (L - 1) * SW;
  const int64_t last = hi_num < 0 ? -1 : hi_num / SW;  // the last valid chunk start
  // The chunk starts, the same for every row: every L from lo, and one more ending as far right as allowed,
  // which may overlap the one before (it writes the same values).
  std::vector<int64_t> starts;
  int64_t done_lo = 0, done_hi = 0;  // outputs [done_lo, done_hi) are written by vector chunks
  if (last >= lo) {
    for (int64_t ow0 = lo; ow0 <= last; ow0 += L) starts.push_back(ow0);
    if (starts.back() < last) starts.push_back(last);
    done_lo = lo;
    done_hi = last + L;
  }
  // Short chunks (when the ISA has masks) for the outputs after those, up to the last whose window ends
  // inside the row: ow*SW - pw + (kw-1)*dw <= W - 1.
  std::vector<std::pair<int64_t, int>> tails;
  if (k.short_chunk) {
    const int64_t tail_num = p.W - 1 + p.pw - (p.kw - 1) * p.dw;
    const int64_t end = tail_num < 0 ? 0 : std::min(p.OW, tail_num / SW + 1);  // one past the last such output
    int64_t ow0 = starts.empty() ? lo : done_hi;
    if (starts.empty()) done_lo = done_hi = lo;
    for (; ow0 < end; ow0 += L) tails.emplace_back(ow0, static_cast<int>(std::min<int64_t>(L, end - ow0)));
    done_hi = std::max(done_hi, end);
  }
  const int64_t n_starts = static_cast<int64_t>(starts.size());
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t plane = r / p.OH, oh = r % p.OH;
    const float* src = in + plane * p.H * p.W;
    const int64_t ih_start = oh * p.sh - p.ph;
    const int64_t ih1 = std::min(ih_start + (p.kh - 1) * p.dh + 1, p.H);
    const int64_t ih0 = first_in_bounds(ih_start, p.dh);
    float* o = out + r * p.OW;
    int64_t* id = ind ? ind + r * p.OW : nullptr;
    for (int64_t i = 0; i < n_starts; i += kPoolMaxChunks) {
      const int64_t u = std::min<int64_t>(kPoolMaxChunks, n_starts - i);
      k.chunks[u - 1](src, p, ih0, ih1, starts.data() + i, L, o, id);
    }
    for (const auto& [ow0, n] : tails) k.short_chunk(src, p, ih0, ih1, &ow0, n, o, id);
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      if (ow == done_lo && done_hi > done_lo) ow = done_hi;
      if (ow >= p.OW) break;
      const int64_t iw_start = ow * p.sw - p.pw;
      const int64_t iw1 = std::min(iw_start + (p.kw - 1) * p.dw + 1, p.W);
      window_max_f32(src, 1, p, ih0, ih1, first_in_bounds(iw_start, p.dw), iw1, o + ow, id ? id + ow : nullptr);
    }
  }
}

// Float NCHW, stride 1 or 2 along W, int32-sized planes: the vector path when the CPU has AVX2 at least.
// Returns false (nothing done) otherwise.
template <bool WithIndices>
bool max_pool2d_forward_kernel_nchw_f32(const float* in, float* out, int64_t* ind, const PoolShape& p) {
#if defined(__x86_64__)
  const Isa isa = cpu_isa();
  if (isa == Isa::Base || (p.sw != 1 && p.sw != 2)) return false;
  const bool avx512 = isa == Isa::Avx512;
  const PoolChunkKernels kernels =
      p.sw == 1 ? max_pool2d_chunk_kernels<1, WithIndices>(avx512) : max_pool2d_chunk_kernels<2, WithIndices>(avx512);
  const int64_t grain = std::max<int64_t>(1, 4096 / p.OW);  // whole rows, a few thousand outputs per grain
  at::parallel_for(0, p.N * p.C * p.OH, grain, [&](int64_t r0, int64_t r1) {
    if (p.sw == 1) {
      pool_rows_f32<1>(kernels, in, out, ind, p, r0, r1);
    } else {
      pool_rows_f32<2>(kernels, in, out, ind, p, r0, r1);
    }
  });
  return true;
#else
  return false;
#endif
}

// Forward, channels_last: one task per output position (n, oh, ow); the inner loops run contiguously over C
// with a per-channel max (and index) row.
template <typename scalar_t, bool WithIndices, typename index_t>
void max_pool2d_forward_kernel_nhwc(const scalar_t* in, scalar_t* out, int64_t* ind, const PoolShape& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t positions = p.N * p.OH * p.OW;
  const int64_t C = p.C;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));
  at::parallel_for(0, positions, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> maxv(C);
    std::vector<index_t> maxi(WithIndices ? C : 0);
    acc_t* mv = maxv.data();
    index_t* mi = maxi.data();
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t ow = pos % p.OW;
      const int64_t oh = (pos / p.OW) % p.OH;
      const int64_t n = pos / (p.OW * p.OH);
      const int64_t ih_start = oh * p.sh - p.ph;
      const int64_t iw_start = ow * p.sw - p.pw;
      const int64_t ih1 = std::min(ih_start + (p.kh - 1) * p.dh + 1, p.H);
      const int64_t iw1 = std::min(iw_start + (p.kw - 1) * p.dw + 1, p.W);
      const int64_t ih0 = first_in_bounds(ih_start, p.dh);
      const int64_t iw0 = first_in_bounds(iw_start, p.dw);
      const index_t first = static_cast<index_t>(ih0 * p.W + iw0);
      for (int64_t c = 0; c < C; ++c) {
        mv[c] = -std::numeric_limits<acc_t>::infinity();
        if (WithIndices) mi[c] = first;
      }
      const scalar_t* src_n = in + n * p.H * p.W * C;
      for (int64_t ih = ih0; ih < ih1; ih += p.dh) {
        for (int64_t iw = iw0; iw < iw1; iw += p.dw) {
          const index_t idx = static_cast<index_t>(ih * p.W + iw);
          const scalar_t* src = src_n + (ih * p.W + iw) * C;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t val = static_cast<acc_t>(src[c]);
            const bool take = (val > mv[c]) || std::isnan(val);
            mv[c] = take ? val : mv[c];
            if (WithIndices) mi[c] = take ? idx : mi[c];
          }
        }
      }
      scalar_t* dst = out + pos * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(mv[c]);
      if (WithIndices) std::copy(mi, mi + C, ind + pos * C);
    }
  });
}

// The vectorised forward for float channels_last: L channels at a time by the kernels of
// max_pool2d_cpu_x86.cpp, bit for bit the rule above. The window of an output position is clipped to the
// input ([ih0, ih1) x [iw0, iw1), steps dh and dw) here.
// Float channels_last with int32-sized planes, on a CPU with AVX2 at least; returns false (nothing done)
// otherwise. One task per output position, as above; the channels go in groups of up to kPoolMaxChunks vectors,
// and with AVX2 the channels past the last multiple of 8 take the scalar rule.
template <bool WithIndices>
bool max_pool2d_forward_kernel_nhwc_f32(const float* in, float* out, int64_t* ind, const PoolShape& p) {
#if defined(__x86_64__)
  const Isa isa = cpu_isa();
  if (isa == Isa::Base) return false;
  const bool avx512 = isa == Isa::Avx512;
  const PoolChannelKernels kernels = max_pool2d_channel_kernels<WithIndices>(avx512);
  const int64_t L = kernels.lanes;
  const int64_t C = p.C;
  const int64_t vector_channels = avx512 ? C : C / L * L;  // AVX-512 masks the last partial vector
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));
  const bool taps_outer = avx512 && C > kPoolMaxChunks * L;  // more channels than the registers hold
  at::parallel_for(0, p.N * p.OH * p.OW, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> idx_buf(taps_outer && WithIndices ? C : 0);
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t ow = pos % p.OW;
      const int64_t oh = (pos / p.OW) % p.OH;
      const int64_t n = pos / (p.OW * p.OH);
      const int64_t ih_start = oh * p.sh - p.ph;
      const int64_t iw_start = ow * p.sw - p.pw;
      const int64_t ih1 = std::min(ih_start + (p.kh - 1) * p.dh + 1, p.H);
      const int64_t iw1 = std::min(iw_start + (p.kw - 1) * p.dw + 1, p.W);
      const int64_t ih0 = first_in_bounds(ih_start, p.dh);
      const int64_t iw0 = first_in_bounds(iw_start, p.dw);
      const float* src_n = in + n * p.H * p.W * C;
      float* o = out + pos * C;
      int64_t* id = WithIndices ? ind + pos * C : nullptr;
      if (taps_outer) {
        max_pool2d_position_taps_avx512<WithIndices>(src_n, p, ih0, ih1, iw0, iw1, o, id, idx_buf.data());
        continue;
      }
      for (int64_t c = 0; c < vector_channels; c += kPoolMaxChunks * L) {
        const int64_t count = std::min(kPoolMaxChunks * L, vector_channels - c);
        kernels.channels[(count + L - 1) / L - 1](src_n, p, ih0, ih1, iw0, iw1, c, count, o, id);
      }
      for (int64_t c = vector_channels; c < C; ++c) {
        window_max_f32(src_n + c, C, p, ih0, ih1, iw0, iw1, o + c, WithIndices ? id + c : nullptr);
      }
    }
  });
  return true;
#else
  return false;
#endif
}

template <bool WithIndices>
std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_impl(const at::Tensor& x_in, c10::IntArrayRef kernel_size,
                                                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                           c10::IntArrayRef dilation, bool ceil_mode, const char* op) {
  const PoolShape p =
      check_pool_args(x_in, kernel_size, stride, padding, dilation, ceil_mode, op, c10::DeviceType::CPU);
  const auto fmt = x_in.suggest_memory_format();
  const at::Tensor x = x_in.contiguous(fmt);
  const auto opts = x.options().memory_format(fmt);
  at::Tensor out = empty_output({p.N, p.C, p.OH, p.OW}, opts);
  at::Tensor ind;
  if (WithIndices) ind = empty_output({p.N, p.C, p.OH, p.OW}, opts.dtype(at::kLong));
  if (out.numel() == 0) return {out, ind};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_max_pool2d_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    int64_t* idx = WithIndices ? ind.mutable_data_ptr<int64_t>() : nullptr;
    // Window starts lie below H + pad (resp. W + pad) and a first in-bounds position (even of a window with
    // none, whose index PyTorch still reports) less than kernel*dilation further: int32 holds every offset
    // when this bound fits, with room to spare.
    const bool small = (p.H + p.ph + p.kh * p.dh + 1) * (p.W + p.pw + p.kw * p.dw + 1) < (int64_t(1) << 30);
    auto run = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
      if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int32_t>) {
        if (channels_last ? max_pool2d_forward_kernel_nhwc_f32<WithIndices>(src, dst, idx, p)
                          : max_pool2d_forward_kernel_nchw_f32<WithIndices>(src, dst, idx, p)) {
          return;
        }
      }
      if (channels_last) {
        max_pool2d_forward_kernel_nhwc<scalar_t, WithIndices, index_t>(src, dst, idx, p);
      } else {
        max_pool2d_forward_kernel_nchw<scalar_t, WithIndices, index_t>(src, dst, idx, p);
      }
    };
    if (!WithIndices || small) {
      run(int32_t{});
    } else {
      run(int64_t{});
    }
  });
  return {out, ind};
}

at::Tensor max_pool2d_forward(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(
      max_pool2d_forward_impl<false>(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d"));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_forward(const at::Tensor& x, c10::IntArrayRef kernel_size,
                                                                   c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                                   c10::IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_forward_impl<true>(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_with_indices");
}

// ---------------------------------------------------------------------------------------------------------
// Backward. Indices outside the plane (only possible for a window with no in-bounds position, whose max is
// -inf, or for indices not produced by the forward) are skipped rather than written out of bounds.

// NCHW: one task per (n, c) plane; gradients add up in output order, in acc_t.
template <typename scalar_t>
void max_pool2d_grad_input_kernel_nchw(const scalar_t* gout, const int64_t* ind, scalar_t* gin, const PoolShape& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<acc_t, scalar_t>;
  const int64_t planes = p.N * p.C;
  const int64_t in_plane = p.H * p.W;
  const int64_t out_plane = p.OH * p.OW;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(kDirect ? 0 : in_plane);
    for (int64_t plane = begin; plane < end; ++plane) {
      acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(gin + plane * in_plane) : buf.data();
      zero_fill(acc, in_plane * sizeof(acc_t));  // not std::fill: see zero_fill
      const scalar_t* g = gout + plane * out_plane;
      const int64_t* id = ind + plane * out_plane;
      for (int64_t o = 0; o < out_plane; ++o) {
        const int64_t i = id[o];
        if (i >= 0 && i < in_plane) acc[i] += static_cast<acc_t>(g[o]);
      }
      if (!kDirect) {
        scalar_t* dst = gin + plane * in_plane;
        for (int64_t i = 0; i < in_plane; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
      }
    }
  });
}

// channels_last: one task per sample n, which owns all its channels.
template <typename scalar_t>
void max_pool2d_grad_input_kernel_nhwc(const scalar_t* gout, const int64_t* ind, scalar_t* gin, const PoolShape& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<acc_t, scalar_t>;
  const int64_t C = p.C;
  const int64_t in_plane = p.H * p.W;
  const int64_t in_sample = in_plane * C;
  const int64_t out_positions = p.OH * p.OW;
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(kDirect ? 0 : in_sample);
    for (int64_t n = begin; n < end; ++n) {
      acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(gin + n * in_sample) : buf.data();
      zero_fill(acc, in_sample * sizeof(acc_t));
      const scalar_t* g_n = gout + n * out_positions * C;
      const int64_t* id_n = ind + n * out_positions * C;
      for (int64_t o = 0; o < out_positions; ++o) {
        const scalar_t* g = g_n + o * C;
        const int64_t* id = id_n + o * C;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = id[c];
          if (i >= 0 && i < in_plane) acc[i * C + c] += static_cast<acc_t>(g[c]);
        }
      }
      if (!kDirect) {
        scalar_t* dst = gin + n * in_sample;
        for (int64_t i = 0; i < in_sample; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
      }
    }
  });
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_out_in, const at::Tensor& x, const at::Tensor& indices_in,
                               c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "max_pool2d_backward";
  const PoolShape p = check_pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, op, c10::DeviceType::CPU);
  check_pool_backward_args(x, grad_out_in, indices_in, p, op);

  const auto fmt = x.suggest_memory_format();
  at::Tensor grad_in = empty_output(x.sizes(), x.options().memory_format(fmt));
  if (grad_in.numel() == 0) return grad_in;
  const at::Tensor grad_out = grad_out_in.contiguous(fmt);
  const at::Tensor indices = indices_in.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_max_pool2d_backward_cpu", [&] {
    const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
    const int64_t* id = indices.const_data_ptr<int64_t>();
    scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      max_pool2d_grad_input_kernel_nhwc<scalar_t>(g, id, gi, p);
    } else {
      max_pool2d_grad_input_kernel_nchw<scalar_t>(g, id, gi, p);
    }
  });
  return grad_in;
}

}  // namespace
}  // namespace cpu
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(dlkernels, CPU, m) {
  m.impl("max_pool2d", &dlkernels::cpu::max_pool2d_forward);
  m.impl("max_pool2d_with_indices", &dlkernels::cpu::max_pool2d_with_indices_forward);
  m.impl("max_pool2d_backward", &dlkernels::cpu::max_pool2d_backward);
}
