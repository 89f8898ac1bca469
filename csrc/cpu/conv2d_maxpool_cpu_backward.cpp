// The glue of the sparse backward of conv2d_maxpool: the padded channels-last copies, the runs, the split over
// threads and the choice of ISA; the loops are in conv2d_maxpool_cpu_backward_kernels.h, compiled here once for
// the portable path (one lane) and in conv2d_maxpool_cpu_backward_x86.cpp for AVX-512 and AVX2.
#include "cpu/conv2d_maxpool_cpu_backward.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/simd.h"
#include "cpu/vector_ops.h"

namespace dlkernels {
namespace cpu {
namespace sp_base {

#include "cpu/conv2d_maxpool_cpu_backward_kernels.h"

}  // namespace sp_base

namespace {

template <typename T>
const SparseBlockKernels<T>& sparse_block_kernels() {
  static const SparseBlockKernels<T> base{sp_base::sp_gather_lists<ScalarOps<T>>, sp_base::sp_patch_dot<ScalarOps<T>>};
  return kernels_for_isa(base, DLK_X86_KERNELS(sparse_block_kernels_avx512<T>),
                         DLK_X86_KERNELS(sparse_block_kernels_avx2<T>));
}

// A run is KW * C channels (the kernel row's taps are adjacent in the channels-last input) without groups or
// dilation along W, else the Cg channels of one tap.
bool runs_span_kernel_rows(const ConvShape& s) { return s.groups == 1 && s.dw == 1; }

// How many pooled rows a band of grad_weight covers: as many as keep the input rows it reads (for every output
// channel in turn) within about kBandBytes, so that they stay in L2.
int64_t weight_band_rows(const BlockShape& b, int64_t Wp, int64_t elem) {
  constexpr int64_t kBandBytes = 256 * 1024;
  const ConvShape& s = b.conv;
  const auto bytes = [&](int64_t rows) {
    const int64_t conv_rows = (rows - 1) * b.sh + b.kh;
    return ((conv_rows - 1) * s.sh + (s.KH - 1) * s.dh + 1) * Wp * s.C * elem;
  };
  int64_t rows = 1;
  while (rows < b.PH && bytes(rows + 1) <= kBandBytes) ++rows;
  return rows;
}

}  // namespace

bool conv2d_maxpool_sparse_backward_wins(const BlockShape& b) {
  const ConvShape& s = b.conv;
  const int64_t run = runs_span_kernel_rows(s) ? s.KW * s.C : s.Cg;
  return 2 * b.PH * b.PW <= s.OH * s.OW && run >= 8;
}

template <typename acc_t>
SparseBlockBackward<acc_t>::SparseBlockBackward(const BlockShape& b, const acc_t* x, const acc_t* w, bool patches,
                                                bool rows)
    : b_(b), kernels_(sparse_block_kernels<acc_t>()) {
  const ConvShape& s = b.conv;
  hp_ = s.H + 2 * s.ph, wp_ = s.W + 2 * s.pw;
  row_len_ = s.KH * s.KW * s.Cg;
  if (runs_span_kernel_rows(s)) {
    run_len_ = s.KW * s.C;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      x_runs_.push_back(kh * s.dh * wp_ * s.C);
      w_runs_.push_back(kh * s.KW * s.Cg);
    }
  } else {
    run_len_ = s.Cg;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        x_runs_.push_back((kh * s.dh * wp_ + kw * s.dw) * s.C);
        w_runs_.push_back((kh * s.KW + kw) * s.Cg);
      }
    }
  }
  if (patches) {  // row by row: the C input rows of one image row into one padded channels-last row
    xp_.assign(s.N * hp_ * wp_ * s.C, acc_t(0));
    at::parallel_for(0, s.N * s.H, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / s.H, ih = r % s.H;
        acc_t* dst = xp_.data() + ((n * hp_ + ih + s.ph) * wp_ + s.pw) * s.C;
        for (int64_t c = 0; c < s.C; ++c) {
          const acc_t* src = x + ((n * s.C + c) * s.H + ih) * s.W;
          for (int64_t iw = 0; iw < s.W; ++iw) dst[iw * s.C + c] = src[iw];
        }
      }
    });
  }
  if (rows) {
    w_rows_.resize(s.K * row_len_);
    const int64_t taps = s.KH * s.KW;
    for (int64_t k = 0; k < s.K; ++k) {
      for (int64_t c = 0; c < s.Cg; ++c) {
        for (int64_t t = 0; t < taps; ++t) w_rows_[k * row_len_ + t * s.Cg + c] = w[(k * s.Cg + c) * taps + t];
      }
    }
  }
}

template <typename acc_t>
acc_t SparseBlockBackward<acc_t>::preactivation(int64_t n, int64_t k, int64_t h, int64_t w) const {
  const int64_t group = k / b_.conv.Kg;
  return kernels_.patch_dot(run_len_, static_cast<int64_t>(x_runs_.size()), w_rows_.data() + k * row_len_,
                            w_runs_.data(), xp_.data() + patch_base(n, group, h, w), x_runs_.data());
}

