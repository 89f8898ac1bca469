// Conv2d with fused bias + activation on the CPU (NCHW, symmetric padding, groups), and its backward.
//
// Forward: an implicit GEMM on the shared packed GEMM of cpu/gemm.h. Per image n and group g,
//   out[n, g] [Kg, OH*OW] = W[g] [Kg, Cg*KH*KW] @ col(x[n, g]) [Cg*KH*KW, OH*OW]
// where col is im2col, never materialised: the GEMM's B-packing copies each KC x NR panel straight out of
// the image (row segments of the input, zeros for the padding). Bias and relu run in the micro-kernel's
// epilogue, other activations on each finished tile.
// Backward: grad_w[g] = sum_n gz[n, g] @ col(x[n, g])^T is one GEMM whose K runs over (n, position), so
// the batch sum happens inside the register accumulators in a fixed order; grad_x for stride 1 is the
// forward convolution of gz with the flipped, transposed weights (padding dilation*(k-1) - padding), the
// same implicit GEMM; other strides use the direct scatter loop below.
// Few-channel convolutions (conv2d_is_small), depthwise ones and those with narrow groups run direct
// kernels instead, forward and backward (conv2d_cpu_small.cpp, conv2d_cpu_depthwise.cpp,
// conv2d_cpu_grouped.cpp): there the GEMM's packing costs as much as its multiply-adds.
//
// The kernels work on NCHW-contiguous copies in the accumulation type (float for bf16/fp16, double for
// double): half inputs are converted once, and every result is rounded once, on its write. A channels_last
// input gets a channels_last output (as torch's CPU convolution returns), converted once at the end; except
// where the tensors are read as they lie: depthwise convolutions of float and double (depthwise_nhwc) and
// convolutions whose patches tile the image, a linear layer over them (conv2d_is_nhwc_patchify).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
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
#include "cpu/conv2d_cpu_depthwise.h"
#include "cpu/conv2d_cpu_grouped.h"
#include "cpu/conv2d_cpu_im2col.h"
#include "cpu/conv2d_cpu_small.h"
#include "cpu/conv2d_cpu_winograd.h"
#include "cpu/conv2d_cpu_x86.h"
#include "cpu/cpu_utils.h"
#include "cpu/gemm.h"
#include "cpu/linear_act_cpu.h"
#include "cpu/memory.h"
#include "cpu/simd.h"
#include "cpu/skinny_gemm.h"

namespace dlkernels {
namespace cpu {
namespace {

constexpr const char* kOp = "conv2d";
constexpr const char* kOpBwd = "conv2d_backward";

// The outputs o in [lo, hi) whose input index o * stride + offset lies in [0, in): the tap's valid range.
struct Range {
  int64_t lo, hi;
};
inline Range valid_range(int64_t offset, int64_t stride, int64_t in, int64_t out) {
  const int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t hi = (in - 1 - offset) < 0 ? 0 : std::min(out, (in - 1 - offset) / stride + 1);
  return {lo, std::max(lo, hi)};
}

// ---------------------------------------------------------------------------------------------------------
// Forward as an implicit GEMM (see cpu/gemm.h for the interface). Batch entry b = (n, g).

// Copies im2col rows [k0, k0 + kc) x columns [j0, j0 + nr) of one image-group into a B panel:
// dst[k * NR + j] = x[c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] (0 in the padding) with k = (c, kh, kw) and
// j = (oh, ow). Within one output row and stride 1 the columns are one contiguous input row segment.
template <typename acc_t>
void pack_im2col(const ConvShape& s, const acc_t* xg, int64_t j0, int nr, int64_t k0, int64_t kc, acc_t* dst, int NR) {
  const int64_t taps = s.KH * s.KW;
  for (int64_t k = k0; k < k0 + kc; ++k) {
    const int64_t c = k / taps, kh = (k % taps) / s.KW, kw = k % s.KW;
    acc_t* d = dst + (k - k0) * NR;
    const acc_t* plane = xg + c * s.H * s.W;
    int64_t oh = j0 / s.OW, ow = j0 % s.OW;
    for (int jj = 0; jj < nr;) {
      const int seg = static_cast<int>(std::min<int64_t>(nr - jj, s.OW - ow));  // rest of this output row
      const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
      if (ih < 0 || ih >= s.H) {
        std::fill(d + jj, d + jj + seg, acc_t(0));
      } else {
        const acc_t* row = plane + ih * s.W;
        const int64_t iw0 = ow * s.sw - s.pw + kw * s.dw;
        if (s.sw == 1) {
          const int lo = static_cast<int>(std::clamp<int64_t>(-iw0, 0, seg));
          const int hi = static_cast<int>(std::clamp<int64_t>(s.W - iw0, lo, seg));
          std::fill(d + jj, d + jj + lo, acc_t(0));
          std::copy(row + iw0 + lo, row + iw0 + hi, d + jj + lo);
          std::fill(d + jj + hi, d + jj + seg, acc_t(0));
        } else {
          for (int t = 0; t < seg; ++t) {
            const int64_t iw = iw0 + t * s.sw;
            d[jj + t] = iw >= 0 && iw < s.W ? row[iw] : acc_t(0);
          }
        }
      }
      jj += seg;
      ow = 0;
      ++oh;
    }
    std::fill(d + nr, d + NR, acc_t(0));
  }
}

// pack_im2col, vectorised where the CPU and the shape allow (conv2d_cpu_x86.cpp: for few channels the
// packing costs as much as the GEMM, and the loop above spends most of it in fill/copy calls on segments of
// a few dozen floats).
template <typename acc_t>
void pack_im2col_fast(const ConvShape& s, const acc_t* xg, int64_t j0, int nr, int64_t k0, int64_t kc, acc_t* dst,
                      int NR) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<acc_t, float>) {
    if (s.sw == 1) {
      switch (cpu_isa()) {
        case Isa::Avx512: return conv2d_pack_im2col_f32_s1_avx512(s, xg, j0, nr, k0, kc, dst, NR);
        case Isa::Avx2: return conv2d_pack_im2col_f32_s1_avx2(s, xg, j0, nr, k0, kc, dst, NR);
        default: break;
      }
    }
  }
#endif
  pack_im2col(s, xg, j0, nr, k0, kc, dst, NR);
}

// A 1x1 convolution with stride 1 and no padding: a plain GEMM per image and group.
inline bool conv2d_is_pointwise(const ConvShape& s) {
  return s.KH == 1 && s.KW == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0 && s.OH == s.H && s.OW == s.W;
}

// A 1x1 convolution of 1x1 images (squeeze-and-excitation blocks) is a linear layer over the batch: one GEMM
// with the images as its rows (linear_act's kernels) instead of a matrix-vector product per image. x [N, C,
// 1, 1] is an [N, C] matrix in either memory format.
inline bool conv2d_is_linear(const ConvShape& s) {
  return s.groups == 1 && s.KH == 1 && s.KW == 1 && s.H == 1 && s.W == 1 && s.ph == 0 && s.pw == 0;
}
inline at::Tensor as_rows(const at::Tensor& t) { return t.reshape({t.size(0), t.size(1)}); }
inline at::Tensor as_images(const at::Tensor& t, const at::Tensor& like) {
  return t.view({t.size(0), t.size(1), 1, 1}).contiguous(like.suggest_memory_format());
}

// A convolution of a channels-last x whose patches tile the image (kernel == stride, no padding, dilation 1,
// groups 1: every 1x1 convolution of stride 1, convnext's 2x2/2 downsampling and 4x4/4 stem) is a linear layer
// over the patches: a patch is KH runs of KW * C contiguous elements of x, so the patch rows are x itself (1x1)
// or one copy of it, and the output rows [N * OH * OW, K] are the channels-last output as it lies. The weight
// is read in the patches' order (kh, kw, c): one small copy. Rows and columns past the last whole patch are
// not read (their grad_x is zero).
inline bool conv2d_patches_tile(const ConvShape& s) {
  return s.groups == 1 && s.KH == s.sh && s.KW == s.sw && s.ph == 0 && s.pw == 0 && s.dh == 1 && s.dw == 1;
}
inline bool conv2d_is_nhwc_patchify(const ConvShape& s, const at::Tensor& x) {
  return conv2d_patches_tile(s) && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}
// The patch rows [N * OH * OW, KH * KW * C] of a channels-last x (a view for 1x1 kernels).
inline at::Tensor nhwc_patches(const ConvShape& s, const at::Tensor& x) {
  return x.permute({0, 2, 3, 1})
      .narrow(1, 0, s.OH * s.KH)
      .narrow(2, 0, s.OW * s.KW)
      .reshape({s.N, s.OH, s.KH, s.OW, s.KW, s.C})
      .permute({0, 1, 3, 2, 4, 5})
      .reshape({s.N * s.OH * s.OW, s.KH * s.KW * s.C});
}
// [N, K, OH, OW] channels-last tensors as rows [N * OH * OW, K] (a view when they are channels-last) and back.
inline at::Tensor nhwc_rows(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).reshape({t.size(0) * t.size(2) * t.size(3), t.size(1)});
}
inline at::Tensor nhwc_images(const at::Tensor& rows, const ConvShape& s) {
  return rows.view({s.N, s.OH, s.OW, s.K}).permute({0, 3, 1, 2});
}
inline at::Tensor patch_weight(const ConvShape& s, const at::Tensor& w) {
  return w.permute({0, 2, 3, 1}).reshape({s.K, s.KH * s.KW * s.C});
}

// An NCHW convolution whose patches tile the image exactly (conv2d_patches_tile with a kernel larger than 1x1, H and
// W multiples of the stride: convnext's 4x4/4 stem): its phases (phase_split) are its output planes.
inline bool conv2d_is_patchify(const ConvShape& s) {
  return conv2d_patches_tile(s) && s.sh * s.sw > 1 && s.H % s.sh == 0 && s.W % s.sw == 0;
}
inline ConvShape patchify_as_pointwise(const ConvShape& s) {
  ConvShape t = s;
  t.C = t.Cg = s.C * s.KH * s.KW, t.H = s.OH, t.W = s.OW, t.KH = t.KW = 1, t.sh = t.sw = 1;
  return t;
}

