// The im2col packer of the conv2d forward GEMM's column blocks (pack_b_block in conv2d_cpu.cpp), written once and
// compiled for the baseline ISA there and inside the AVX-512 and AVX2 wrappers of conv2d_cpu_x86.cpp: the runs it
// copies are an output row long (14 to 56 floats at a stride-2 conv's phases), and the baseline build moves them 16
// bytes at a time.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/gemm.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

// The im2col B panels of a block of columns [j0, j0 + n), k in [k0, k0 + kc), as gemm.h's pack_b_block. Column
// j is output position j % P of image j / P (one image per GEMM, or the images side by side), whose planes
// start `image` elements apart from `planes`. Row k = (c, kh, kw) reads plane tab[3k] (Hx x Wx) at row
// oh * row_step + tab[3k + 1], columns ow + tab[3k + 2] (step 1: stride 1 along W, or x's phases), zeros
// outside the plane. Row by row: each row of k is built over the whole block in an L1 buffer (its source rows
// read in order, one run per output row), then copied into the panels; panel by panel walked every row of k
// once per panel, a line or two of a different plane each time.
template <int NR, typename acc_t>
void pack_im2col_block(const acc_t* planes, int64_t image, const int64_t* tab, int64_t row_step, int64_t Hx, int64_t Wx,
                       int64_t OW, int64_t P, int64_t j0, int64_t n, int64_t k0, int64_t kc, acc_t* dst) {
  constexpr int64_t kMaxCols = 512;
  TORCH_INTERNAL_ASSERT(n <= kMaxCols);
  acc_t row[kMaxCols];
  struct Segment {  // the block's runs within one output row, from column jj; offset: of the image's planes
    int64_t jj, len, oh, ow, offset;
  };
  struct Part {  // the block's runs within one image, from column jj, whose first position is p
    int64_t jj, len, p, offset;
  };
  Segment segs[kMaxCols];
  Part parts[kMaxCols];
  int64_t count = 0, part_count = 0;
  for (int64_t jj = 0; jj < n;) {
    const int64_t img = (j0 + jj) / P, p = (j0 + jj) % P, len = std::min(n - jj, P - p);
    parts[part_count++] = {jj, len, p, img * image};
    for (int64_t t = 0, oh = p / OW, ow = p % OW; t < len; ow = 0, ++oh) {
      const int64_t seg = std::min(len - t, OW - ow);
      segs[count++] = {jj + t, seg, oh, ow, img * image};
      t += seg;
    }
    jj += len;
  }
  // Planes as wide as the output rows, one output row per plane row ("same" padding at stride 1, and the
  // phases): an image's runs are one run of the plane, shifted by the tap's offsets. It is copied in one go,
  // clamped to the plane (which zeros the rows outside it), then each output row's columns that fall outside
  // the plane (at most the offset's width, at one end) are zeroed.
  const bool one_run = Wx == OW && row_step == 1;
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t* e = tab + 3 * (k0 + k);
    const acc_t* plane = planes + e[0];
    for (int64_t q = 0; q < part_count && one_run; ++q) {
      const Part& g = parts[q];
      const int64_t L = g.p + e[1] * Wx + e[2];  // the plane index that the part's first column reads
      const int64_t a = std::clamp<int64_t>(-L, 0, g.len), b = std::clamp<int64_t>(Hx * Wx - L, a, g.len);
      copy_short<acc_t>(nullptr, a, row + g.jj);
      copy_short(plane + g.offset + L + a, b - a, row + g.jj + a);
      copy_short<acc_t>(nullptr, g.len - b, row + g.jj + b);
    }
    for (int64_t q = 0; q < count && one_run && e[2] != 0; ++q) {
      const Segment& g = segs[q];
      const int64_t iw = g.ow + e[2];
      const int64_t lo = std::clamp<int64_t>(-iw, 0, g.len), hi = std::clamp<int64_t>(Wx - iw, lo, g.len);
      copy_short<acc_t>(nullptr, lo, row + g.jj);
      copy_short<acc_t>(nullptr, g.len - hi, row + g.jj + hi);
    }
    for (int64_t q = 0; q < count && !one_run; ++q) {
      const Segment& g = segs[q];
      acc_t* o = row + g.jj;
      const int64_t ih = g.oh * row_step + e[1], iw = g.ow + e[2];
      if (ih < 0 || ih >= Hx) {
        copy_short<acc_t>(nullptr, g.len, o);
        continue;
      }
      const int64_t lo = std::clamp<int64_t>(-iw, 0, g.len), hi = std::clamp<int64_t>(Wx - iw, lo, g.len);
      copy_short<acc_t>(nullptr, lo, o);
      copy_short(plane + g.offset + ih * Wx + iw + lo, hi - lo, o + lo);
      copy_short<acc_t>(nullptr, g.len - hi, o + hi);
    }
    row_to_panels<NR>(row, n, kc * NR, dst + k * NR);
  }
}

}  // namespace cpu
}  // namespace dlkernels
