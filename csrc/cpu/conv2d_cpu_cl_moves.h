// The channels-last moves of the direct convolution kernels of small planes (conv2d_cpu_depthwise_kernels.h,
// conv2d_cpu_grouped_kernels.h), written once over a vector-ops type VO and included, like those files (and
// deliberately without an include guard), once per ISA, each time in the kernel file's own namespace.
//
// Requires: <algorithm>, <cstdint> and <utility> included before.

// n elements from src to dst (not overlapping) by vectors, the last partial one masked: the row copies into
// padded buffers are short (a few vectors), where a library call costs more than the move.
template <class VO>
DLK_ALWAYS_INLINE void copy_run(const typename VO::T* src, int64_t n, typename VO::T* dst) {
  constexpr int L = VO::L;
  int64_t i = 0;
  for (; i + L <= n; i += L) VO::store(dst + i, VO::load(src + i));
  if (i < n) VO::storen(dst + i, VO::loadn(src + i, static_cast<int>(n - i)), static_cast<int>(n - i));
}

// In-register transpose of L vectors of L lanes (r[i] lane j -> r[j] lane i): stages h = L/2, ..., 1, each
// swapping the off-diagonal h x h blocks of every 2h x 2h block with two-source shuffles.
template <class VO, int H, size_t... J>
DLK_ALWAYS_INLINE void swap_blocks(typename VO::V& a, typename VO::V& b, std::index_sequence<J...>) {
  constexpr int L = VO::L;
  const typename VO::V lo = __builtin_shufflevector(a, b, ((J & H) ? L + J - H : J)...);
  const typename VO::V hi = __builtin_shufflevector(a, b, ((J & H) ? L + J : J + H)...);
  a = lo, b = hi;
}
template <class VO, int H>
DLK_ALWAYS_INLINE void transpose_stage(typename VO::V* r) {
  if constexpr (H >= 1) {
    for (int i = 0; i < VO::L; ++i) {
      if ((i & H) == 0) swap_blocks<VO, H>(r[i], r[i + H], std::make_index_sequence<VO::L>{});
    }
    transpose_stage<VO, H / 2>(r);
  }
}

// Channels-last moves of the small-plane kernels: cn planes of rows x cols elements, `plane` apart, to and from
// CB-channel pixels, rows `ld` pixels apart (padded buffers). L channels x L consecutive plane positions at a
// time through an in-register transpose (positions may span rows: each pixel's L channels are one vector
// wherever the pixel lies; the last group of positions masked), the channels past the last L element by
// element.
template <class VO>
DLK_ALWAYS_INLINE void to_channels_last(const typename VO::T* src, int64_t plane, int64_t rows, int64_t cols,
                                        int64_t cn, typename VO::T* dst, int64_t ld, int64_t CB) {
  constexpr int L = VO::L;
  const int64_t P = rows * cols;
  int64_t c0 = 0;
  if constexpr (L > 1) {
    for (; c0 + L <= cn; c0 += L) {
      for (int64_t p = 0; p < P; p += L) {
        const int n = static_cast<int>(std::min<int64_t>(L, P - p));  // the last group may be partial
        typename VO::V r[L];
        for (int i = 0; i < L; ++i) r[i] = VO::loadn(src + (c0 + i) * plane + p, n);
        transpose_stage<VO, L / 2>(r);
        for (int j = 0; j < n; ++j) VO::store(dst + ((p + j) / cols * ld + (p + j) % cols) * CB + c0, r[j]);
      }
    }
  }
  for (int64_t p = 0; p < P && c0 < cn; ++p) {
    for (int64_t c = c0; c < cn; ++c) dst[(p / cols * ld + p % cols) * CB + c] = src[c * plane + p];
  }
}
template <class VO>
DLK_ALWAYS_INLINE void from_channels_last(const typename VO::T* src, int64_t ld, int64_t CB, int64_t rows, int64_t cols,
                                          int64_t cn, typename VO::T* dst, int64_t plane) {
  constexpr int L = VO::L;
  const int64_t P = rows * cols;
  int64_t c0 = 0;
  if constexpr (L > 1) {
    for (; c0 + L <= cn; c0 += L) {
      for (int64_t p = 0; p < P; p += L) {
        const int n = static_cast<int>(std::min<int64_t>(L, P - p));
        typename VO::V r[L];
        for (int j = 0; j < L; ++j) {
          r[j] = j < n ? VO::load(src + ((p + j) / cols * ld + (p + j) % cols) * CB + c0) : VO::zero();
        }
        transpose_stage<VO, L / 2>(r);
        for (int i = 0; i < L; ++i) VO::storen(dst + (c0 + i) * plane + p, r[i], n);
      }
    }
  }
  for (int64_t p = 0; p < P && c0 < cn; ++p) {
    for (int64_t c = c0; c < cn; ++c) dst[c * plane + p] = src[(p / cols * ld + p % cols) * CB + c];
  }
}

// The taps [*lo, *hi) of one kernel dimension that read inside the image for output position o (input
// o * stride - pad + tap * dilation in [0, in)).
DLK_ALWAYS_INLINE void inside_taps(int64_t o, int64_t stride, int64_t dilation, int64_t pad, int64_t in, int64_t taps,
                                   int64_t* lo, int64_t* hi) {
  const int64_t first = o * stride - pad;
  *lo = first >= 0 ? 0 : std::min(taps, (-first + dilation - 1) / dilation);
  *hi = first >= in ? *lo : std::clamp((in - 1 - first) / dilation + 1, *lo, taps);
}