// A strided 1x1 convolution without padding reads only the pixels (oh * sh, ow * sw): it is the pointwise
// convolution of those pixels, gathered once (x[:, :, ::sh, ::sw]); its grad_x is zero elsewhere.
inline bool conv2d_is_strided_pointwise(const ConvShape& s) {
  return s.KH == 1 && s.KW == 1 && (s.sh > 1 || s.sw > 1) && s.ph == 0 && s.pw == 0;
}
inline ConvShape strided_pointwise_as_pointwise(const ConvShape& s) {
  ConvShape t = s;
  t.H = s.OH, t.W = s.OW, t.sh = t.sw = 1, t.dh = t.dw = 1;
  return t;
}
inline at::Tensor strided_pixels(const ConvShape& s, const at::Tensor& t) {  // a view
  return t.slice(2, 0, c10::nullopt, s.sh).slice(3, 0, c10::nullopt, s.sw);
}
inline at::Tensor gather_strided_pointwise(const ConvShape& s, const at::Tensor& x) {
  return strided_pixels(s, x).contiguous();
}

// x [N, C, H, W] split into phases: xq[n, c, a, b, u, v] = x[n, c, a + sh * u, b + sw * v] for
// u < Hq = ceil(H / sh), v < Wq = ceil(W / sw), zero past the image. Tap (kh, kw) of output (oh, ow) reads
// phase ((kh * dh - ph) mod sh, (kw * dw - pw) mod sw) at (oh + floor((kh * dh - ph) / sh), ow + floor(...)):
// along an output row, a contiguous run, whatever the stride.
template <typename acc_t>
at::Tensor phase_split(const ConvShape& s, const acc_t* x) {
  const int64_t Hq = (s.H + s.sh - 1) / s.sh, Wq = (s.W + s.sw - 1) / s.sw;
  at::Tensor xq =
      empty_output({s.N, s.C, s.sh, s.sw, Hq, Wq}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* q = xq.mutable_data_ptr<acc_t>();
  const int64_t phase = Hq * Wq;
  // A row's sw phases with the x86 kernel of the CPU's ISA where the stride allows (float, sw 2 or 4), else here.
  bool (*x86_row)(const float*, int64_t, int64_t, float*, int64_t) = nullptr;
#if defined(__x86_64__)
  if constexpr (std::is_same_v<acc_t, float>) {
    if (s.sw == 2 || s.sw == 4) {
      switch (cpu_isa()) {
        case Isa::Avx512: x86_row = conv2d_phase_split_row_f32_avx512; break;
        case Isa::Avx2: x86_row = conv2d_phase_split_row_f32_avx2; break;
        default: break;
      }
    }
  }
#endif
  auto split_row = [&](const acc_t* row, acc_t* dst) {
    if constexpr (std::is_same_v<acc_t, float>) {
      if (x86_row && x86_row(row, s.W, s.sw, dst, phase)) return;
    }
    for (int64_t b = 0; b < s.sw; ++b, dst += phase) {
      const int64_t vn = (s.W - b + s.sw - 1) / s.sw;  // columns inside the image: b + sw * v < W
      for (int64_t v = 0; v < vn; ++v) dst[v] = row[b + s.sw * v];
      std::fill(dst + vn, dst + Wq, acc_t(0));
    }
  };
  at::parallel_for(0, s.N * s.C, std::max<int64_t>(1, 16384 / (s.H * s.W)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const acc_t* src = x + p * s.H * s.W;
      for (int64_t a = 0; a < s.sh; ++a) {
        acc_t* dst = q + p * s.sh * s.sw * phase + a * s.sw * phase;
        for (int64_t u = 0; u < Hq; ++u, dst += Wq) {
          const int64_t ih = a + s.sh * u;
          if (ih < s.H) {
            split_row(src + ih * s.W, dst);
          } else {
            for (int64_t b = 0; b < s.sw; ++b) std::fill(dst + b * phase, dst + b * phase + Wq, acc_t(0));
          }
        }
      }
    }
  });
  return xq;
}

// Per row k = (c, kh, kw) of im2col: where it reads in the phases of x (ktab[3k]: the phase plane's offset
// from the group's first, ktab[3k + 1], ktab[3k + 2]: row and column offsets within it). Along an output row
// each row of k reads one contiguous run of a phase row (strided convs, where reading x itself takes one
// element at a time).
inline std::vector<int64_t> phase_table(const ConvShape& s, int64_t Hq, int64_t Wq) {
  auto floor_mod = [](int64_t v, int64_t m) { return ((v % m) + m) % m; };
  std::vector<int64_t> tab(3 * s.Cg * s.KH * s.KW);
  for (int64_t c = 0, k = 0; c < s.Cg; ++c) {
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      for (int64_t kw = 0; kw < s.KW; ++kw, ++k) {
        const int64_t eh = kh * s.dh - s.ph, ew = kw * s.dw - s.pw;
        const int64_t a = floor_mod(eh, s.sh), b = floor_mod(ew, s.sw);
        tab[3 * k] = ((c * s.sh + a) * s.sw + b) * Hq * Wq;
        tab[3 * k + 1] = (eh - a) / s.sh;
        tab[3 * k + 2] = (ew - b) / s.sw;
      }
    }
  }
  return tab;
}

template <typename acc_t, typename Post>
struct Conv2dForwardGemm {
  int64_t batch, M, N, K, num_a;
  const ConvShape& s;
  const acc_t* x;     // [N, C, H, W]
  const acc_t* w;     // [K, Cg, KH, KW]
  const acc_t* bias;  // [K] or null
  acc_t* out;         // [N, K, OH, OW]
  int64_t ldc;
  bool relu, has_post;
  const Post& post_fn;
  bool user_post = has_post;      // has_post is also set for the folded GEMM's moves
  const acc_t* xq = nullptr;      // x split into phases (see phase_split) when the stride along W is not 1
  const int64_t* ktab = nullptr;  // phase_table of xq, or of x at stride 1 along W; null: pack_image
  int64_t Hq = 0, Wq = 0;

  int64_t a_of(int64_t b) const { return b % s.groups; }
  void pack_a(int64_t g, int64_t i0, int mr, acc_t* dst, int MR) const {
    pack_a_strided(w + g * s.Kg * K, K, 1, i0, mr, K, dst, MR);
  }
  const acc_t* a_rows(int64_t* lda) const {
    *lda = K;
    return w;
  }
  // Folded (see conv2d_forward_kernel): batch entry b is group b, the columns are (image, position) and C is
  // `cbuf` [K, N * P], moved into `out` tile by tile.
  bool folded = false;
  acc_t* cbuf = nullptr;
  int64_t P = 0;

  void pack_b(int64_t b, int64_t j0, int nr, int64_t k0, int64_t kc, acc_t* dst, int NR) const {
    if (!folded) return pack_image(b / s.groups, b % s.groups, j0, nr, k0, kc, dst, NR);
    int64_t n = j0 / P, p0 = j0 % P;
    if (p0 + nr <= P) return pack_image(n, b, p0, nr, k0, kc, dst, NR);
    // A panel across images: each image's part packed on its own (the packers fill their panel rows to NR
    // with zeros), then moved into place.
    thread_local std::vector<acc_t> part;
    part.resize(static_cast<size_t>(kc * NR));
    for (int jj = 0; jj < nr; ++n, p0 = 0) {
      const int seg = static_cast<int>(std::min<int64_t>(nr - jj, P - p0));
      pack_image(n, b, p0, seg, k0, kc, part.data(), NR);
      for (int64_t k = 0; k < kc; ++k) std::copy_n(part.data() + k * NR, seg, dst + k * NR + jj);
      jj += seg;
    }
    for (int64_t k = 0; k < kc; ++k) std::fill(dst + k * NR + nr, dst + (k + 1) * NR, acc_t(0));
  }
  // All panels of a block row by row: a pointwise conv's image is B itself, [Cg, H*W] with contiguous rows;
  // other convs read runs of step 1 through ktab, from x's phases or (stride 1 along W) from x itself, output
  // rows sh input rows apart. Folded, the block's columns run over images.
  bool pack_b_block(int64_t b, int64_t j0, int64_t n, int64_t k0, int64_t kc, acc_t* dst, int NR) const {
    const int64_t img = folded ? 0 : b / s.groups, g = folded ? b : b % s.groups;
    int64_t ldb;
    if (const acc_t* rows = b_rows(b, &ldb)) return pack_b_rows(rows, ldb, j0, n, k0, kc, dst, NR);
    if (!ktab) return false;
    const acc_t* src = xq ? xq : x;
    const int64_t Hx = xq ? Hq : s.H, Wx = xq ? Wq : s.W, channel = (xq ? s.sh * s.sw : 1) * Hx * Wx;
    const acc_t* planes = src + (img * s.C + g * s.Cg) * channel;
    const int64_t row_step = xq ? 1 : s.sh, cols = folded ? P : N;
#if defined(__x86_64__)
    if constexpr (std::is_same_v<acc_t, float>) {
      switch (cpu_isa()) {
        case Isa::Avx512:
          return conv2d_pack_im2col_block_f32_avx512(planes, s.C * channel, ktab, row_step, Hx, Wx, s.OW, cols, j0, n,
                                                     k0, kc, dst, NR);
        case Isa::Avx2:
          return conv2d_pack_im2col_block_f32_avx2(planes, s.C * channel, ktab, row_step, Hx, Wx, s.OW, cols, j0, n, k0,
                                                   kc, dst, NR);
        default: break;
      }
    }
#endif
    return with_panel_width(NR, [&](auto nr) {
      pack_im2col_block<decltype(nr)::value>(planes, s.C * channel, ktab, row_step, Hx, Wx, s.OW, cols, j0, n, k0, kc,
                                             dst);
    });
  }
  // A pointwise conv's image read in place by the micro-kernel (see gemm_run).
  const acc_t* b_rows(int64_t b, int64_t* ldb) const {
    if (!conv2d_is_pointwise(s) || folded) return nullptr;
    *ldb = s.H * s.W;
    return x + ((b / s.groups) * s.C + (b % s.groups) * s.Cg) * s.H * s.W;
  }
  // The panels pack_b_block does not take: strides along W without phases (kernels narrower than the stride,
  // grouped convs).
  void pack_image(int64_t n, int64_t g, int64_t j0, int nr, int64_t k0, int64_t kc, acc_t* dst, int NR) const {
    pack_im2col_fast(s, x + (n * s.C + g * s.Cg) * s.H * s.W, j0, nr, k0, kc, dst, NR);
  }
  acc_t* c(int64_t b) const {
    return folded ? cbuf + b * s.Kg * ldc : out + ((b / s.groups) * s.K + (b % s.groups) * s.Kg) * N;
  }
  const acc_t* bias_m(int64_t b) const { return bias ? bias + (b % s.groups) * s.Kg : nullptr; }
  const acc_t* bias_n(int64_t) const { return nullptr; }
  void post(int64_t b, int64_t i0, int64_t j0, int m, int n, acc_t* c, int64_t ld) const {
    // Output plane index of the tile's first row, and the tile.
    if (!folded) return post_fn((b / s.groups) * s.K + (b % s.groups) * s.Kg + i0, j0, m, n, c, ld);
    // Folded: each image's part of the tile moves to its planes in `out`, where post_fn finds it.
    for (int jj = 0; jj < n;) {
      const int64_t img = (j0 + jj) / P, p0 = (j0 + jj) % P;
      const int seg = static_cast<int>(std::min<int64_t>(n - jj, P - p0));
      const int64_t plane = img * s.K + b * s.Kg + i0;
      acc_t* o = out + plane * P + p0;
      for (int i = 0; i < m; ++i) std::copy_n(c + i * ld + jj, seg, o + i * P);
      if (user_post) post_fn(plane, p0, m, seg, o, P);
      jj += seg;
    }
  }
};

