// The fused Conv -> activation -> MaxPool block on the CPU, max_pool2d(act(conv2d(x))), and its backward.
//
// Forward: the convolution is conv2d_cpu.cpp's implicit GEMM (the same im2col packing, the same register
// micro-kernel), run by a driver of its own whose task is (image, group, block of output channels, band of
// pooled rows). A task computes the conv output rows that its band of pooling windows covers into a
// per-thread buffer (bias and relu in the micro-kernel's epilogue, other activations and the rounding of
// half types right after), pools each strip of channels as soon as its last K slice is done, while it is
// still in cache, and writes only the pooled output and the window index. The conv output never reaches
// memory. Where windows overlap (kernel > stride), the conv row two bands share is computed by both.
// Few-channel convolutions (conv2d_is_small) compute their bands with conv2d_cpu_small.h's direct kernel
// instead, all output channels of a band at once, then pool them the same way. The 3x3 convolutions that
// conv2d runs with Winograd (conv2d_cpu_winograd.h) run the same way in the block, through a conv-output
// buffer pooled plane by plane.
// Pooling follows PyTorch bit for bit: the running max starts at -inf with the window's first in-bounds
// position, and is replaced when (val > max || isnan(val)), so ties keep the first maximum and NaN
// propagates (the last NaN of a window wins); values are compared after the activation and after the
// rounding to the output dtype, as torch's composite compares them.
// The window index of an output is (h - h0) * KW + (w - w0) for its maximum at conv position (h, w) and the
// window's corner (h0, w0) (padding included): int8 for windows of up to 128 positions (pool_index_dtype).
//
// Backward: dL/dz (z the pre-activation, the conv output before the activation) is zero except at each
// window's maximum, which receives grad_out * act'(.): the derivative from the pooled output (relu, sigmoid,
// ...), from z (gelu, silu, ...: conv2d's rule), or 1 ("none"). grad_bias sums the routed values. Two paths
// compute grad_x and grad_w from them:
// - sparse (conv2d_maxpool_cpu_backward.cpp), where the maxima are at most half of the conv positions and the
//   conv's channel runs fill a vector: the gradients directly from the routed (position, value) pairs, z
//   recomputed only at the maxima, about 1 / window of the dense work. Deterministic (the same bits for every
//   thread count), but summed in another order than conv2d's backward: within rounding of the unfused
//   conv2d + max_pool2d gradients, not equal to them bit for bit.
// - dense, elsewhere (heavily overlapping windows, depthwise and few-channel convs): gz, the full-size dL/dz,
//   then conv2d's own passes over it (z recomputed by the conv GEMM), so the gradients are bit for bit those
//   of the unfused conv2d + max_pool2d.
//
// NCHW inside; a channels_last input gets channels_last results (converted once at the end, as conv2d).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/FunctionRef.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "common/op_args.h"
#include "common/shapes.h"
#include "cpu/activation_span.h"
#include "cpu/conv2d_cpu.h"
#include "cpu/conv2d_cpu_small.h"
#include "cpu/conv2d_cpu_winograd.h"
#include "cpu/conv2d_maxpool_cpu_backward.h"
#include "cpu/conv2d_maxpool_cpu_x86.h"
#include "cpu/cpu_utils.h"
#include "cpu/gemm.h"
#include "cpu/memory.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {
namespace {

constexpr const char* kOp = "conv2d_maxpool";
constexpr const char* kOpBwd = "conv2d_maxpool_backward";

// ---------------------------------------------------------------------------------------------------------
// Pooling of one channel's band of conv rows.

// Per window column dw: the pooled columns [lo, hi) whose tap dw lies inside the conv output row.
struct TapRange {
  int64_t lo, hi;
};

std::vector<TapRange> tap_ranges(const BlockShape& b) {
  std::vector<TapRange> ranges(b.kw);
  for (int64_t dw = 0; dw < b.kw; ++dw) {
    const int64_t off = dw - b.pw;  // w = pw * sw + off
    const int64_t lo = off >= 0 ? 0 : (-off + b.sw - 1) / b.sw;
    const int64_t hi = b.conv.OW - 1 - off < 0 ? 0 : std::min(b.PW, (b.conv.OW - 1 - off) / b.sw + 1);
    ranges[dw] = {lo, std::max(lo, hi)};
  }
  return ranges;
}

// Pools the conv rows of one channel (conv row r at rows + (r - r0) * ld) into pooled rows [q0, q1): maxima
// into mv and window indices into mi, (q - q0) * PW + pw. The taps go in the window's row-major order with
// the pooled column innermost, so every output sees its in-bounds positions in the order torch's loop does
// and the loop body is a branch-free select.
template <typename acc_t>
void pool_band(const BlockShape& b, const TapRange* ranges, const acc_t* rows, int64_t ld, int64_t r0, int64_t q0,
               int64_t q1, acc_t* mv, int32_t* mi) {
  const int64_t PW = b.PW, OH = b.conv.OH;
  for (int64_t q = q0; q < q1; ++q) {
    acc_t* m = mv + (q - q0) * PW;
    int32_t* id = mi + (q - q0) * PW;
    const int64_t h0 = q * b.sh - b.ph;
    const int64_t dh0 = std::max<int64_t>(0, -h0), dh1 = std::min(b.kh, OH - h0);
    for (int64_t pw = 0; pw < PW; ++pw) {
      m[pw] = -std::numeric_limits<acc_t>::infinity();
      id[pw] = static_cast<int32_t>(dh0 * b.kw + std::max<int64_t>(0, b.pw - pw * b.sw));
    }
    for (int64_t dh = dh0; dh < dh1; ++dh) {
      const acc_t* row = rows + (h0 + dh - r0) * ld;
      for (int64_t dw = 0; dw < b.kw; ++dw) {
        const acc_t* src = row + dw - b.pw;
        const int32_t code = static_cast<int32_t>(dh * b.kw + dw);
        const int64_t sw = b.sw;
        for (int64_t pw = ranges[dw].lo; pw < ranges[dw].hi; ++pw) {
          const acc_t val = src[pw * sw];
          const bool take = (val > m[pw]) || std::isnan(val);
          m[pw] = take ? val : m[pw];
          id[pw] = take ? code : id[pw];
        }
      }
    }
  }
}

// The pooling of a band, vectorised where the CPU and the window allow (conv2d_maxpool_cpu_x86.cpp).
template <typename acc_t>
void pool_band_fast(const BlockShape& b, const TapRange* ranges, const acc_t* rows, int64_t ld, int64_t r0, int64_t q0,
                    int64_t q1, acc_t* mv, int32_t* mi) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<acc_t, float>) {
    if (b.kh == 2 && b.kw == 2 && b.sh == 2 && b.sw == 2 && b.ph == 0 && b.pw == 0) {
      switch (cpu_isa()) {
        case Isa::Avx512: return conv2d_maxpool_pool_2x2_avx512(b, rows, ld, r0, q0, q1, mv, mi);
        case Isa::Avx2: return conv2d_maxpool_pool_2x2_avx2(b, rows, ld, r0, q0, q1, mv, mi);
        default: break;
      }
    }
  }