template <typename acc_t>
void SparseBlockBackward<acc_t>::grad_weight(const int32_t* pos, const acc_t* val, acc_t* gw) const {
  const ConvShape& s = b_.conv;
  const int64_t pooled = b_.PH * b_.PW, band = weight_band_rows(b_, wp_, sizeof(acc_t));
  const int64_t runs = static_cast<int64_t>(x_runs_.size());
  std::vector<acc_t> rows(s.K * row_len_, acc_t(0));  // [K, KH, KW, Cg]
  // Each output channel sums its terms image by image, band by band, in pooled order: a split over channels
  // leaves the order alone. A thread's channels take turns on one band, while its input rows are in cache.
  at::parallel_for(0, s.K, 1, [&](int64_t k0, int64_t k1) {
    const int64_t lists = k1 - k0;
    std::vector<int64_t> start(lists + 1), dst_off(lists), off(lists * band * b_.PW);
    std::vector<acc_t> g(lists * band * b_.PW);
    for (int64_t k = k0; k < k1; ++k) dst_off[k - k0] = k * row_len_;
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t q0 = 0; q0 < b_.PH; q0 += band) {
        const int64_t o0 = q0 * b_.PW, o1 = std::min(b_.PH, q0 + band) * b_.PW;
        int64_t count = 0;
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t plane = (n * s.K + k) * pooled, group = k / s.Kg;
          start[k - k0] = count;
          for (int64_t o = o0; o < o1; ++o) {
            const int32_t p = pos[plane + o];
            if (p < 0) continue;
            off[count] = patch_base(n, group, p / s.OW, p % s.OW);
            g[count++] = val[plane + o];
          }
        }
        start[lists] = count;
        kernels_.gather_lists(run_len_, runs, x_runs_.data(), w_runs_.data(), lists, start.data(), dst_off.data(),
                              off.data(), g.data(), xp_.data(), rows.data());
      }
    }
  });
  const int64_t taps = s.KH * s.KW;
  for (int64_t k = 0; k < s.K; ++k) {
    for (int64_t c = 0; c < s.Cg; ++c) {
      for (int64_t t = 0; t < taps; ++t) gw[(k * s.Cg + c) * taps + t] = rows[k * row_len_ + t * s.Cg + c];
    }
  }
}

template <typename acc_t>
void SparseBlockBackward<acc_t>::grad_input(const int32_t* pos, const acc_t* val, acc_t* gx) const {
  const ConvShape& s = b_.conv;
  const int64_t pooled = b_.PH * b_.PW, positions = s.OH * s.OW;
  const int64_t runs = static_cast<int64_t>(x_runs_.size());
  const int64_t image = hp_ * wp_ * s.C;
  // One image per work item, in a padded channels-last buffer of its own: per group, the routed values sorted by
  // conv position (channels in order at each), then at each position the sum of value * weight run over its
  // channels, added to the patch's input gradient.
  at::parallel_for(0, s.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<acc_t> gxp(image);
    std::vector<int64_t> start(positions + 1), cursor(positions), dst_off(positions), off(s.Kg * pooled);
    std::vector<acc_t> g(s.Kg * pooled);
    for (int64_t p = 0; p < positions; ++p) dst_off[p] = patch_base(0, 0, p / s.OW, p % s.OW);
    for (int64_t n = n0; n < n1; ++n) {
      std::fill(gxp.begin(), gxp.end(), acc_t(0));
      for (int64_t group = 0; group < s.groups; ++group) {
        const int32_t* pos_g = pos + (n * s.K + group * s.Kg) * pooled;
        const acc_t* val_g = val + (n * s.K + group * s.Kg) * pooled;
        std::fill(start.begin(), start.end(), 0);
        for (int64_t e = 0; e < s.Kg * pooled; ++e) {
          if (pos_g[e] >= 0) ++start[pos_g[e] + 1];
        }
        for (int64_t p = 0; p < positions; ++p) start[p + 1] += start[p];
        std::copy(start.begin(), start.end() - 1, cursor.begin());
        for (int64_t e = 0; e < s.Kg * pooled; ++e) {
          if (pos_g[e] < 0) continue;
          const int64_t slot = cursor[pos_g[e]]++;
          off[slot] = (group * s.Kg + e / pooled) * row_len_;
          g[slot] = val_g[e];
        }
        kernels_.gather_lists(run_len_, runs, w_runs_.data(), x_runs_.data(), positions, start.data(), dst_off.data(),
                              off.data(), g.data(), w_rows_.data(), gxp.data() + group * s.Cg);
      }
      for (int64_t ih = 0; ih < s.H; ++ih) {  // row by row, as the input was copied
        const acc_t* src = gxp.data() + ((ih + s.ph) * wp_ + s.pw) * s.C;
        for (int64_t c = 0; c < s.C; ++c) {
          acc_t* dst = gx + ((n * s.C + c) * s.H + ih) * s.W;
          for (int64_t iw = 0; iw < s.W; ++iw) dst[iw] = src[iw * s.C + c];
        }
      }
    }
  });
}

template class SparseBlockBackward<float>;
template class SparseBlockBackward<double>;

}  // namespace cpu
}  // namespace dlkernels