// out[n, k] = bias[k] + conv(x, w) in acc_t (relu applied if asked), then post(plane, j0, m, n, tile, ld) on
// each finished tile of `m` output planes starting at plane index (n * K + k) and positions [j0, j0 + n).
template <typename acc_t, typename Post>
void conv2d_forward_kernel(const ConvShape& s, const acc_t* x, const acc_t* w, const acc_t* bias, acc_t* out, bool relu,
                           bool has_post, const Post& post) {
  if (conv2d_is_patchify(s)) {
    // The phases of x are then the output planes (phase (c, kh, kw) at (oh, ow) is x[c, sh * oh + kh, sw * ow + kw]):
    // a pointwise conv over C * KH * KW channels whose weights are w as it lies, and whose B the GEMM reads in
    // place, where the phase table would pack it run by run (output rows of a few dozen elements).
    const at::Tensor xq = phase_split<acc_t>(s, x);
    return conv2d_forward_kernel<acc_t>(patchify_as_pointwise(s), xq.const_data_ptr<acc_t>(), w, bias, out, relu,
                                        has_post, post);
  }
  const int64_t P = s.OH * s.OW;
  Conv2dForwardGemm<acc_t, Post> g{s.N * s.groups, s.Kg,     P,   s.Cg * s.KH * s.KW, s.groups, s, x, w, bias, out, P,
                                   relu,           has_post, post};
  // Small planes and weights larger than L2 (1 MiB): one GEMM per group over all the images side by side
  // rather than one per image. Per image, each weight is used by fewer columns than a column block holds
  // (49 at 7x7), so the GEMM streams the whole weight matrix from memory once per image and pads its last
  // column panel. With weights that stay in L2 the per-image GEMMs measured as fast or faster (no move of
  // the results to their images, and a pointwise conv's image read in place), except on planes smaller than
  // one column panel (4x4 under AVX-512's 32 columns), where every tile of a per-image GEMM is a partial one.
  at::Tensor cbuf;
  const int64_t weight_bytes = s.Kg * s.Cg * s.KH * s.KW * static_cast<int64_t>(sizeof(acc_t));
  const bool partial_panels = P < micro_kernel_for_rows<acc_t>(s.Kg).nr;
  if (s.N > 1 && P < GemmBlocking<acc_t>::NC && (partial_panels || weight_bytes >= (int64_t(1) << 20))) {
    cbuf = empty_output({s.K, s.N * P}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
    g.folded = true, g.cbuf = cbuf.mutable_data_ptr<acc_t>(), g.P = P;
    g.batch = s.groups, g.N = s.N * P, g.ldc = s.N * P, g.has_post = true;
  }
  at::Tensor xq;
  std::vector<int64_t> ktab;
  // Phases pay wherever the kernel is at least as wide as the stride: each row of k is then one run of step 1 per
  // output row, which the block packer copies whole (patchify kernels, kernel == stride, included: packed column by
  // column from x itself they measured slower). Grouped convs pack faster from x itself.
  if (s.sw > 1 && s.KW >= s.sw && s.groups == 1 && !conv2d_is_pointwise(s)) {
    xq = phase_split<acc_t>(s, x);
    g.xq = xq.const_data_ptr<acc_t>();
    g.Hq = xq.size(4), g.Wq = xq.size(5);
    ktab = phase_table(s, g.Hq, g.Wq);
    g.ktab = ktab.data();
  } else if (s.sw == 1) {
    // Rows of step 1 in x itself: the phase table of the same conv at stride 1 (one phase: plane c, row and
    // column offsets kh * dh - ph and kw * dw - pw), output rows s.sh input rows apart.
    ConvShape s1 = s;
    s1.sh = s1.sw = 1;
    ktab = phase_table(s1, s.H, s.W);
    g.ktab = ktab.data();
  }
  gemm_run<acc_t>(g);
}

struct NoPost {
  template <typename T>
  void operator()(int64_t, int64_t, int, int, T*, int64_t) const {}
};

// z = conv(x, w) + bias in acc_t, no activation: the direct kernels for few channels and depthwise shapes,
// else the GEMM.
template <typename acc_t>
void conv2d_z(const ConvShape& s, const acc_t* x, const acc_t* w, const acc_t* bias, acc_t* z) {
  if (conv2d_is_small(s)) {
    small_forward<acc_t>(s, x, w, bias, z, false, nullptr);
  } else if (conv2d_is_depthwise(s)) {
    depthwise_forward<acc_t>(s, x, w, bias, z, false);
  } else {
    conv2d_forward_kernel<acc_t>(s, x, w, bias, z, false, false, NoPost{});
  }
}

// grad_w[g] [Kg, Cg*KH*KW] = sum over n of gz[n, g] [Kg, P] @ col(x[n, g])^T [P, Cg*KH*KW]: one GEMM per
// group whose K runs over (n, position), so the batch sum is accumulated in registers in a fixed order.
template <typename acc_t, typename Post>
struct Conv2dGradWeightGemm {
  int64_t batch, M, N, K, num_a;
  const ConvShape& s;
  const acc_t* gz;  // [N, K, OH, OW]
  const acc_t* x;   // [N, C, H, W]
  acc_t* gw;        // [K, Cg, KH, KW]
  int64_t ldc;
  bool relu, has_post;
  const Post& post_fn;
  const acc_t* xq = nullptr;  // x split into phases (phase_split) when the stride along W is not 1
  const int64_t* ktab = nullptr;
  int64_t Hq = 0, Wq = 0;

  int64_t a_of(int64_t g) const { return g; }
  const acc_t* a_rows(int64_t*) const { return nullptr; }  // gz is read down its columns
  void pack_a(int64_t g, int64_t i0, int mr, acc_t* dst, int MR) const {
    const int64_t P = s.OH * s.OW;
    for (int64_t n = 0; n < s.N; ++n) {
      pack_panel(gz + (n * s.K + g * s.Kg) * P, P, 1, i0, mr, 0, P, dst + n * P * MR, MR);
    }
  }
  // dst[k * NR + j] = x[n, g*Cg + c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] with k - k0 = (n, oh, ow) and
  // j0 + j = (c, kh, kw), output-row segment by segment. For float and runs of step 1 (stride 1, or the phases)
  // 8 columns at a time through masked 8 x 8 register transposes (each column's run read only inside the image,
  // zeros around it); other types, and CPUs without AVX2, element by element.
  void pack_b(int64_t g, int64_t j0, int nr, int64_t k0, int64_t kc, acc_t* dst, int NR) const {
    constexpr int kMaxNR = 64;
    TORCH_INTERNAL_ASSERT(NR <= kMaxNR);
    const int64_t P = s.OH * s.OW, taps = s.KH * s.KW;
    if (conv2d_is_pointwise(s) && xq == nullptr) {
      // col(x) is x itself, [Cg, P] per image: runs as long as what is left of the image, not of its output
      // row (the masked transposes padded a 14-wide row to 16 and paid the segment's setup per row).
      for (int64_t kk = 0, n = k0 / P, p = k0 % P; kk < kc; ++n, p = 0) {
        const int64_t seg = std::min<int64_t>(kc - kk, P - p);
        pack_panel(x + (n * s.C + g * s.Cg) * P, P, int64_t(1), j0, nr, p, seg, dst + kk * NR, NR);
        kk += seg;
      }
      return;
    }
    int64_t col_c[kMaxNR], col_kh[kMaxNR], col_kw[kMaxNR];  // (c, kh, kw) of each column
    for (int j = 0; j < nr; ++j) {
      const int64_t col = j0 + j;
      col_c[j] = g * s.Cg + col / taps, col_kh[j] = (col % taps) / s.KW, col_kw[j] = col % s.KW;
    }
    int64_t n = k0 / P, p = k0 % P;
    int64_t oh = p / s.OW, ow = p % s.OW;
    // With phases, column j reads phase plane ktab[3j] at (oh + ktab[3j + 1], ow + ktab[3j + 2] + t): runs
    // of step 1 whatever the stride.
    const bool phased = xq != nullptr;
    const int64_t Hx = phased ? Hq : s.H, Wx = phased ? Wq : s.W, step = phased ? 1 : s.sw;
    for (int64_t kk = 0; kk < kc;) {
      const int64_t seg = std::min<int64_t>(kc - kk, s.OW - ow);  // rest of this output row
      acc_t* d = dst + kk * NR;
      for (int jb = 0; jb < NR; jb += 8) {
        const int group = std::min(8, NR - jb), width = std::clamp(nr - jb, 0, group);  // columns, real ones
        // Per column: its input run for this segment (element t at src[t * sw]) and the t in [lo, hi) whose
        // element is inside the image.
        const acc_t* src[8];
        int64_t lo[8], hi[8];
        for (int i = 0; i < width; ++i) {
          const int j = jb + i;
          const int64_t* e = phased ? ktab + 3 * (j0 + j) : nullptr;
          const int64_t ih = phased ? oh + e[1] : oh * s.sh - s.ph + col_kh[j] * s.dh;
          const int64_t iw0 = phased ? ow + e[2] : ow * s.sw - s.pw + col_kw[j] * s.dw;
          lo[i] = hi[i] = seg;
          if (ih >= 0 && ih < Hx) {
            lo[i] = iw0 >= 0 ? 0 : std::min(seg, (-iw0 + step - 1) / step);
            hi[i] = iw0 > Wx - 1 ? lo[i] : std::clamp<int64_t>((Wx - 1 - iw0) / step + 1, lo[i], seg);
          }
          src[i] = phased ? xq + (n * s.C + g * s.Cg) * s.sh * s.sw * Hq * Wq + e[0] + ih * Wq + iw0
                          : x + ((n * s.C + col_c[j]) * s.H + ih) * s.W + iw0;
        }
        if constexpr (std::is_same_v<acc_t, float>) {
          // The whole segment of 8 columns through masked 8 x 8 transposes: each column's run read only inside
          // the image, zeros around it (columns past nr: empty ranges).
          if (step == 1 && group == 8) {
            for (int i = width; i < 8; ++i) lo[i] = hi[i] = 0, src[i] = d;  // never read
            if (pack_transpose_ranges_f32(src, lo, hi, seg, d + jb, NR)) continue;
          }
        }
        for (int i = 0; i < group; ++i) {
          acc_t* col = d + jb + i;
          for (int64_t t = 0; t < seg; ++t)
            col[t * NR] = i < width && t >= lo[i] && t < hi[i] ? src[i][t * step] : acc_t(0);
        }
      }
      kk += seg;
      ow = 0;
      if (++oh == s.OH) oh = 0, ++n;
    }
  }
  acc_t* c(int64_t g) const { return gw + g * s.Kg * N; }
  const acc_t* bias_m(int64_t) const { return nullptr; }
  const acc_t* bias_n(int64_t) const { return nullptr; }
  void post(int64_t g, int64_t i0, int64_t j0, int m, int n, acc_t* c, int64_t ld) const {
    post_fn(g * s.Kg + i0, j0, m, n, c, ld);
  }
};

// The pixels that tap (kh, kw) reads from an input plane, a run per output row: f(in, out, n) for each output
// row whose input row lies in the image, where the n outputs out, out + 1, ... of the plane (OH x OW) read its
// pixels in, in + sw, ... (the ones inside the image). The scatter and col2im of grad_x walk a tap with it.
template <typename F>
inline void for_each_tap_row(const ConvShape& s, int64_t kh, int64_t kw, F&& f) {
  const Range rh = valid_range(kh * s.dh - s.ph, s.sh, s.H, s.OH);
  const int64_t off_w = kw * s.dw - s.pw;
  const Range rw = valid_range(off_w, s.sw, s.W, s.OW);
  if (rw.hi == rw.lo) return;
  for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
    f((oh * s.sh + kh * s.dh - s.ph) * s.W + rw.lo * s.sw + off_w, oh * s.OW + rw.lo, rw.hi - rw.lo);
  }
}