#endif
  pool_band(b, ranges, rows, ld, r0, q0, q1, mv, mi);
}

// ---------------------------------------------------------------------------------------------------------
// Forward driver.

// finish(n, k, rows, ld, r0, q0, q1): called once per finished strip row of the GEMM (channel k of image n,
// conv rows [r0, ...) at rows with row stride ld, relu and bias applied): applies the rest of the activation
// and the rounding in place, pools the band [q0, q1) and writes the results.
template <typename acc_t>
using FinishFn =
    c10::function_ref<void(int64_t n, int64_t k, acc_t* rows, int64_t ld, int64_t r0, int64_t q0, int64_t q1)>;

template <typename acc_t>
void conv2d_maxpool_forward_kernel(const BlockShape& b, const acc_t* x, const acc_t* w, const acc_t* bias, bool relu,
                                   FinishFn<acc_t> finish) {
  const ConvShape& s = b.conv;
  const MicroKernel<acc_t>& uk = micro_kernel_for_rows<acc_t>(s.Kg);
  const int MR = uk.mr, NR = uk.nr;
  using Blk = GemmBlocking<acc_t>;
  const int64_t M = s.Kg, K = s.Cg * s.KH * s.KW;
  const int64_t panels_m = (M + MR - 1) / MR;
  const int64_t k_slices = std::max<int64_t>(1, (K + Blk::KC - 1) / Blk::KC);
  const int64_t KC = (K + k_slices - 1) / k_slices;

  // The weights of each group, packed once into MR-row panels (k-major), as gemm_run packs A.
  const int64_t a_size = panels_m * K * MR;
  PackBuffer<acc_t> a_packed(0, std::max<int64_t>(1, s.groups * a_size));
  const int64_t pack_grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, K * MR));
  at::parallel_for(0, s.groups * panels_m, pack_grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / panels_m, pm = t % panels_m;
      const int mr = static_cast<int>(std::min<int64_t>(MR, M - pm * MR));
      pack_a_strided(w + g * M * K, K, 1, pm * MR, mr, K, a_packed.get() + g * a_size + pm * K * MR, MR);
    }
  });

  // Bands of pooled rows: as many as keep a band's conv rows at about kBandBytes of packed B per K slice
  // (the B panels stay in L2 while the weight panels stream from L1), then fewer rows and channel blocks
  // while the tasks are too few for the threads.
  constexpr int64_t kBandBytes = 384 * 1024;
  const int64_t target_cols =
      std::clamp<int64_t>(kBandBytes / (KC * static_cast<int64_t>(sizeof(acc_t))), 2 * NR, 4096);
  const auto conv_rows = [&](int64_t rows) { return (rows - 1) * b.sh + b.kh; };  // at most, for `rows` pooled rows
  int64_t band = 1;
  while (band < b.PH && conv_rows(band + 1) * s.OW <= target_cols) ++band;
  const int64_t threads = at::get_num_threads();
  const int64_t images = s.N * s.groups;
  while (band > 1 && images * ((b.PH + band - 1) / band) < 4 * threads) band = (band + 1) / 2;
  const int64_t bands = (b.PH + band - 1) / band;
  int64_t block_panels = std::min<int64_t>(panels_m, std::max<int64_t>(1, 128 / MR));
  while (block_panels > 1 && images * bands * ((panels_m + block_panels - 1) / block_panels) < 4 * threads) {
    block_panels = (block_panels + 1) / 2;
  }
  const int64_t blocks = (panels_m + block_panels - 1) / block_panels;
  const int64_t max_cols = std::min(conv_rows(band), s.OH) * s.OW;
  const int64_t max_panels_n = (max_cols + NR - 1) / NR;
  const int64_t b_elems = max_panels_n * KC * NR;
  const int64_t c_elems = block_panels * MR * max_cols;

  const double task_flops = 2.0 * block_panels * MR * max_cols * K;
  const int64_t task_grain = std::max<int64_t>(1, static_cast<int64_t>(4e6 / task_flops));
  at::parallel_for(0, images * bands * blocks, task_grain, [&](int64_t t0, int64_t t1) {
    PackBuffer<acc_t> scratch(1, b_elems + c_elems);
    acc_t* b_packed = scratch.get();
    acc_t* cbuf = b_packed + b_elems;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t image = t / (bands * blocks), band_index = (t / blocks) % bands, block = t % blocks;
      const int64_t n = image / s.groups, g = image % s.groups;
      const int64_t q0 = band_index * band, q1 = std::min(b.PH, q0 + band);
      const int64_t r0 = std::max<int64_t>(0, q0 * b.sh - b.ph);
      const int64_t r1 = std::min(s.OH, (q1 - 1) * b.sh - b.ph + b.kh);
      const int64_t j0 = r0 * s.OW, cols = (r1 - r0) * s.OW, panels_n = (cols + NR - 1) / NR;
      const int64_t pm0 = block * block_panels, pm1 = std::min(panels_m, pm0 + block_panels);
      const acc_t* xg = x + (n * s.C + g * s.Cg) * s.H * s.W;
      const acc_t* a_base = a_packed.get() + g * a_size;
      for (int64_t slice = 0; slice < k_slices; ++slice) {
        const int64_t k0 = slice * KC, kc = std::min(KC, K - k0);
        const bool last = slice + 1 == k_slices;
        for (int64_t pn = 0; pn < panels_n; ++pn) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, cols - pn * NR));
          conv2d_pack_im2col(s, xg, j0 + pn * NR, nr, k0, kc, b_packed + pn * kc * NR, NR);
        }
        for (int64_t pm = pm0; pm < pm1; ++pm) {
          const int64_t i0 = pm * MR;
          const int mr = static_cast<int>(std::min<int64_t>(MR, M - i0));
          const acc_t* a = a_base + pm * K * MR + k0 * MR;
          acc_t* strip = cbuf + (pm - pm0) * MR * cols;
          const acc_t* bias_m = last && bias ? bias + g * M + i0 : nullptr;
          for (int64_t pn = 0; pn < panels_n; ++pn) {
            const int nr = static_cast<int>(std::min<int64_t>(NR, cols - pn * NR));
            const MicroKernelFn<acc_t> run = 2 * nr <= NR ? uk.run_half : uk.run;
            run(kc, a, 0, b_packed + pn * kc * NR, strip + pn * NR, cols, mr, nr, slice > 0, bias_m, nullptr,
                last && relu);
          }
          if (last) {
            for (int i = 0; i < mr; ++i) finish(n, g * M + i0 + i, strip + i * cols, s.OW, r0, q0, q1);
          }
        }
      }
    }
  });
}

