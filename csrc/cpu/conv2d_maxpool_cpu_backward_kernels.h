// The loops of the sparse backward of conv2d_maxpool (conv2d_maxpool_cpu_backward.cpp), written once over a
// vector-ops type VO and included (deliberately without an include guard) once per ISA: inside a
// target("avx512...") or target("avx2...") region of conv2d_maxpool_cpu_backward_x86.cpp and, for the portable
// path, in conv2d_maxpool_cpu_backward.cpp, each time in its own namespace. VO provides T, V, L (lanes) and
// zero, set1, load, loadn (the first n lanes, the others 0), store, storen, add, fma(a, b, c) = a * b + c and
// sum.
//
// Both gradients are one loop, a gathered axpy: dst[0, len) += sum_i g[i] * src[off[i] + j], j in [0, len),
// with len a run of channels (grad_w: the runs are the input patches at the pooling windows' maxima, dst a row
// of grad_w; grad_x: the runs are weight rows, dst the input patch). The sum over i runs in registers, in the
// order of i, and reaches dst once: the same order for every thread count. Where one run is a few vectors, one
// chain of FMAs would wait on each FMA's latency: short runs (up to three of at most four vectors, a few-channel
// conv) are summed all at once, one chain per vector; a run's last block of up to four vectors in two chains,
// the even and the odd i, added at the end.

// U vectors of the run (the last of them `tail` lanes) at dst, from the sources at src + off[i].
template <class VO, int U>
DLK_ALWAYS_INLINE void sp_gather_block(int64_t count, const typename VO::T* src, const int64_t* off,
                                       const typename VO::T* g, typename VO::T* dst, int tail) {
  using V = typename VO::V;
  constexpr int L = VO::L;
  constexpr int S = U <= 4 ? 2 : 1;  // interleaved chains
  V acc[S][U];
  for (int c = 0; c < S; ++c) {
    for (int u = 0; u < U; ++u) acc[c][u] = VO::zero();
  }
  int64_t i = 0;
  for (; i + S <= count; i += S) {
    for (int c = 0; c < S; ++c) {
      const typename VO::T* p = src + off[i + c];
      const V gv = VO::set1(g[i + c]);
      for (int u = 0; u + 1 < U; ++u) acc[c][u] = VO::fma(gv, VO::load(p + u * L), acc[c][u]);
      acc[c][U - 1] = VO::fma(gv, VO::loadn(p + (U - 1) * L, tail), acc[c][U - 1]);
    }
  }
  for (; i < count; ++i) {
    const typename VO::T* p = src + off[i];
    const V gv = VO::set1(g[i]);
    for (int u = 0; u + 1 < U; ++u) acc[0][u] = VO::fma(gv, VO::load(p + u * L), acc[0][u]);
    acc[0][U - 1] = VO::fma(gv, VO::loadn(p + (U - 1) * L, tail), acc[0][U - 1]);
  }
  for (int u = 0; u < U; ++u) {
    V a = acc[0][u];
    if constexpr (S == 2) a = VO::add(a, acc[1][u]);
    if (u + 1 < U) {
      VO::store(dst + u * L, VO::add(VO::load(dst + u * L), a));
    } else {
      VO::storen(dst + u * L, VO::add(VO::loadn(dst + u * L, tail), a), tail);
    }
  }
}

// dst[0, len) += sum over i in [0, count) of g[i] * src[off[i] + j]: blocks of 8 vectors, then the rest.
template <class VO>
DLK_ALWAYS_INLINE void sp_gather_axpy(int64_t len, int64_t count, const typename VO::T* src, const int64_t* off,
                                      const typename VO::T* g, typename VO::T* dst) {
  constexpr int L = VO::L, U = 8;
  int64_t j = 0;
  for (; j + U * L <= len; j += U * L) sp_gather_block<VO, U>(count, src + j, off, g, dst + j, L);
  const int64_t rest = len - j;
  if (rest == 0) return;
  const int nv = static_cast<int>((rest + L - 1) / L), tail = static_cast<int>(rest - (nv - 1) * L);
  switch (nv) {
    case 1: return sp_gather_block<VO, 1>(count, src + j, off, g, dst + j, tail);
    case 2: return sp_gather_block<VO, 2>(count, src + j, off, g, dst + j, tail);
    case 3: return sp_gather_block<VO, 3>(count, src + j, off, g, dst + j, tail);
    case 4: return sp_gather_block<VO, 4>(count, src + j, off, g, dst + j, tail);
    case 5: return sp_gather_block<VO, 5>(count, src + j, off, g, dst + j, tail);
    case 6: return sp_gather_block<VO, 6>(count, src + j, off, g, dst + j, tail);
    case 7: return sp_gather_block<VO, 7>(count, src + j, off, g, dst + j, tail);
    default: return sp_gather_block<VO, 8>(count, src + j, off, g, dst + j, tail);  // 7 vectors and a part
  }
}