// grad_x for strides other than 1: grad_x[n, c] = sum over the group's output channels k and taps of
// w[k, c, tap] * gz[n, k] scattered back through the tap's shift. One thread owns each (n, c) plane.
template <typename scalar_t, typename acc_t>
void conv2d_grad_input_kernel(const ConvShape& s, const acc_t* gz, const acc_t* w, scalar_t* gx) {
  const int64_t plane = s.OH * s.OW;
  const int64_t taps = s.KH * s.KW;
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t p0, int64_t p1) {
    std::vector<acc_t> acc(s.H * s.W);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / s.C, c = p % s.C;
      const int64_t g = c / s.Cg, cl = c % s.Cg;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t k = g * s.Kg; k < (g + 1) * s.Kg; ++k) {
        const acc_t* gzk = gz + (n * s.K + k) * plane;
        const acc_t* wk = w + (k * s.Cg + cl) * taps;
        for (int64_t i = 0; i < s.KH; ++i) {
          for (int64_t j = 0; j < s.KW; ++j) {
            const acc_t wv = wk[i * s.KW + j];
            for_each_tap_row(s, i, j, [&](int64_t in, int64_t out, int64_t n) {
              acc_t* ar = acc.data() + in;  // the input pixels the outputs came from
              const acc_t* gr = gzk + out;
              if (s.sw == 1) {
                for (int64_t t = 0; t < n; ++t) ar[t] += wv * gr[t];
              } else {
                for (int64_t t = 0; t < n; ++t) ar[t * s.sw] += wv * gr[t];
              }
            });
          }
        }
      }
      scalar_t* dst = gx + p * s.H * s.W;
      for (int64_t i = 0; i < s.H * s.W; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
    }
  });
}

// grad_x as cols^T = gz^T @ w and col2im (conv2d_grad_input_by_w_rows) for output planes of up to this many
// pixels, batches of up to this many output pixels, and from this many bytes of weights on (smaller weights are
// transposed within the cache, and the other GEMMs' layouts were as fast or faster; over more pixels the pass
// over w is a small part of the work). Not for 1x1 kernels over a batch: there transposing w is a transposition
// of one matrix, and the forward GEMM of gz over the batch's images side by side measured faster.
constexpr int64_t kGradXByWRowsMaxPixels = 64;
constexpr int64_t kGradXByWRowsMaxBatchPixels = 256;
constexpr int64_t kGradXByWRowsMinWeightBytes = int64_t(192) << 10;
template <typename acc_t>
bool grad_x_by_w_rows(const ConvShape& s) {
  const int64_t P = s.OH * s.OW;
  return s.groups == 1 && (s.KH * s.KW > 1 || s.N == 1) && P <= kGradXByWRowsMaxPixels &&
         s.N * P <= kGradXByWRowsMaxBatchPixels &&
         s.K * s.C * s.KH * s.KW * static_cast<int64_t>(sizeof(acc_t)) >= kGradXByWRowsMinWeightBytes;
}

// A strided convolution's grad_x runs as a GEMM and col2im for up to this many input channels, or from this many
// output channels on (the GEMM's reduction: with fewer, writing and reading the columns costs more than the phases'
// smaller products save).
constexpr int64_t kCol2imChannels = 4;
constexpr int64_t kCol2imMinOutChannels = 64;
// The most bytes of columns col2im computes at once: images are taken together up to this. For many output
// channels, col2im takes only images whose columns fit in kCol2imMaxImageBytes (the phases need no buffer: a
// 64-channel 1024x1024 image's columns would take 600 MB).
constexpr int64_t kCol2imColsBytes = int64_t(8) << 20;
constexpr int64_t kCol2imMaxImageBytes = int64_t(32) << 20;
// The bytes of one image's columns, [C*KH*KW, OH*OW] in acc_t.
template <typename acc_t>
int64_t col2im_image_bytes(const ConvShape& s) {
  return static_cast<int64_t>(sizeof(acc_t)) * s.C * s.KH * s.KW * s.OH * s.OW;
}

// dst [K, N*P] = src [N, K, P] with the images side by side: one GEMM's B (or A transposed) over a batch of gz.
template <typename acc_t>
void images_side_by_side(const acc_t* src, int64_t N, int64_t K, int64_t P, acc_t* dst) {
  at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t n = 0; n < N; ++n) std::copy_n(src + (n * K + k) * P, P, dst + (k * N + n) * P);
    }
  });
}

// grad_x of a strided convolution as a GEMM and col2im, for the stems over RGB or grey images (the phases'
// convolutions would have only C output channels, a fraction of the smallest register tile) and for small
// planes (the phases' convolutions have a few pixels each, a fraction of a column panel, and take their
// weights' packing once per phase). For a block of nb images, cols [C*KH*KW, nb*P] = w^T @ gz [K, nb*P]: one
// GEMM (w read down its columns; gz's images side by side, gz transposed to [K, N, P] for nb > 1, so that the
// weights are packed once per block, not per image); then col2im: each row (c, kh, kw) of an image's columns is
// added into grad_x[n, c] at its shift, output rows in order (one thread per plane; a fixed order of additions).
template <typename acc_t>
void conv2d_grad_input_col2im(const ConvShape& s, const acc_t* gz, const acc_t* w, acc_t* gx) {
  const int64_t taps = s.KH * s.KW, rows = s.C * taps, P = s.OH * s.OW;
  const int64_t nb = std::clamp<int64_t>(kCol2imColsBytes / col2im_image_bytes<acc_t>(s), 1, s.N);
  const Scratch cols_buf(2, sizeof(acc_t) * rows * nb * P);  // reused from block to block
  const Scratch gzt_buf(3, nb > 1 ? sizeof(acc_t) * s.K * nb * P : 0);
  acc_t* cols = static_cast<acc_t*>(cols_buf.get());
  acc_t* gzt = static_cast<acc_t*>(gzt_buf.get());
  for (int64_t n0 = 0; n0 < s.N; n0 += nb) {
    const int64_t nn = std::min(nb, s.N - n0), ld = nn * P;
    const acc_t* b = gz + n0 * s.K * P;
    if (nn > 1) {
      images_side_by_side(b, nn, s.K, P, gzt);
      b = gzt;
    }
    StridedGemm<acc_t, NoPost> g{1, rows, ld, s.K, 1, w, 1, rows, b, ld, 1, cols, ld};
    gemm_run<acc_t>(g);
    at::parallel_for(0, nn * s.C, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t i = p / s.C, c = p % s.C;
        acc_t* plane = gx + ((n0 + i) * s.C + c) * s.H * s.W;
        std::fill(plane, plane + s.H * s.W, acc_t(0));
        for (int64_t kh = 0; kh < s.KH; ++kh) {
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const acc_t* row = cols + (c * taps + kh * s.KW + kw) * ld + i * P;
            for_each_tap_row(s, kh, kw, [&](int64_t in, int64_t out, int64_t n) {
              for (int64_t t = 0; t < n; ++t) plane[in + t * s.sw] += row[out + t];
            });
          }
        }
      }
    });
  }
}