// The forward for few channels (conv2d_is_small): a task (image, band of pooled rows) computes the band's conv
// rows of every output channel with the direct kernel of conv2d_cpu_small.h into a per-thread buffer (bias
// and relu in its epilogue), then finishes each channel as above. A thread copies its image into its padded
// input buffer once for the consecutive bands of that image.
template <typename acc_t>
void conv2d_maxpool_small_forward_kernel(const BlockShape& b, const acc_t* x, const acc_t* w, const acc_t* bias,
                                         bool relu, FinishFn<acc_t> finish) {
  const ConvShape& s = b.conv;
  const SmallConv<acc_t> sc = small_conv<acc_t>(s, w, bias);
  // Bands: as many pooled rows as keep their conv rows of all channels at about kBandBytes (in cache for the
  // pooling), then fewer while the tasks are too few for the threads.
  constexpr int64_t kBandBytes = 128 * 1024;
  const auto conv_rows = [&](int64_t rows) { return (rows - 1) * b.sh + b.kh; };  // at most, for `rows` pooled rows
  const int64_t row_bytes = s.OW * s.K * static_cast<int64_t>(sizeof(acc_t));
  int64_t band = 1;
  while (band < b.PH && conv_rows(band + 1) * row_bytes <= kBandBytes) ++band;
  const int64_t threads = at::get_num_threads();
  while (band > 1 && s.N * ((b.PH + band - 1) / band) < 4 * threads) band = (band + 1) / 2;
  const int64_t bands = (b.PH + band - 1) / band;
  const int64_t max_cols = std::min(conv_rows(band), s.OH) * s.OW;
  const int64_t work = max_cols * s.K * s.C * s.KH * s.KW;
  at::parallel_for(0, s.N * bands, std::max<int64_t>(1, (int64_t(1) << 16) / work), [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> scratch(static_cast<size_t>(sc.scratch() + s.K * max_cols), acc_t(0));
    acc_t* image = scratch.data();
    acc_t* cbuf = image + sc.scratch();
    int64_t built = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / bands, band_index = t % bands;
      const int64_t q0 = band_index * band, q1 = std::min(b.PH, q0 + band);
      const int64_t r0 = std::max<int64_t>(0, q0 * b.sh - b.ph);
      const int64_t r1 = std::min(s.OH, (q1 - 1) * b.sh - b.ph + b.kh);
      if (n != built) sc.fill(x + n * s.C * s.H * s.W, image), built = n;
      sc.rows(image, r0, r1, cbuf, max_cols, relu);
      for (int64_t k = 0; k < s.K; ++k) finish(n, k, cbuf + k * max_cols, s.OW, r0, q0, q1);
    }
  });
}