// Short runs (a few channels): all R runs of a list at once, U vectors each (the last `tail` lanes), in one
// pass over its terms; then the lists of sp_gather_lists with R and U fixed.
template <class VO, int R, int U>
DLK_ALWAYS_INLINE void sp_gather_runs_block(int64_t count, const typename VO::T* src, const int64_t* src_runs,
                                            const int64_t* off, const typename VO::T* g, typename VO::T* dst,
                                            const int64_t* dst_runs, int tail) {
  using V = typename VO::V;
  constexpr int L = VO::L;
  V acc[R][U];
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < U; ++u) acc[r][u] = VO::zero();
  }
  for (int64_t i = 0; i < count; ++i) {
    const typename VO::T* p = src + off[i];
    const V gv = VO::set1(g[i]);
    for (int r = 0; r < R; ++r) {
      const typename VO::T* q = p + src_runs[r];
      for (int u = 0; u + 1 < U; ++u) acc[r][u] = VO::fma(gv, VO::load(q + u * L), acc[r][u]);
      acc[r][U - 1] = VO::fma(gv, VO::loadn(q + (U - 1) * L, tail), acc[r][U - 1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    typename VO::T* d = dst + dst_runs[r];
    for (int u = 0; u + 1 < U; ++u) VO::store(d + u * L, VO::add(VO::load(d + u * L), acc[r][u]));
    VO::storen(d + (U - 1) * L, VO::add(VO::loadn(d + (U - 1) * L, tail), acc[r][U - 1]), tail);
  }
}

template <class VO, int R, int U>
void sp_gather_lists_short(int64_t len, const int64_t* src_runs, const int64_t* dst_runs, int64_t lists,
                           const int64_t* start, const int64_t* dst_off, const int64_t* off, const typename VO::T* g,
                           const typename VO::T* src, typename VO::T* dst) {
  const int tail = static_cast<int>(len - (U - 1) * VO::L);
  for (int64_t l = 0; l < lists; ++l) {
    const int64_t i0 = start[l], count = start[l + 1] - i0;
    if (count == 0) continue;
    sp_gather_runs_block<VO, R, U>(count, src, src_runs, off + i0, g + i0, dst + dst_off[l], dst_runs, tail);
  }
}

template <class VO, int R>
void sp_gather_lists_short_r(int64_t len, const int64_t* src_runs, const int64_t* dst_runs, int64_t lists,
                             const int64_t* start, const int64_t* dst_off, const int64_t* off, const typename VO::T* g,
                             const typename VO::T* src, typename VO::T* dst) {
  switch ((len + VO::L - 1) / VO::L) {
    case 1: return sp_gather_lists_short<VO, R, 1>(len, src_runs, dst_runs, lists, start, dst_off, off, g, src, dst);
    case 2: return sp_gather_lists_short<VO, R, 2>(len, src_runs, dst_runs, lists, start, dst_off, off, g, src, dst);
    case 3: return sp_gather_lists_short<VO, R, 3>(len, src_runs, dst_runs, lists, start, dst_off, off, g, src, dst);
    default: return sp_gather_lists_short<VO, R, 4>(len, src_runs, dst_runs, lists, start, dst_off, off, g, src, dst);
  }
}

// For each list l in [0, lists) (its terms i in [start[l], start[l + 1])) and each run r in [0, runs):
// dst[dst_off[l] + dst_runs[r] + j] += sum over the terms of g[i] * src[off[i] + src_runs[r] + j], j in
// [0, len). grad_w: a list per output channel (the maxima of a band), grad_x: a list per conv position (the
// channels whose maximum sits there).
template <class VO>
void sp_gather_lists(int64_t len, int64_t runs, const int64_t* src_runs, const int64_t* dst_runs, int64_t lists,
                     const int64_t* start, const int64_t* dst_off, const int64_t* off, const typename VO::T* g,
                     const typename VO::T* src, typename VO::T* dst) {
  if (runs <= 3 && len <= 4 * VO::L) {
    switch (runs) {
      case 1: return sp_gather_lists_short_r<VO, 1>(len, src_runs, dst_runs, lists, start, dst_off, off, g, src, dst);
      case 2: return sp_gather_lists_short_r<VO, 2>(len, src_runs, dst_runs, lists, start, dst_off, off, g, src, dst);
      default: return sp_gather_lists_short_r<VO, 3>(len, src_runs, dst_runs, lists, start, dst_off, off, g, src, dst);
    }
  }
  for (int64_t l = 0; l < lists; ++l) {
    const int64_t i0 = start[l], count = start[l + 1] - i0;
    if (count == 0) continue;
    for (int64_t r = 0; r < runs; ++r) {
      sp_gather_axpy<VO>(len, count, src + src_runs[r], off + i0, g + i0, dst + dst_off[l] + dst_runs[r]);
    }
  }
}

// sum over the runs r in [0, runs) of the dot product of a[a_off[r] + j] and b[b_off[r] + j], j in [0, len):
// the pre-activation at one maximum (a the weight row, b the input patch).
template <class VO>
typename VO::T sp_patch_dot(int64_t len, int64_t runs, const typename VO::T* a, const int64_t* a_off,
                            const typename VO::T* b, const int64_t* b_off) {
  using V = typename VO::V;
  constexpr int L = VO::L;
  V acc0 = VO::zero(), acc1 = VO::zero();
  for (int64_t r = 0; r < runs; ++r) {
    const typename VO::T* pa = a + a_off[r];
    const typename VO::T* pb = b + b_off[r];
    int64_t j = 0;
    for (; j + 2 * L <= len; j += 2 * L) {
      acc0 = VO::fma(VO::load(pa + j), VO::load(pb + j), acc0);
      acc1 = VO::fma(VO::load(pa + j + L), VO::load(pb + j + L), acc1);
    }
    for (; j < len; j += L) {
      const int n = static_cast<int>(std::min<int64_t>(L, len - j));
      acc0 = VO::fma(VO::loadn(pa + j, n), VO::loadn(pb + j, n), acc0);
    }
  }
  return VO::sum(VO::add(acc0, acc1));
}