// grad_x [N, C, H, W] (groups 1) from cols^T [N*P, C*KH*KW] = gz^T @ w: A is gz^T (gz itself for one image,
// else gz transposed to [K, N*P]), B is w as it lies; then col2im, or for a pointwise conv of one image a
// transposition (faster than any scalar loop over the columns).
template <typename acc_t>
void conv2d_grad_input_by_w_rows(const ConvShape& s, const acc_t* gz, const acc_t* w, acc_t* gx) {
  const int64_t taps = s.KH * s.KW, rows = s.C * taps, P = s.OH * s.OW, M = s.N * P;
  const Scratch t_buf(2, sizeof(acc_t) * M * rows);
  const Scratch gzt_buf(3, s.N > 1 ? sizeof(acc_t) * s.K * M : 0);
  acc_t* t = static_cast<acc_t*>(t_buf.get());
  const acc_t* a = gz;
  if (s.N > 1) {
    acc_t* gzt = static_cast<acc_t*>(gzt_buf.get());
    images_side_by_side(gz, s.N, s.K, P, gzt);
    a = gzt;
  }
  StridedGemm<acc_t, NoPost> g{1, M, rows, s.K, 1, a, 1, M, w, rows, 1, t, rows};
  gemm_run<acc_t>(g);
  if (conv2d_is_pointwise(s) && s.N == 1) {  // the columns are grad_x transposed: 8 x 8 register transposes
    bool done = false;
    if constexpr (std::is_same_v<acc_t, float>) done = transpose_f32(t, P, s.C, gx, static_cast<int>(P));
    for (int64_t c = 0; c < s.C && !done; ++c) {
      for (int64_t q = 0; q < P; ++q) gx[c * P + q] = t[q * s.C + c];
    }
    return;
  }
  // Per image and block of channels: output pixel by output pixel, the pixel's row of cols^T (read in order) is
  // added into the block's planes (in the cache: small planes). Every element of grad_x gets its terms in the
  // same order (output pixel, then tap) whatever the split.
  constexpr int64_t kChannels = 64;
  const int64_t blocks = (s.C + kChannels - 1) / kChannels, HW = s.H * s.W;
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t q = p0; q < p1; ++q) {
      const int64_t n = q / blocks, c0 = q % blocks * kChannels, c1 = std::min(s.C, c0 + kChannels);
      acc_t* image = gx + n * s.C * HW;
      std::fill(image + c0 * HW, image + c1 * HW, acc_t(0));
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          const acc_t* src = t + (n * P + oh * s.OW + ow) * rows;
          for (int64_t kh = 0; kh < s.KH; ++kh) {
            const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
            if (ih < 0 || ih >= s.H) continue;
            for (int64_t kw = 0; kw < s.KW; ++kw) {
              const int64_t iw = ow * s.sw - s.pw + kw * s.dw;
              if (iw < 0 || iw >= s.W) continue;
              acc_t* dst = image + ih * s.W + iw;
              const acc_t* from = src + kh * s.KW + kw;
              for (int64_t c = c0; c < c1; ++c) dst[c * HW] += from[c * taps];
            }
          }
        }
      }
    }
  });
}

// grad_w through the weight-gradient GEMM above (K = batch x positions), into gw [K, Cg, KH, KW] in acc_t, then
// post(row, j0, m, n, tile, ld) on each finished tile when has_post.
template <typename acc_t, typename Post>
void conv2d_grad_weight_kernel(const ConvShape& shape, const acc_t* gz, const acc_t* x, acc_t* gw, bool has_post,
                               const Post& post) {
  // A pointwise convolution's planes as single rows: pack_b moves x in runs of one output row, and the whole
  // plane is one run (rows of 7-56 pixels left a partial 8-column transpose, element by element, in each).
  ConvShape s = shape;
  if (conv2d_is_pointwise(s)) s.H = s.OH = 1, s.W = s.OW = shape.H * shape.W;
  const int64_t cols = s.Cg * s.KH * s.KW;
  Conv2dGradWeightGemm<acc_t, Post> g{s.groups, s.Kg, cols,  s.N * s.OH * s.OW, s.groups, s, gz, x,
                                      gw,       cols, false, has_post,          post};
  at::Tensor xq;
  std::vector<int64_t> ktab;
  if (s.sw > 1) {
    xq = phase_split<acc_t>(s, x);
    g.xq = xq.const_data_ptr<acc_t>();
    g.Hq = xq.size(4), g.Wq = xq.size(5);
    ktab = phase_table(s, g.Hq, g.Wq);
    g.ktab = ktab.data();
  }
  gemm_run<acc_t>(g);
}

// One phase r of a strided dimension (input positions r + stride * u): `size` positions u, and the taps
// that read them, `taps` of them from `first` on, every stride-th one; tap `first` reads input r + stride * u
// for output u + shift.
struct Phase {
  int64_t size, first, taps, shift;
};
inline Phase phase_of(int64_t r, int64_t pad, int64_t stride, int64_t kernel, int64_t in) {
  Phase p;
  p.size = in > r ? (in - r + stride - 1) / stride : 0;
  p.first = (r + pad) % stride;
  p.taps = p.first < kernel ? (kernel - 1 - p.first) / stride + 1 : 0;
  p.shift = (r + pad - p.first) / stride;
  return p;
}

// The weights of grad_x as forward convolutions: per target, wt[g*Cg + c, k, i, j] = w[g*Kg + k, c, h0 +
// (th-1-i) * sh, w0 + (tw-1-j) * sw] for i < th, j < tw (stride 1: all the taps, flipped; other strides: one
// phase's taps), k and c swapped. One loop over w for all the targets, rather than ATen's view, slice, flip,
// transpose and copy per target, which cost several times the convolution.
template <typename acc_t>
struct TapTarget {
  int64_t h0, th, w0, tw;
  acc_t* wt;
};
template <typename acc_t>
void flip_transpose_taps(const ConvShape& s, const acc_t* w, const std::vector<TapTarget<acc_t>>& targets) {
  // 1x1 kernels: a transposition per group, through 8 x 8 register transposes (pack_transpose_f32, false
  // without AVX2). Element by element, the rows of a large weight (2048 x 512) lie a power of two apart, and
  // the walk misses the cache on every read.
  if constexpr (std::is_same_v<acc_t, float>) {
    if (s.KH * s.KW == 1 && targets.size() == 1) {
      bool done = true;
      for (int64_t g = 0; g < s.groups && done; ++g) {
        done = transpose_f32(w + g * s.Kg * s.Cg, s.Kg, s.Cg, targets[0].wt + g * s.Cg * s.Kg, static_cast<int>(s.Kg));
      }
      if (done) return;
    }
  }
  // Where each tap of w goes: target weights, their taps per (c, k), and the position among them (a fixed
  // walk over the taps per (c, k), without branching on the targets' shapes).
  const int64_t taps = s.KH * s.KW;
  std::vector<acc_t*> to(static_cast<size_t>(taps), nullptr);
  std::vector<int64_t> tt(static_cast<size_t>(taps), 0), at(static_cast<size_t>(taps), 0);
  for (const TapTarget<acc_t>& t : targets) {
    for (int64_t i = 0; i < t.th; ++i) {
      for (int64_t j = 0; j < t.tw; ++j) {
        const int64_t q = (t.h0 + (t.th - 1 - i) * s.sh) * s.KW + t.w0 + (t.tw - 1 - j) * s.sw;
        to[q] = t.wt, tt[q] = t.th * t.tw, at[q] = i * t.tw + j;
      }
    }
  }
  // Along k innermost, in blocks of 16 output channels: the block's rows of w (one line per k) stay in L1
  // while every (c, tap) reads its column of them, and each target is written along k with a fixed stride.
  // (The rows lie C * taps apart, often a multiple of 1 KiB: more than 16 of them share too few L1 sets.)
  constexpr int64_t B = 16;
  const int64_t rs = s.Cg * taps;
  for (int64_t g = 0; g < s.groups; ++g) {
    for (int64_t k0 = 0; k0 < s.Kg; k0 += B) {
      const int64_t kn = std::min(s.Kg - k0, B);
      for (int64_t c = 0; c < s.Cg; ++c) {
        const acc_t* src = w + ((g * s.Kg + k0) * s.Cg + c) * taps;
        const int64_t e = (g * s.Cg + c) * s.Kg + k0;
        for (int64_t q = 0; q < taps; ++q) {
          if (!to[q]) continue;
          acc_t* dst = to[q] + e * tt[q] + at[q];
          const int64_t step = tt[q];
          for (int64_t k = 0; k < kn; ++k) dst[k * step] = src[k * rs + q];
        }
      }
    }
  }
}

// The forward kernels that are no implicit GEMM: the direct few-channel, depthwise and grouped ones, and Winograd for
// 3x3 convolutions in float. False, and nothing done, for the shapes they do not take. z gets conv + bias (relu if
// asked).
template <typename acc_t>
bool conv2d_forward_without_gemm(const ConvShape& s, const acc_t* x, const acc_t* w, const acc_t* bias, acc_t* z,
                                 bool relu) {
  if (conv2d_is_small(s)) {
    small_forward<acc_t>(s, x, w, bias, z, relu, nullptr);
    return true;
  }
  if (conv2d_is_depthwise(s)) {
    depthwise_forward<acc_t>(s, x, w, bias, z, relu);
    return true;
  }
  if (conv2d_is_grouped(s)) {
    grouped_forward<acc_t>(s, x, w, bias, z, relu);
    return true;
  }
  return try_winograd_forward<acc_t>(s, x, w, bias, z, relu);
}

// grad_w of a pointwise convolution with few input channels per group: grad_w[k, c] = sum over images of the dot
// product of gz's plane k with x's plane c, both read in place (dot_rows_f32). The weight-gradient GEMM packs all of
// gz for it (its K runs over images and positions) and transposes x into panels of which a third to a half is
// padding at 16 to 24 channels; from 32 channels on the GEMM measured faster.
constexpr int64_t kGradWeightDotsMaxChannels = 24;
bool pointwise_grad_weight_by_dots_applies(const ConvShape& s) {
  return conv2d_is_pointwise(s) && s.Cg <= kGradWeightDotsMaxChannels && cpu_isa() != Isa::Base;
}
void pointwise_grad_weight_by_dots(const ConvShape& s, const float* gz, const float* x, float* gw) {
  const int64_t P = s.H * s.W;
  for (int64_t g = 0; g < s.groups; ++g) {
    // The rule above holds only where dot_rows_f32 has kernels; a false here would leave gw unwritten.
    TORCH_INTERNAL_ASSERT(dot_rows_f32(s.Kg, s.Cg, P, gz + g * s.Kg * P, P, x + g * s.Cg * P, P, gw + g * s.Kg * s.Cg,
                                       s.Cg, s.N, s.K * P, s.C * P));
  }
}