// The sum of a plane in 16 fixed lanes, then the lanes and the rest in order: conv2d_cpu.cpp's grad_bias sum
// (a single running sum may not be reordered, so it would run one add at a time).
template <typename acc_t>
acc_t plane_sum(const acc_t* v, int64_t n) {
  constexpr int V = 16;
  acc_t lanes[V] = {};
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    for (int l = 0; l < V; ++l) lanes[l] += v[i + l];
  }
  acc_t sum = acc_t(0);
  for (int l = 0; l < V; ++l) sum += lanes[l];
  for (; i < n; ++i) sum += v[i];
  return sum;
}

// ---------------------------------------------------------------------------------------------------------
// Entry points.

std::tuple<at::Tensor, at::Tensor> conv2d_maxpool_forward(const at::Tensor& x, const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                                          int64_t groups, c10::string_view activation, double alpha,
                                                          double beta, at::IntArrayRef pool_kernel_size,
                                                          at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                                                          bool pool_ceil_mode) {
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, kOp);
  const BlockShape b = check_conv2d_maxpool_args(x, weight, bias, stride, padding, dilation, groups, pool_kernel_size,
                                                 pool_stride, pool_padding, pool_ceil_mode, kOp, c10::DeviceType::CPU);
  const ConvShape& s = b.conv;
  const auto memory_format = x.suggest_memory_format();
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor out = empty_output({s.N, s.K, b.PH, b.PW}, opts);
  at::Tensor index = empty_output({s.N, s.K, b.PH, b.PW}, opts.dtype(pool_index_dtype(b.kh, b.kw)));
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_conv2d_maxpool_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
      const at::Tensor xa = as_acc(x, acc_type);
      const at::Tensor wa = as_acc(weight, acc_type);
      const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
      scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
      const bool is8 = index.scalar_type() == at::kChar;
      int8_t* index8 = is8 ? index.mutable_data_ptr<int8_t>() : nullptr;
      int32_t* index32 = is8 ? nullptr : index.mutable_data_ptr<int32_t>();
      const int64_t pooled = b.PH * b.PW;
      const std::vector<TapRange> ranges = tap_ranges(b);
      dispatch_activation(act, [&](auto act_tag) {
        constexpr Activation A = decltype(act_tag)::value;
        // relu runs in the micro-kernel's epilogue; the rest of the activations (and the rounding of half types,
        // so that values compare as torch's composite compares them) on the finished strip.
        constexpr bool in_kernel = A == Activation::None || A == Activation::ReLU;
        constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
        // Per thread: the band's maxima and indices (at most all pooled rows of a plane).
        auto finish = [&](int64_t n, int64_t k, acc_t* rows, int64_t ld, int64_t r0, int64_t q0, int64_t q1) {
          thread_local std::vector<acc_t> mv;
          thread_local std::vector<int32_t> mi;
          const int64_t count = (q1 - q0) * b.PW;
          if (static_cast<int64_t>(mv.size()) < count) mv.resize(count), mi.resize(count);
          if constexpr (!in_kernel || !direct) {
            const int64_t len = (std::min(s.OH, (q1 - 1) * b.sh - b.ph + b.kh) - r0) * ld;
            if constexpr (!in_kernel) activation_span<A>(rows, 1, len, 0, params);  // as conv2d's epilogue applies it
            if constexpr (!direct) {
              for (int64_t j = 0; j < len; ++j) rows[j] = static_cast<acc_t>(static_cast<scalar_t>(rows[j]));
            }
          }
          pool_band_fast(b, ranges.data(), rows, ld, r0, q0, q1, mv.data(), mi.data());
          const int64_t offset = (n * s.K + k) * pooled + q0 * b.PW;
          scalar_t* o = out_p + offset;
          for (int64_t j = 0; j < count; ++j) o[j] = static_cast<scalar_t>(mv[j]);
          if (is8) {
            // Restrict: an int8_t store may alias the int32 source, which would keep the loop scalar.
            int8_t* __restrict id = index8 + offset;
            const int32_t* __restrict from = mi.data();
            for (int64_t j = 0; j < count; ++j) id[j] = static_cast<int8_t>(from[j]);
          } else {
            std::memcpy(index32 + offset, mi.data(), count * sizeof(int32_t));
          }
        };
        const acc_t* b_p = ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr;
        if (conv2d_is_small(s)) {
          conv2d_maxpool_small_forward_kernel<acc_t>(b, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), b_p,
                                                     A == Activation::ReLU, finish);
        } else if (std::is_same_v<acc_t, float> && conv2d_winograd_applies(s)) {
          // The 3x3 convolutions conv2d runs with Winograd, the block runs the same way (so that it computes
          // what conv2d + max_pool2d compute, bit for bit): the conv output goes once through a buffer and is
          // pooled plane by plane. Its one write and read cost little next to the products Winograd saves.
          at::Tensor z = empty_output({s.N, s.K, s.OH, s.OW}, opts.dtype(acc_type));
          acc_t* z_p = z.mutable_data_ptr<acc_t>();
          try_winograd_forward<acc_t>(s, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), b_p, z_p,
                                      A == Activation::ReLU);
          at::parallel_for(0, s.N * s.K, 1, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) finish(p / s.K, p % s.K, z_p + p * s.OH * s.OW, s.OW, 0, 0, b.PH);
          });
        } else {
          conv2d_maxpool_forward_kernel<acc_t>(b, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), b_p,
                                               A == Activation::ReLU, finish);
        }
      });
    });
  }
  return {out.contiguous(memory_format), index.contiguous(memory_format)};
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
  const BlockShape b =
      check_conv2d_maxpool_args(x, weight, bias, stride, padding, dilation, groups, pool_kernel_size, pool_stride,
                                pool_padding, pool_ceil_mode, kOpBwd, c10::DeviceType::CPU);
  const ConvShape& s = b.conv;
  const std::array<int64_t, 4> y_shape = {s.N, s.K, b.PH, b.PW};
  check_output_like(x, grad_out, "grad_out", y_shape, kOpBwd);
  check_saved_output(x, out, grad_needs_output(act), activation, y_shape, kOpBwd);
  check_block_index(x, index, b, kOpBwd);

  const bool need_x = output_mask[0];
  const bool need_w = output_mask[1];
  const bool need_b = output_mask[2] && has_bias(bias);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_x = need_x ? empty_output(x.sizes(), opts) : at::Tensor();  // NCHW, converted at the end
  at::Tensor grad_w = need_w ? empty_output(weight.sizes(), opts) : at::Tensor();
  at::Tensor grad_b = need_b ? empty_output({s.K}, opts) : at::Tensor();
  if (!need_x && !need_w && !need_b) return {grad_x, grad_w, grad_b};

  const bool sparse = conv2d_maxpool_sparse_backward_wins(b);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_conv2d_maxpool_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
        const int64_t plane = s.OH * s.OW, pooled = b.PH * b.PW, window = b.kh * b.kw;
        const bool recompute = grad_needs_preactivation(act);
        const at::Tensor xa = recompute || (sparse && need_w) ? as_acc(x, acc_type) : at::Tensor();
        const at::Tensor wa = recompute || (sparse && need_x) ? as_acc(weight, acc_type) : at::Tensor();
        const at::Tensor ba = recompute && has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
        const acc_t* bias_p = ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr;
        // The sparse path's padded channels-last input (grad_w, z) and weight rows (grad_x, z).
        std::optional<SparseBlockBackward<acc_t>> sp;
        if (sparse) {
          sp.emplace(b, xa.defined() ? xa.const_data_ptr<acc_t>() : nullptr,
                     wa.defined() ? wa.const_data_ptr<acc_t>() : nullptr, recompute || need_w, recompute || need_x);
        }
        // The dense path's gz; z first, where act' reads it: each plane is read at its maxima, then overwritten.
        at::Tensor gz = sparse ? at::Tensor() : empty_output({s.N, s.K, s.OH, s.OW}, opts.dtype(acc_type));
        acc_t* gz_p = sparse ? nullptr : gz.mutable_data_ptr<acc_t>();
        if (recompute && !sparse) {
          conv2d_preactivation_kernel<acc_t>(s, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), bias_p, gz_p);
        }
        const at::Tensor go = grad_out.contiguous();
        const scalar_t* go_p = go.const_data_ptr<scalar_t>();
        const at::Tensor saved = grad_needs_output(act) ? out->contiguous() : at::Tensor();
        const scalar_t* saved_p = saved.defined() ? saved.const_data_ptr<scalar_t>() : nullptr;
        const at::Tensor idx = index.contiguous();
        const bool is8 = idx.scalar_type() == at::kChar;  // (an empty tensor's data pointer may be null)
        const int8_t* idx8 = is8 ? idx.const_data_ptr<int8_t>() : nullptr;
        const int32_t* idx32 = is8 ? nullptr : idx.const_data_ptr<int32_t>();
        std::vector<acc_t> plane_sums(s.N * s.K, acc_t(0));
        // The routed values: per (n, k) plane and pooled position, the conv position of the window's maximum
        // (-1 where the index is not the forward's) and dL/dz there.
        std::vector<int32_t> position(s.N * s.K * pooled);
        std::vector<acc_t> value(s.N * s.K * pooled);

        dispatch_activation(act, [&](auto act_tag) {
          constexpr Activation A = decltype(act_tag)::value;
          // One (n, k) plane per work item: the routed values in pooled order. Dense path: then the plane of gz
          // zeroed and the values added at their positions (overlapping windows may share one), then the plane's
          // share of grad_bias summed over the plane as conv2d's backward sums it (in 16 fixed lanes), so that
          // the block's gradients are bit for bit those of conv2d + max_pool2d. Sparse path: grad_bias sums the
          // values in pooled order.
          at::parallel_for(0, s.N * s.K, 1, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
              acc_t* gzp = sparse ? nullptr : gz_p + p * plane;
              int32_t* pos = position.data() + p * pooled;
              acc_t* val = value.data() + p * pooled;
              for (int64_t q = 0; q < b.PH; ++q) {
                for (int64_t pw = 0; pw < b.PW; ++pw) {
                  const int64_t o = q * b.PW + pw, e = p * pooled + o;
                  const int64_t i = is8 ? idx8[e] : idx32[e];
                  const int64_t h = q * b.sh - b.ph + i / b.kw, w = pw * b.sw - b.pw + i % b.kw;
                  if (i < 0 || i >= window || h < 0 || h >= s.OH || w < 0 || w >= s.OW) {  // not the forward's index
                    pos[o] = -1;
                    val[o] = acc_t(0);
                    continue;
                  }
                  pos[o] = static_cast<int32_t>(h * s.OW + w);
                  acc_t from = acc_t(0);  // what act' reads: z, the pooled output, or nothing ("none")
                  if constexpr (grad_needs_preactivation(A)) {
                    if (sparse) {
                      const int64_t k = p % s.K;
                      from = sp->preactivation(p / s.K, k, h, w) + (bias_p ? bias_p[k] : acc_t(0));
                    } else {
                      from = gzp[h * s.OW + w];
                    }
                  } else if constexpr (grad_needs_output(A)) {
                    from = static_cast<acc_t>(saved_p[e]);
                  }
                  val[o] = grad_times<A>(static_cast<acc_t>(go_p[e]), from, params);
                }
              }
              if (sparse) {
                if (need_b) {
                  acc_t sum = acc_t(0);
                  for (int64_t o = 0; o < pooled; ++o) sum += val[o];
                  plane_sums[p] = sum;
                }
                continue;
              }
              zero_fill(gzp, plane * sizeof(acc_t));
              for (int64_t o = 0; o < pooled; ++o) {
                if (pos[o] >= 0) gzp[pos[o]] += val[o];
              }
              if (need_b) plane_sums[p] = plane_sum(gzp, plane);
            }
          });
        });

        if (need_b) {  // summed over the batch in its order: deterministic
          scalar_t* gb = grad_b.mutable_data_ptr<scalar_t>();
          for (int64_t k = 0; k < s.K; ++k) {
            acc_t sum = acc_t(0);
            for (int64_t n = 0; n < s.N; ++n) sum += plane_sums[n * s.K + k];
            gb[k] = static_cast<scalar_t>(sum);
          }
        }
        if (!sparse) {
          conv2d_backward_from_grad_preactivation(s, gz, x, weight, grad_x, grad_w);
          return;
        }
        // Into acc_t, rounded once for the half types.
        const auto into = [&](const at::Tensor& dst, auto&& compute) {
          if (!dst.defined() || dst.numel() == 0) return;
          at::Tensor acc = direct ? dst : empty_output(dst.sizes(), opts.dtype(acc_type));
          compute(acc.mutable_data_ptr<acc_t>());
          if (!direct) dst.copy_(acc);
        };
        into(grad_w, [&](acc_t* gw) { sp->grad_weight(position.data(), value.data(), gw); });
        into(grad_x, [&](acc_t* gx) { sp->grad_input(position.data(), value.data(), gx); });
      });
  if (grad_x.defined()) grad_x = grad_x.contiguous(x.suggest_memory_format());
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace cpu
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(dlkernels, CPU, m) {
  m.impl("conv2d_maxpool", &dlkernels::cpu::conv2d_maxpool_forward);
  m.impl("conv2d_maxpool_backward", &dlkernels::cpu::conv2d_maxpool_backward);
}