// Steps 2a and 2b of the backward: grad_x and grad_w (NCHW-contiguous scalar_t tensors; an undefined one is
// not computed) from gz = dL/d(pre-activation) [N, K, OH, OW] in acc_t. xa and wa: x and weight as acc_t
// NCHW-contiguous tensors, needed for grad_w and grad_x respectively. Shared with conv2d_maxpool's backward
// (conv2d_backward_from_grad_preactivation).
template <typename scalar_t>
void conv2d_input_weight_grads(const ConvShape& s, const at::opmath_type<scalar_t>* gz_p, const at::Tensor& xa,
                               const at::Tensor& wa, const at::Tensor& grad_x, const at::Tensor& grad_w) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!(grad_x.defined() && grad_x.numel() > 0) && !(grad_w.defined() && grad_w.numel() > 0)) return;
  const auto opts = xa.defined() ? xa.options() : wa.options();
  const acc_t* x_p = xa.defined() ? xa.const_data_ptr<acc_t>() : nullptr;
  const acc_t* w_p = wa.defined() ? wa.const_data_ptr<acc_t>() : nullptr;
  // Rounds a finished tile of rows [r0, r0 + m) x columns [j0, j0 + n) of an acc_t GEMM result into the
  // half-type tensor dst with `cols` columns (float/double results are written in place by the GEMM).
  auto rounder = [](scalar_t* dst, int64_t cols) {
    return [dst, cols](int64_t r0, int64_t j0, int m, int n, acc_t* c, int64_t ld) {
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) dst[(r0 + i) * cols + j0 + j] = static_cast<scalar_t>(c[i * ld + j]);
      }
    };
  };
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;

  // A direct kernel's gradient: into dst itself (float/double) or an acc_t buffer rounded once into it.
  auto direct_grad = [&](const at::Tensor& dst, auto&& kernel) {
    at::Tensor acc = direct ? dst : empty_output(dst.sizes(), opts);
    kernel(acc.template mutable_data_ptr<acc_t>());
    if (!direct) dst.copy_(acc);
  };
  bool x_done = !(grad_x.defined() && grad_x.numel() > 0), w_done = !(grad_w.defined() && grad_w.numel() > 0);
  if (!w_done && small_grad_weight_by_outputs_applies<acc_t>(s)) {
    direct_grad(grad_w, [&](acc_t* gw) { small_grad_weight_by_outputs<acc_t>(s, gz_p, x_p, gw); });
    w_done = true;
  }
  if (conv2d_is_small(s)) {  // the direct kernel for grad_w; grad_x below, as a convolution
    if (!w_done) {
      direct_grad(grad_w, [&](acc_t* gw) { small_grad_weight<acc_t>(s, gz_p, x_p, gw); });
      w_done = true;
    }
  } else if (conv2d_is_depthwise(s)) {  // the direct kernels
    if (!x_done) direct_grad(grad_x, [&](acc_t* gx) { depthwise_grad_input<acc_t>(s, gz_p, w_p, gx); });
    if (!w_done) direct_grad(grad_w, [&](acc_t* gw) { depthwise_grad_weight<acc_t>(s, gz_p, x_p, gw); });
    return;
  }

  // Step 2a, stride 1: grad_x = conv(gz, w flipped in (kh, kw) with k and c swapped) with padding
  // dilation * (kernel - 1) - padding, which gives back H x W: the forward implicit GEMM (or a forward
  // without one: for narrow groups, the direct grouped kernel).
  const bool x_by_gemm = s.sh == 1 && s.sw == 1 && s.ph <= s.dh * (s.KH - 1) && s.pw <= s.dw * (s.KW - 1);
  if (conv2d_is_grouped(s)) {  // the direct kernels; grad_x of stride 1 as said
    if (!x_done && !x_by_gemm) {
      direct_grad(grad_x, [&](acc_t* gx) { grouped_grad_input<acc_t>(s, gz_p, w_p, gx); });
      x_done = true;
    }
    if (!w_done) {
      direct_grad(grad_w, [&](acc_t* gw) { grouped_grad_weight<acc_t>(s, gz_p, x_p, gw); });
      w_done = true;
    }
  }
  // Step 2a, small planes and large weights: the columns' gradient, transposed, as one GEMM with w [K, C*KH*KW]
  // read as it lies (B, row-major): cols^T [N*P, C*KH*KW] = gz^T @ w, then col2im from it (for a pointwise conv
  // of one image, a transposition). The other ways first flip and transpose w (stride 1) or pack it transposed
  // (col2im's A), a pass over w (read and written) that costs about as much as the product over few pixels
  // once w is larger than the cache.
  if (!x_done && grad_x_by_w_rows<acc_t>(s)) {
    direct_grad(grad_x, [&](acc_t* gx) { conv2d_grad_input_by_w_rows<acc_t>(s, gz_p, w_p, gx); });
    x_done = true;
  }
  if (!x_done && x_by_gemm) {
    ConvShape t = s;
    t.C = s.K, t.H = s.OH, t.W = s.OW, t.K = s.C, t.OH = s.H, t.OW = s.W;
    t.ph = s.dh * (s.KH - 1) - s.ph, t.pw = s.dw * (s.KW - 1) - s.pw;
    t.Cg = s.Kg, t.Kg = s.Cg;
    // wt[g*Cg + c, k, i, j] = w[g*Kg + k, c, KH-1-i, KW-1-j] (flip_transpose_taps).
    const Scratch wt(2, sizeof(acc_t) * s.C * s.Kg * s.KH * s.KW);  // reused: fresh memory faults on every page
    acc_t* wt_p = static_cast<acc_t*>(wt.get());
    flip_transpose_taps<acc_t>(s, w_p, {{0, s.KH, 0, s.KW, wt_p}});
    at::Tensor gxa = direct ? grad_x : empty_output(grad_x.sizes(), opts);
    if (!conv2d_forward_without_gemm<acc_t>(t, gz_p, wt_p, nullptr, gxa.mutable_data_ptr<acc_t>(), false)) {
      conv2d_forward_kernel<acc_t>(t, gz_p, wt_p, nullptr, gxa.mutable_data_ptr<acc_t>(), false, !direct,
                                   rounder(grad_x.mutable_data_ptr<scalar_t>(), s.H * s.W));
    } else if (!direct) {
      grad_x.copy_(gxa);
    }
  }

  // Step 2a, other strides, few input channels or many output channels: a GEMM and col2im.
  const bool col2im_fits = col2im_image_bytes<acc_t>(s) <= kCol2imMaxImageBytes;
  if (!x_done && !x_by_gemm && s.groups == 1 &&
      (s.C <= kCol2imChannels || (s.K >= kCol2imMinOutChannels && col2im_fits))) {
    direct_grad(grad_x, [&](acc_t* gx) { conv2d_grad_input_col2im<acc_t>(s, gz_p, w_p, gx); });
    x_done = true;
  }

  // Step 2a, other strides, no dilation: phase by phase. The input pixels (a + sh * u, b + sw * v) of one
  // phase receive gradient only from the taps kh = a + ph (mod sh), kw = b + pw (mod sw), from gz rows
  // u + (a + ph - kh) / sh: a stride-1 convolution of gz with those taps (flipped, k and c swapped), the
  // forward implicit GEMM; no zeros are scattered or multiplied.
  const bool x_by_phases = !x_by_gemm && s.dh == 1 && s.dw == 1;
  if (!x_done && x_by_phases) {
    struct PhaseConv {
      at::Tensor dst;
      const acc_t* wt;
      ConvShape t;
    };
    std::vector<PhaseConv> convs;
    std::vector<TapTarget<acc_t>> targets;
    const Scratch wts(2, sizeof(acc_t) * s.C * s.Kg * s.KH * s.KW);  // every phase's weights (the taps split)
    acc_t* wt_next = static_cast<acc_t*>(wts.get());
    for (int64_t a = 0; a < s.sh; ++a) {
      for (int64_t b = 0; b < s.sw; ++b) {
        const Phase ph = phase_of(a, s.ph, s.sh, s.KH, s.H), pw = phase_of(b, s.pw, s.sw, s.KW, s.W);
        if (ph.size == 0 || pw.size == 0) continue;
        at::Tensor dst = grad_x.slice(2, a, c10::nullopt, s.sh).slice(3, b, c10::nullopt, s.sw);
        if (ph.taps == 0 || pw.taps == 0) {
          dst.zero_();
          continue;
        }
        ConvShape t = s;
        t.C = s.K, t.H = s.OH, t.W = s.OW, t.K = s.C, t.OH = ph.size, t.OW = pw.size;
        t.KH = ph.taps, t.KW = pw.taps, t.sh = t.sw = 1;
        t.ph = ph.taps - 1 - ph.shift, t.pw = pw.taps - 1 - pw.shift;
        t.Cg = s.Kg, t.Kg = s.Cg;
        targets.push_back({ph.first, ph.taps, pw.first, pw.taps, wt_next});
        convs.push_back({dst, wt_next, t});
        wt_next += s.C * s.Kg * t.KH * t.KW;
      }
    }
    flip_transpose_taps(s, w_p, targets);
    for (const PhaseConv& pc : convs) {
      at::Tensor out = empty_output({s.N, s.C, pc.t.OH, pc.t.OW}, opts);
      conv2d_forward_kernel<acc_t>(pc.t, gz_p, pc.wt, nullptr, out.template mutable_data_ptr<acc_t>(), false, false,
                                   NoPost{});
      pc.dst.copy_(out);
    }
  }

  // Step 2a, other strides and dilations: the direct scatter.
  if (!x_done && !x_by_gemm && !x_by_phases) {
    conv2d_grad_input_kernel<scalar_t, acc_t>(s, gz_p, w_p, grad_x.mutable_data_ptr<scalar_t>());
  }

  // Step 2b: grad_w by Winograd where the forward takes it, by dot products for pointwise convs with few channels,
  // else through the weight-gradient GEMM (K = batch x positions; for strides along W, packed from the phases of x).
  if (!w_done && winograd_grad_weight_applies<acc_t>(s)) {
    if constexpr (std::is_same_v<acc_t, float>) {
      direct_grad(grad_w, [&](float* gw) { winograd_grad_weight(s, gz_p, x_p, gw); });
    }
    w_done = true;
  }
  if constexpr (std::is_same_v<acc_t, float>) {  // float, bf16 and fp16 (rounded by direct_grad)
    if (!w_done && pointwise_grad_weight_by_dots_applies(s)) {
      direct_grad(grad_w, [&](float* gw) { pointwise_grad_weight_by_dots(s, gz_p, x_p, gw); });
      w_done = true;
    }
  }
  if (!w_done) {
    const int64_t cols = s.Cg * s.KH * s.KW;
    at::Tensor gwa = direct ? grad_w : empty_output(grad_w.sizes(), opts);
    conv2d_grad_weight_kernel<acc_t>(s, gz_p, x_p, gwa.mutable_data_ptr<acc_t>(), !direct,
                                     rounder(grad_w.mutable_data_ptr<scalar_t>(), cols));
  }
}

// Whether a depthwise convolution runs on a channels-last x as it lies (float and double; one output channel per
// input channel), its output channels-last too: the channels-last depthwise kernels vectorise across channels,
// and NCHW copies of x and of the output cost more than the taps (convnext's 7x7 depthwise convs, whose input
// comes out of a permute). grad_out and grad_x of the backward are then channels-last as well.
bool depthwise_nhwc(const ConvShape& s, const at::Tensor& x) {
  return conv2d_is_depthwise(s) && s.Kg == 1 && !conv2d_is_strided_pointwise(s) &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
         x.suggest_memory_format() == at::MemoryFormat::ChannelsLast && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor conv2d_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          c10::string_view activation, double alpha, double beta) {
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, kOp);
  const ConvShape s = check_conv_args(x, weight, bias, stride, padding, dilation, groups, kOp, c10::DeviceType::CPU);
  if (conv2d_is_linear(s))
    return as_images(linear_act_forward_impl(as_rows(x), as_rows(weight), bias, activation, alpha, beta, false), x);
  if (conv2d_is_nhwc_patchify(s, x)) {
    const at::Tensor rows =
        linear_act_forward_impl(nhwc_patches(s, x), patch_weight(s, weight), bias, activation, alpha, beta, false);
    return nhwc_images(rows, s);
  }
  const auto memory_format = x.suggest_memory_format();
  const bool nhwc = depthwise_nhwc(s, x);
  at::Tensor out = empty_output({s.N, s.K, s.OH, s.OW}, x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                                                       : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out.contiguous(memory_format);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    // float/double accumulate straight into the output; half types into a float buffer, rounded in `post`.
    constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
    const at::Tensor wa = as_acc(weight, acc_type);
    const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
    const acc_t* b_p = ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr;
    if constexpr (direct) {
      if (nhwc) {
        acc_t* z = out.mutable_data_ptr<acc_t>();
        depthwise_forward<acc_t>(s, x.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), b_p, z,
                                 act == Activation::ReLU, true);
        if (act != Activation::None && act != Activation::ReLU) {  // elementwise: the layout does not matter
          dispatch_activation(act, [&](auto act_tag) {
            at::parallel_for(0, out.numel(), 16384, [&](int64_t i0, int64_t i1) {
              activation_span<decltype(act_tag)::value>(z + i0, 1, i1 - i0, 0, params);
            });
          });
        }
        return;
      }
    }
    // A strided 1x1 conv runs as the pointwise conv `se` of the pixels it reads.
    const bool spw = conv2d_is_strided_pointwise(s);
    const ConvShape se = spw ? strided_pointwise_as_pointwise(s) : s;
    const at::Tensor xa = spw ? gather_strided_pointwise(s, x).to(acc_type) : as_acc(x, acc_type);
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t plane = s.OH * s.OW;
    at::Tensor cbuf = direct ? out : empty_output({s.N, s.K, s.OH, s.OW}, out.options().dtype(acc_type));
    dispatch_activation(act, [&](auto act_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      constexpr bool in_kernel = A == Activation::None || A == Activation::ReLU;
      // The activation in place on the finished tile (c: the output itself for float and double, else the float
      // buffer), then, where they differ, the move (and rounding) into the output.
      auto post = [&](int64_t p0, int64_t j0, int m, int n, acc_t* c, int64_t ld) {
        if constexpr (!in_kernel) activation_span<A>(c, m, n, ld, params);
        for (int i = 0; i < m; ++i) {
          const acc_t* z = c + i * ld;
          scalar_t* o = y + (p0 + i) * plane + j0;
          if (static_cast<const void*>(o) != static_cast<const void*>(z)) {
            for (int j = 0; j < n; ++j) o[j] = static_cast<scalar_t>(z[j]);
          }
        }
      };
      if (conv2d_is_small(se)) {
        // The direct kernel, with the activation and rounding on each finished block of rows.
        const SmallPost<acc_t> p = post;
        small_forward<acc_t>(se, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), b_p,
                             cbuf.mutable_data_ptr<acc_t>(), A == Activation::ReLU, direct && in_kernel ? nullptr : &p);
      } else if (conv2d_forward_without_gemm<acc_t>(se, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), b_p,
                                                    cbuf.mutable_data_ptr<acc_t>(), A == Activation::ReLU)) {
        // The activation and rounding plane by plane.
        if (!(direct && in_kernel)) {
          acc_t* c = cbuf.mutable_data_ptr<acc_t>();
          at::parallel_for(0, s.N * s.K, std::max<int64_t>(1, 16384 / plane), [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) post(p, 0, 1, static_cast<int>(plane), c + p * plane, plane);
          });
        }
      } else {
        conv2d_forward_kernel<acc_t>(se, xa.const_data_ptr<acc_t>(), wa.const_data_ptr<acc_t>(), b_p,
                                     cbuf.mutable_data_ptr<acc_t>(), A == Activation::ReLU, !(direct && in_kernel),
                                     post);
      }
    });
  });
  return out.contiguous(memory_format);
}

// ---------------------------------------------------------------------------------------------------------
// Backward.

// The backward of a depthwise convolution that ran channels-last (depthwise_nhwc; T float or double): grad_out,
// x and grad_x channels-last as they lie. gz = grad_out * act'(saved) elementwise (the layout does not
// matter), grad_bias each channel's sum over the pixels in order (deterministic). The undefined grads are not
// computed; grad_x is allocated channels-last.
template <typename T>
void depthwise_nhwc_backward(const ConvShape& s, Activation act, const ActivationParams& params,
                             const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out,
                             at::Tensor& grad_x, const at::Tensor& grad_w, const at::Tensor& grad_b) {
  const auto cl = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  const at::Tensor go = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  // weight is read for grad_x and the recomputation only (else autograd may pass a stand-in).
  const at::Tensor wa = grad_x.defined() || grad_needs_preactivation(act) ? weight.contiguous() : at::Tensor();
  const T* w_p = wa.defined() ? wa.const_data_ptr<T>() : nullptr;
  at::Tensor gz = go;
  if (act != Activation::None) {
    at::Tensor saved;
    if (grad_needs_preactivation(act)) {  // recomputed, in T
      const at::Tensor ba = has_bias(bias) ? bias->contiguous() : at::Tensor();
      saved = empty_output({s.N, s.K, s.OH, s.OW}, cl);
      depthwise_forward<T>(s, x.const_data_ptr<T>(), w_p, ba.defined() ? ba.const_data_ptr<T>() : nullptr,
                           saved.mutable_data_ptr<T>(), false, true);
    } else {
      saved = out->contiguous(at::MemoryFormat::ChannelsLast);
    }
    gz = empty_output({s.N, s.K, s.OH, s.OW}, cl);
    const T* g_p = go.const_data_ptr<T>();
    const T* s_p = saved.const_data_ptr<T>();
    T* z_p = gz.mutable_data_ptr<T>();
    dispatch_activation(act, [&](auto act_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      at::parallel_for(0, gz.numel(), 16384, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) z_p[i] = grad_times<A>(g_p[i], s_p[i], params);
      });
    });
  }
  const T* gz_p = gz.const_data_ptr<T>();
  if (grad_b.defined()) {
    T* gb = grad_b.mutable_data_ptr<T>();
    const int64_t rows = s.N * s.OH * s.OW;
    at::parallel_for(0, s.K, 64, [&](int64_t k0, int64_t k1) {
      for (int64_t kb = k0; kb < k1; kb += 64) {  // 64 running sums in a local array: they vectorise
        const int64_t n = std::min<int64_t>(64, k1 - kb);
        T sums[64] = {};
        for (int64_t r = 0; r < rows; ++r) {
          const T* g = gz_p + r * s.K + kb;
          for (int64_t k = 0; k < n; ++k) sums[k] += g[k];
        }
        std::copy(sums, sums + n, gb + kb);
      }
    });
  }
  if (grad_x.defined()) {
    grad_x = empty_output(x.sizes(), cl);
    depthwise_grad_input<T>(s, gz_p, w_p, grad_x.mutable_data_ptr<T>(), true);
  }
  if (grad_w.defined()) depthwise_grad_weight<T>(s, gz_p, x.const_data_ptr<T>(), grad_w.mutable_data_ptr<T>(), true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& out, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, c10::string_view activation, double alpha, double beta, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const ActivationParams params{alpha, beta};
  check_activation_params(act, params, kOpBwd);
  const ConvShape s = check_conv_args(x, weight, bias, stride, padding, dilation, groups, kOpBwd, c10::DeviceType::CPU);
  const std::array<int64_t, 4> y_shape = {s.N, s.K, s.OH, s.OW};
  check_output_like(x, grad_out, "grad_out", y_shape, kOpBwd);
  check_saved_output(x, out, grad_needs_output(act), activation, y_shape, kOpBwd);
  if (conv2d_is_linear(s)) {
    const std::optional<at::Tensor> out_rows = out.has_value() && out->defined() ? std::optional(as_rows(*out)) : out;
    auto [gx, gw, gb] = linear_act_backward(as_rows(grad_out), as_rows(x), as_rows(weight), bias, out_rows, activation,
                                            alpha, beta, output_mask);
    return {gx.defined() ? as_images(gx, x) : gx, gw.defined() ? as_images(gw, weight) : gw, gb};
  }
  if (conv2d_is_nhwc_patchify(s, x)) {  // (x may be a stand-in, not channels-last: then the NCHW passes below)
    // The patches and the weight are read only where needed (grad_w, grad_x, a recomputation); else stand-ins.
    const int64_t rows = s.N * s.OH * s.OW, cols = s.KH * s.KW * s.C;
    const bool recompute = grad_needs_preactivation(act);
    const at::Tensor patches =
        output_mask[1] || recompute ? nhwc_patches(s, x) : x.new_empty({1, 1}).expand({rows, cols});
    const at::Tensor pw =
        output_mask[0] || recompute ? patch_weight(s, weight) : x.new_empty({1, 1}).expand({s.K, cols});
    const std::optional<at::Tensor> out_rows = out.has_value() && out->defined() ? std::optional(nhwc_rows(*out)) : out;
    auto [gp, gw, gb] =
        linear_act_backward(nhwc_rows(grad_out), patches, pw, bias, out_rows, activation, alpha, beta, output_mask);
    at::Tensor gx;
    if (gp.defined()) {
      const bool whole = s.OH * s.KH == s.H && s.OW * s.KW == s.W;
      gx = empty_output(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
      if (!whole) gx.zero_();
      gx.permute({0, 2, 3, 1})
          .narrow(1, 0, s.OH * s.KH)
          .narrow(2, 0, s.OW * s.KW)
          .view({s.N, s.OH, s.KH, s.OW, s.KW, s.C})
          .copy_(gp.view({s.N, s.OH, s.OW, s.KH, s.KW, s.C}).permute({0, 1, 3, 2, 4, 5}));
    }
    if (gw.defined()) gw = gw.view({s.K, s.KH, s.KW, s.C}).permute({0, 3, 1, 2}).contiguous();
    return {gx, gw, gb};
  }

  const bool need_x = output_mask[0];
  const bool need_w = output_mask[1];
  const bool need_b = output_mask[2] && has_bias(bias);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_x = need_x ? empty_output(x.sizes(), opts) : at::Tensor();  // NCHW, converted at the end
  at::Tensor grad_w = need_w ? empty_output(weight.sizes(), opts) : at::Tensor();
  at::Tensor grad_b = need_b ? empty_output({s.K}, opts) : at::Tensor();
  if (!need_x && !need_w && !need_b) return {grad_x, grad_w, grad_b};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (depthwise_nhwc(s, x)) {
        depthwise_nhwc_backward<acc_t>(s, act, params, grad_out, x, weight, bias, out, grad_x, grad_w, grad_b);
        return;
      }
    }
    // x and weight are read only where needed: autograd passes expanded stand-ins for the others.
    const bool recompute = grad_needs_preactivation(act);
    // A strided 1x1 conv runs as the pointwise conv `se` of the pixels it reads (grad_x: zero elsewhere).
    const bool spw = conv2d_is_strided_pointwise(s);
    const ConvShape se = spw ? strided_pointwise_as_pointwise(s) : s;
    const at::Tensor xa =
        need_w || recompute ? (spw ? gather_strided_pointwise(s, x).to(acc_type) : as_acc(x, acc_type)) : at::Tensor();
    const at::Tensor wa = need_x || recompute ? as_acc(weight, acc_type) : at::Tensor();
    const acc_t* x_p = xa.defined() ? xa.const_data_ptr<acc_t>() : nullptr;
    const acc_t* w_p = wa.defined() ? wa.const_data_ptr<acc_t>() : nullptr;
    const at::Tensor go = grad_out.contiguous();
    const scalar_t* go_p = go.const_data_ptr<scalar_t>();
    const int64_t plane = s.OH * s.OW;

    // Step 1: gz = grad_out * act'(saved) in acc_t, one (n, k) plane per work item, with the plane's sum
    // for grad_bias taken in the same pass. Without activation gz is grad_out itself where that is already
    // acc_t (float/double): most convolutions of real models (those before a BatchNorm) would otherwise copy
    // their whole output gradient here.
    const bool gz_is_go = act == Activation::None && std::is_same_v<scalar_t, acc_t>;
    at::Tensor gz = gz_is_go ? go : empty_output({s.N, s.K, s.OH, s.OW}, opts.dtype(acc_type));
    const acc_t* gz_p = gz.const_data_ptr<acc_t>();
    acc_t* gz_out = gz_is_go ? nullptr : gz.mutable_data_ptr<acc_t>();
    std::vector<acc_t> plane_sums(s.N * s.K, acc_t(0));
    dispatch_activation(act, [&](auto act_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      auto grad_plane = [&](int64_t p, auto saved) {  // saved(i): what Fn::grad expects at element i of plane p
        // Two loops: the first vectorises (no running sum), the second sums in 16 fixed lanes (a single
        // running sum may not be reordered, so it would run one add at a time).
        const acc_t* gzp = gz_p + p * plane;
        if (gz_out) {
          acc_t* dst = gz_out + p * plane;
          const scalar_t* gop = go_p + p * plane;
          for (int64_t i = 0; i < plane; ++i) dst[i] = grad_times<A>(static_cast<acc_t>(gop[i]), saved(i), params);
        }
        if (!need_b) return;
        constexpr int V = 16;
        acc_t lanes[V] = {};
        int64_t i = 0;
        for (; i + V <= plane; i += V) {
          for (int l = 0; l < V; ++l) lanes[l] += gzp[i + l];
        }
        acc_t sum = acc_t(0);
        for (int l = 0; l < V; ++l) sum += lanes[l];
        for (; i < plane; ++i) sum += gzp[i];
        plane_sums[p] = sum;
      };
      if (recompute) {
        // Recompute the pre-activation with the forward GEMM; it stays in acc_t (never rounded).
        const at::Tensor ba = has_bias(bias) ? as_acc(*bias, acc_type) : at::Tensor();
        at::Tensor z = empty_output({s.N, s.K, s.OH, s.OW}, opts.dtype(acc_type));
        const acc_t* z_p = z.mutable_data_ptr<acc_t>();
        conv2d_z<acc_t>(se, x_p, w_p, ba.defined() ? ba.const_data_ptr<acc_t>() : nullptr, z.mutable_data_ptr<acc_t>());
        at::parallel_for(0, s.N * s.K, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const acc_t* zp = z_p + p * plane;
            grad_plane(p, [zp](int64_t i) { return zp[i]; });
          }
        });
      } else if (!grad_needs_output(act)) {  // none: the derivative is 1 and reads nothing
        if (gz_is_go && !need_b) return;
        at::parallel_for(0, s.N * s.K, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) grad_plane(p, [](int64_t) { return acc_t(0); });
        });
      } else {
        const at::Tensor saved = out->contiguous();
        const scalar_t* s_p = saved.const_data_ptr<scalar_t>();
        at::parallel_for(0, s.N * s.K, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const scalar_t* sp = s_p + p * plane;
            grad_plane(p, [sp](int64_t i) { return static_cast<acc_t>(sp[i]); });
          }
        });
      }
    });

    if (need_b) {
      // Summed over the batch in its order: deterministic.
      scalar_t* gb = grad_b.mutable_data_ptr<scalar_t>();
      for (int64_t k = 0; k < s.K; ++k) {
        acc_t sum = acc_t(0);
        for (int64_t n = 0; n < s.N; ++n) sum += plane_sums[n * s.K + k];
        gb[k] = static_cast<scalar_t>(sum);
      }
    }

    // Steps 2a and 2b.
    at::Tensor gx = need_x && spw ? empty_output({s.N, s.C, s.OH, s.OW}, opts) : grad_x;
    conv2d_input_weight_grads<scalar_t>(se, gz_p, xa, wa, need_x ? gx : at::Tensor(), need_w ? grad_w : at::Tensor());
    if (need_x && spw) {
      grad_x.zero_();
      strided_pixels(s, grad_x).copy_(gx);
    }
  });
  if (grad_x.defined()) grad_x = grad_x.contiguous(x.suggest_memory_format());
  return {grad_x, grad_w, grad_b};
}

}  // namespace

template <typename acc_t>
void conv2d_pack_im2col(const ConvShape& s, const acc_t* xg, int64_t j0, int nr, int64_t k0, int64_t kc, acc_t* dst,
                        int NR) {
  pack_im2col_fast(s, xg, j0, nr, k0, kc, dst, NR);
}
template void conv2d_pack_im2col<float>(const ConvShape&, const float*, int64_t, int, int64_t, int64_t, float*, int);
template void conv2d_pack_im2col<double>(const ConvShape&, const double*, int64_t, int, int64_t, int64_t, double*, int);

template <typename acc_t>
void conv2d_preactivation_kernel(const ConvShape& s, const acc_t* x, const acc_t* w, const acc_t* bias, acc_t* z) {
  conv2d_z<acc_t>(s, x, w, bias, z);
}
template void conv2d_preactivation_kernel<float>(const ConvShape&, const float*, const float*, const float*, float*);
template void conv2d_preactivation_kernel<double>(const ConvShape&, const double*, const double*, const double*,
                                                  double*);

void conv2d_backward_from_grad_preactivation(const ConvShape& s, const at::Tensor& gz, const at::Tensor& x,
                                             const at::Tensor& weight, const at::Tensor& grad_x,
                                             const at::Tensor& grad_w) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dlkernels_conv2d_grads_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const bool need_x = grad_x.defined() && grad_x.numel() > 0, need_w = grad_w.defined() && grad_w.numel() > 0;
    const at::Tensor xa = need_w ? as_acc(x, acc_type) : at::Tensor();
    const at::Tensor wa = need_x ? as_acc(weight, acc_type) : at::Tensor();
    conv2d_input_weight_grads<scalar_t>(s, gz.const_data_ptr<acc_t>(), xa, wa, need_x ? grad_x : at::Tensor(),
                                        need_w ? grad_w : at::Tensor());
  });
}

}  // namespace cpu
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(dlkernels, CPU, m) {
  m.impl("conv2d", &dlkernels::cpu::conv2d_forward);
  m.impl("conv2d_backward", &dlkernels::cpu::conv2d_backward);
}
