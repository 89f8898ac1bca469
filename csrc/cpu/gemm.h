// The CPU GEMM shared by linear_act and conv2d (forward and backward): C = A @ B with A [M, K], B [K, N],
// bias + activation applied in the epilogue.
//
// Structure (the classic Goto/BLIS one, kept small):
//   - A is packed once, up front, into panels of MR rows stored k-major (a[k * MR + i]), so the micro-kernel
//     reads it contiguously; rows past M are zero. When each A panel serves at most two tasks, packing does
//     not pay and the micro-kernel reads A's rows in place.
//   - When B's rows are contiguous (a pointwise conv's image, [C, H*W]) and M is small, B is not packed: the
//     micro-kernel reads its full-width panels in place (MicroKernelRowsFn) and only a last, partial panel is
//     packed. Packing costs a pass over B (read and write) that only M / MR micro-kernel sweeps share; with few
//     rows that pass costs more than the sweeps' strided reads of B's rows, prefetched ahead.
//   - The work is split into tasks = (batch entry, block of MC rows, block of NC columns), cut finer when
//     that leaves threads idle. A task walks K in
//     slices of KC: it packs the KC x NC slice of B into panels of NR columns (b[k * NR + j], in L2), then
//     runs the micro-kernel over every MR x NR tile of its block. The A micro-panel (MR x KC) stays in L1
//     while the task sweeps the B panels.
//   - The micro-kernel (gemm.cpp, gemm_x86.cpp) keeps its MR x NR tile of C in vector registers and does, per k, NR /
//   lanes
//     vector loads of B and MR broadcasts of A, each feeding NR / lanes FMAs. There is one for AVX-512 and
//     one for AVX2+FMA (intrinsics), each with a half-width twin for a narrow last column panel, and a
//     portable one, chosen at run time (simd.h). On the last K slice it adds the bias and applies relu
//     before its one store; other activations and the rounding to half types run in `post` on the
//     finished tile while it is still in cache.
// Packing is done through the problem's callbacks, so the same driver does a plain strided GEMM (linear),
// an implicit-im2col GEMM (conv: B is packed straight from the image, never materialised), and the
// transposed products of the backward passes (packing reads the transpose; no transposed copies).
//
// Every element of C sums its K terms in the same order whatever the thread count or its tile position:
// results are deterministic.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "cpu/memory.h"
#include "cpu/simd.h"

namespace dlkernels {
namespace cpu {

// C[0:m, 0:n] of an MR x NR tile (row stride ldc) = (load_c ? C : 0) + A panel @ B panel over kc, then
// + bias_m[i] (per row, if given) + bias_n[j] (per column, if given), then relu if asked. The A panel is
// packed (a[k * MR + i]) when lda == 0, else read in place: row i at a + i * lda, contiguous along k (the
// rows from m on, which may not exist, read row 0 again; their results are dropped).
template <typename T>
using MicroKernelFn = void (*)(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t ldc, int m, int n,
                               bool load_c, const T* bias_m, const T* bias_n, bool relu);

// The same for a tile of all NR columns whose B is read in place, row k at b + k * ldb (NR contiguous elements
// each), prefetching the row kBRowsPrefetch ahead: rows that lie a plane apart are past the reach of the
// hardware's stride prefetchers.
template <typename T>
using MicroKernelRowsFn = void (*)(int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
                                   int m, bool load_c, const T* bias_m, const T* bias_n, bool relu);
constexpr int kBRowsPrefetch = 10;

template <typename T>
struct MicroKernel {
  int mr, nr;
  MicroKernelFn<T> run;
  MicroKernelFn<T> run_half;           // the same for tiles of at most nr / 2 columns (B panels still nr wide)
  MicroKernelRowsFn<T> run_rows = {};  // B in place; null where the ISA has none (the portable kernel)
};

// The micro-kernel for this CPU (float and double), chosen once from cpu_isa().
template <typename T>
const MicroKernel<T>& micro_kernel();

// The micro-kernel for a GEMM of M rows: micro_kernel(), or on AVX-512 a 10-row float kernel where M rows pad
// to fewer in 10-row panels than in 8-row ones (M = 10, 20, 30, 50, ...). Each element of C sums its K terms
// in the same order in both, so the choice changes the speed, not the values.
template <typename T>
const MicroKernel<T>& micro_kernel_for_rows(int64_t M);

// The epilogue of an edge tile (m < MR or n < NR) that a micro-kernel computed into `tile` (row stride NR),
// in the same order of additions as the full-tile paths of the kernels, so a value does not depend on where
// its tile lies. Shared by the portable kernel (gemm.cpp) and the x86 ones (gemm_x86.cpp).
template <typename T>
DLK_ALWAYS_INLINE void finish_edge_tile(const T* tile, int NR, T* c, int64_t ldc, int m, int n, bool load_c,
                                        const T* bias_m, const T* bias_n, bool relu) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      T r = tile[i * NR + j];
      if (load_c) r += c[i * ldc + j];
      if (bias_m) r += bias_m[i];
      if (bias_n) r += bias_n[j];
      if (relu) r = r < T(0) ? T(0) : r;  // NaN passes, as torch.relu
      c[i * ldc + j] = r;
    }
  }
}

// B is read in place (see gemm_run) for GEMMs of at most this many rows; with more, the packing is shared by
// enough sweeps that the packed panels' contiguous reads win.
constexpr int64_t kBRowsMaxM = 128;

// Cache blocking (Zen 4: 32 KiB L1d, 1 MiB L2 per core). The A micro-panel (MR x KC, 20 KiB for float) stays
// in L1 while a task sweeps its KC x NC block of B (up to 640 KiB) from L2. KC = 640 floats keeps a 3x3
// conv over 64 channels (K = 576) in one slice (no reload of C); MC is large so that B, the operand
// packed per task, is repacked rarely.
template <typename T>
struct GemmBlocking {
  static constexpr int64_t KC = 2560 / sizeof(T);
  static constexpr int64_t MC = 2048 / sizeof(T);
  static constexpr int64_t NC = 256 * 4 / sizeof(T);
};

// A packing buffer of n elements: the calling thread's scratch memory for `slot` (see Scratch in
// cpu_utils.h). The driver packs A on the calling thread in slot 0 and B in every task in slot 1.
template <typename T>
struct PackBuffer {
  PackBuffer(int slot, size_t n) : scratch(slot, n * sizeof(T)) {}
  T* get() const { return static_cast<T*>(scratch.get()); }
  Scratch scratch;
};

// ---------------------------------------------------------------------------------------------------------
// Packing helpers for operands that are plain strided matrices.

// dst[k * P + r] = rows[r][k] for r < nrows, k < kc, through 8 x 8 transposes in AVX registers (far faster
// than element by element, and it is what packing W of a Linear, or the image for a conv's weight gradient,
// costs). False, and nothing done, without AVX2.
bool pack_transpose_f32(const float* const* rows, int nrows, int64_t kc, float* dst, int P);
// dst[c * P + r] = src[r * cols + c] for r < rows, c < cols: a row-major matrix transposed (row stride P in dst),
// by pack_transpose_f32 in groups of 64 rows. False, and nothing done, without AVX2.
inline bool transpose_f32(const float* src, int64_t rows, int64_t cols, float* dst, int P) {
  const float* group[64];
  for (int64_t r0 = 0; r0 < rows; r0 += 64) {
    const int nr = static_cast<int>(std::min<int64_t>(64, rows - r0));
    for (int r = 0; r < nr; ++r) group[r] = src + (r0 + r) * cols;
    if (!pack_transpose_f32(group, nr, cols, dst + r0, P)) return false;  // the first group: nothing done
  }
  return true;
}
// dst[k * P + r] = lo[r] <= k < hi[r] ? rows[r][k] : 0 for 8 rows and k < kc (rows[r][k] is read only in its
// range: an image row's run with its padding around it). False, and nothing done, without AVX2.
bool pack_transpose_ranges_f32(const float* const* rows, const int64_t* lo, const int64_t* hi, int64_t kc, float* dst,
                               int P);

// dst[k * W + r] = src[k * sk + r] for r < W, k < kc: copies of a constant size, inlined.
template <int W, typename T>
DLK_ALWAYS_INLINE void copy_runs(const T* src, int64_t sk, int64_t kc, T* dst) {
  for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * W, src + k * sk, W * sizeof(T));
}

// dst[k * P + r] = S[(r0 + r) * sr + (k0 + k) * sk] for k < kc, r < rows; zero rows up to P: a panel of P
// rows, stored k-major, of a strided matrix. When the rows of S are contiguous (sk == 1) this is a
// transposition: it goes in blocks of 16 k (one cache line of each source row) so that the 16 destination
// lines stay in L1 while every row contributes its line. Walking k in the outer loop instead reads P rows
// that lie a power of two apart (L1 set conflicts); walking rows outer writes a new line per element.
template <typename T>
void pack_panel(const T* S, int64_t sr, int64_t sk, int64_t r0, int rows, int64_t k0, int64_t kc, T* dst, int P) {
  const T* base = S + r0 * sr + k0 * sk;
  if (rows < P) {
    for (int64_t k = 0; k < kc; ++k) std::fill(dst + k * P + rows, dst + (k + 1) * P, T(0));
  }
  if (sk == 1 && sr != 1) {
    if constexpr (std::is_same_v<T, float>) {
      const float* row_ptrs[64];
      if (rows <= 64) {
        for (int r = 0; r < rows; ++r) row_ptrs[r] = base + r * sr;
        if (pack_transpose_f32(row_ptrs, rows, kc, dst, P)) return;
      }
    }
    constexpr int64_t KB = 64 / sizeof(T);
    for (int64_t kb = 0; kb < kc; kb += KB) {
      const int64_t ke = std::min(kc, kb + KB);
      for (int r = 0; r < rows; ++r) {
        const T* src = base + r * sr;
        for (int64_t k = kb; k < ke; ++k) dst[k * P + r] = src[k];
      }
    }
  } else if (sr == 1) {
    // A run of `rows` contiguous elements per k. For full panels of the micro-kernel's widths the copy has a
    // constant size and compiles to a few vector moves: a memcpy call per k (24 bytes for an A panel of 6
    // rows read down grad_w's columns) cost as much as the products.
    if (rows == P) {
      switch (P) {
        case 4: return copy_runs<4>(base, sk, kc, dst);
        case 6: return copy_runs<6>(base, sk, kc, dst);
        case 8: return copy_runs<8>(base, sk, kc, dst);
        case 10: return copy_runs<10>(base, sk, kc, dst);
        case 16: return copy_runs<16>(base, sk, kc, dst);
        case 32: return copy_runs<32>(base, sk, kc, dst);
        default: break;
      }
    }
    for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * P, base + k * sk, rows * sizeof(T));
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = base + k * sk;
      T* d = dst + k * P;
      for (int r = 0; r < rows; ++r) d[r] = src[r * sr];
    }
  }
}

// f(std::integral_constant<int, NR>{}) for the micro-kernels' panel widths (4, 8, 16, 32): true; false, and
// nothing done, for others.
template <typename F>
bool with_panel_width(int NR, F&& f) {
  switch (NR) {
    case 4: return f(std::integral_constant<int, 4>{}), true;
    case 8: return f(std::integral_constant<int, 8>{}), true;
    case 16: return f(std::integral_constant<int, 16>{}), true;
    case 32: return f(std::integral_constant<int, 32>{}), true;
    default: return false;
  }
}

// Row k of B panels of NR columns from one run: dst[q * panel + j] = src[q * NR + j] for columns q * NR + j < n,
// zeros past n in the last panel (panel: the panels' stride, kc * NR; dst: row k of panel 0).
template <int NR, typename T>
DLK_ALWAYS_INLINE void row_to_panels(const T* src, int64_t n, int64_t panel, T* dst) {
  const int64_t full = n / NR;
  const int rem = static_cast<int>(n - full * NR);
  for (int64_t q = 0; q < full; ++q) std::memcpy(dst + q * panel, src + q * NR, NR * sizeof(T));
  if (rem) {
    T* t = dst + full * panel;
    copy_short(src + full * NR, rem, t);
    copy_short<T>(nullptr, NR - rem, t + rem);
  }
}

// The B panels of columns [j0, j0 + n) (panel q at dst + q * kc * NR, the last one padded with zeros), k in
// [k0, k0 + kc), of a matrix whose rows are contiguous: B(k, j) = B[k * sk + j]. Row by row, all panels at
// once, so each row of B is read as one run: panel by panel read one line of each of kc rows per panel, rows
// that lie far apart (a 1x1 conv's channel planes), a new page per line once kc is past the TLB's reach. False,
// and nothing done, for a panel width no micro-kernel has.
template <typename T>
bool pack_b_rows(const T* B, int64_t sk, int64_t j0, int64_t n, int64_t k0, int64_t kc, T* dst, int NR) {
  return with_panel_width(NR, [&](auto nr) {
    for (int64_t k = 0; k < kc; ++k)
      row_to_panels<decltype(nr)::value>(B + (k0 + k) * sk + j0, n, kc * NR, dst + k * NR);
  });
}

// The A panel of rows [i0, i0 + mr) over all of K, for P::pack_a; A(i, k) = A[i * sm + k * sk].
template <typename T>
void pack_a_strided(const T* A, int64_t sm, int64_t sk, int64_t i0, int mr, int64_t K, T* dst, int MR) {
  pack_panel(A, sm, sk, i0, mr, 0, K, dst, MR);
}

// The B panel of columns [j0, j0 + nr), k in [k0, k0 + kc), for P::pack_b; B(k, j) = B[k * sk + j * sn].
template <typename T>
void pack_b_strided(const T* B, int64_t sk, int64_t sn, int64_t j0, int nr, int64_t k0, int64_t kc, T* dst, int NR) {
  pack_panel(B, sn, sk, j0, nr, k0, kc, dst, NR);
}

// Block sizes (in panels) along M and N, at most max_m and max_n, that minimise the work of the busiest of
// `threads` threads: at::parallel_for deals the tasks (batch x row blocks x column blocks) out in
// contiguous chunks of equal count, and a task costs its MR x NR tiles plus about a quarter tile per B
// panel it packs. Each count of blocks is tried from its minimum up to `threads` more; ties go to fewer
// tasks.
inline std::pair<int64_t, int64_t> balanced_grid(int64_t batch, int64_t panels_m, int64_t panels_n, int64_t max_m,
                                                 int64_t max_n, int64_t threads) {
  const int64_t dm0 = (panels_m + max_m - 1) / max_m, dn0 = (panels_n + max_n - 1) / max_n;
  std::pair<int64_t, int64_t> best{max_m, max_n};
  double best_cost = -1;
  int64_t best_tasks = 0;
  for (int64_t dm = dm0; dm <= std::min(panels_m, dm0 + threads); ++dm) {
    const int64_t mcp = (panels_m + dm - 1) / dm, bm = (panels_m + mcp - 1) / mcp;
    for (int64_t dn = dn0; dn <= std::min(panels_n, dn0 + threads); ++dn) {
      const int64_t ncp = (panels_n + dn - 1) / dn, bn = (panels_n + ncp - 1) / ncp;
      const int64_t tasks = batch * bm * bn;
      const double cost = static_cast<double>((tasks + threads - 1) / threads) * (mcp * ncp + 0.25 * ncp);
      if (best_cost < 0 || cost < best_cost || (cost == best_cost && tasks < best_tasks)) {
        best = {mcp, ncp};
        best_cost = cost;
        best_tasks = tasks;
      }
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------------
// The driver. `P` describes a batch of independent GEMMs of the same shape:
//   int64_t batch, M, N, K;
//   int64_t num_a;                 distinct A matrices (e.g. conv groups); a_of(b) picks one per batch entry
//   int64_t a_of(int64_t b) const;
//   void pack_a(int64_t a, int64_t i0, int mr, T* dst, int MR) const;   all of K, as pack_a_strided
//   const T* a_rows(int64_t* lda) const;  A in place when its rows are contiguous along k: A number a,
//                                          row i at a_rows + (a * M + i) * lda; null when they are not
//   void pack_b(int64_t b, int64_t j0, int nr, int64_t k0, int64_t kc, T* dst, int NR) const;
//   optional: const T* b_rows(int64_t b, int64_t* ldb) const;   B(k, j) of batch entry b at b_rows + k * ldb + j
//                                          (rows contiguous: read in place, see above); null when not
//   optional: bool pack_b_block(int64_t b, int64_t j0, int64_t n, int64_t k0, int64_t kc, T* dst, int NR) const;
//                                          all panels of columns [j0, j0 + n) at once (as pack_b_rows), or
//                                          false, nothing done, and pack_b is called per panel
//   T* c(int64_t b) const; int64_t ldc;          where C lives (acc type); it is written, never read first
//   const T* bias_m(int64_t b) const; const T* bias_n(int64_t b) const;   null for none
//   bool relu; bool has_post;
//   void post(int64_t b, int64_t i0, int64_t j0, int m, int n, T* c, int64_t ldc) const;  on finished tiles
template <typename T, typename P>
void gemm_run(const P& p) {
  const MicroKernel<T>& uk = micro_kernel_for_rows<T>(p.M);
  const int MR = uk.mr, NR = uk.nr;
  const int64_t M = p.M, N = p.N, K = p.K;
  if (p.batch == 0 || M == 0 || N == 0) return;
  using Blk = GemmBlocking<T>;

  const int64_t panels_m = (M + MR - 1) / MR;

  // Task grid: (batch entry, block of rows, block of columns), blocks of at most MC x NC. With many tasks
  // per thread any split balances; with few (batch 1, a small image, few output channels) the blocks are
  // cut along M, N or both so that the busiest thread has the least work.
  const int64_t panels_n = (N + NR - 1) / NR;
  const int64_t threads = at::get_num_threads();
  int64_t mc_panels = std::max<int64_t>(1, Blk::MC / MR);
  int64_t nc_panels = std::max<int64_t>(1, Blk::NC / NR);
  if (p.batch * ((panels_m + mc_panels - 1) / mc_panels) * ((panels_n + nc_panels - 1) / nc_panels) < 16 * threads) {
    const auto grid = balanced_grid(p.batch, panels_m, panels_n, mc_panels, nc_panels, threads);
    mc_panels = grid.first;
    nc_panels = grid.second;
  }
  const int64_t blocks_m = (panels_m + mc_panels - 1) / mc_panels;
  const int64_t blocks_n = (panels_n + nc_panels - 1) / nc_panels;
  // K in equal slices of at most KC (576 = 3 x 192 rather than 256 + 256 + 64). K == 0: one empty slice,
  // which still writes bias and activation.
  const int64_t k_slices = std::max<int64_t>(1, (K + Blk::KC - 1) / Blk::KC);
  const int64_t KC = std::max<int64_t>(1, (K + k_slices - 1) / k_slices);

  // A is packed once (all of K) and the tasks then only read it; packing costs a pass over A (read and
  // write) that pays when each A panel is used by many tasks. When A is used by at most two (batch 1 with
  // few columns: a 3x3 conv over a 7x7 or 14x14 image, where packing the weights took longer than the
  // products) and its rows are contiguous along k, the micro-kernel reads A in place instead.
  int64_t lda = 0;
  const T* a_rows = p.batch * blocks_n <= 2 ? p.a_rows(&lda) : nullptr;
  if (!a_rows) lda = 0;
  const int64_t a_size = a_rows ? 0 : panels_m * K * MR;
  PackBuffer<T> a_packed(0, std::max<int64_t>(1, p.num_a * a_size));
  if (!a_rows) {
    // Grains keep small problems on the calling thread: waking a second thread costs more than it saves
    // there, and on a busy machine a parallel region waits for its slowest (possibly descheduled) thread.
    const int64_t pack_grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, K * MR));
    at::parallel_for(0, p.num_a * panels_m, pack_grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t a = t / panels_m, pm = t % panels_m;
        const int mr = static_cast<int>(std::min<int64_t>(MR, M - pm * MR));
        p.pack_a(a, pm * MR, mr, a_packed.get() + a * a_size + pm * K * MR, MR);
      }
    });
  }

  const double task_flops =
      2.0 * std::min<int64_t>(M, mc_panels * MR) * std::min<int64_t>(N, nc_panels * NR) * std::max<int64_t>(K, 1);
  const int64_t task_grain = std::max<int64_t>(1, static_cast<int64_t>(4e6 / task_flops));  // worth a thread each
  at::parallel_for(0, p.batch * blocks_m * blocks_n, task_grain, [&](int64_t t0, int64_t t1) {
    PackBuffer<T> b_packed(1, nc_panels * std::min<int64_t>(KC, std::max<int64_t>(K, 1)) * NR);
    for (int64_t t = t0; t < t1; ++t) {
      // Consecutive tasks share the batch entry and the row block (the same A stays in cache).
      const int64_t b = t / (blocks_m * blocks_n);
      const int64_t bm = (t / blocks_n) % blocks_m;
      const int64_t bn = t % blocks_n;
      const int64_t pm0 = bm * mc_panels, pm1 = std::min(panels_m, pm0 + mc_panels);
      const int64_t pn0 = bn * nc_panels, pn1 = std::min(panels_n, pn0 + nc_panels);
      const T* a_base = a_rows ? a_rows + p.a_of(b) * M * lda : a_packed.get() + p.a_of(b) * a_size;
      T* C = p.c(b);
      const T* bias_m = p.bias_m(b);
      const T* bias_n = p.bias_n(b);
      int64_t ldb = 0;
      const T* b_in_place = nullptr;
      if constexpr (requires { p.b_rows(b, &ldb); }) {
        if (uk.run_rows && M <= kBRowsMaxM) b_in_place = p.b_rows(b, &ldb);
      }
      for (int64_t s = 0; s < k_slices; ++s) {
        const int64_t k0 = s * KC, kc = std::min(KC, K - k0);
        const bool last = s + 1 == k_slices;
        // In place, only the last panel is packed, and only when partial.
        const int64_t pack0 = b_in_place ? std::max(pn0, N / NR) : pn0;
        bool packed = pack0 >= pn1;
        if constexpr (requires { p.pack_b_block(b, pn0, pn0, k0, kc, b_packed.get(), NR); }) {
          if (!packed) {
            packed = p.pack_b_block(b, pack0 * NR, std::min(N, pn1 * NR) - pack0 * NR, k0, kc,
                                    b_packed.get() + (pack0 - pn0) * kc * NR, NR);
          }
        }
        for (int64_t pn = pack0; pn < pn1 && !packed; ++pn) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, N - pn * NR));
          p.pack_b(b, pn * NR, nr, k0, kc, b_packed.get() + (pn - pn0) * kc * NR, NR);
        }
        for (int64_t pm = pm0; pm < pm1; ++pm) {
          const int64_t i0 = pm * MR;
          const int mr = static_cast<int>(std::min<int64_t>(MR, M - i0));
          const T* a = a_rows ? a_base + i0 * lda + k0 : a_base + pm * K * MR + k0 * MR;
          for (int64_t pn = pn0; pn < pn1; ++pn) {
            const int64_t j0 = pn * NR;
            const int nr = static_cast<int>(std::min<int64_t>(NR, N - j0));
            T* c = C + i0 * p.ldc + j0;
            const T* bm_tile = last && bias_m ? bias_m + i0 : nullptr;
            const T* bn_tile = last && bias_n ? bias_n + j0 : nullptr;
            if (b_in_place && nr == NR) {
              uk.run_rows(kc, a, lda, b_in_place + k0 * ldb + j0, ldb, c, p.ldc, mr, s > 0, bm_tile, bn_tile,
                          last && p.relu);
            } else {
              const MicroKernelFn<T> run = 2 * nr <= NR ? uk.run_half : uk.run;
              run(kc, a, lda, b_packed.get() + (pn - pn0) * kc * NR, c, p.ldc, mr, nr, s > 0, bm_tile, bn_tile,
                  last && p.relu);
            }
            if (last && p.has_post) p.post(b, i0, j0, mr, nr, c, p.ldc);
          }
        }
      }
    }
  });
}

// The problem for one GEMM of strided matrices (linear_act's, the strided conv's grad_x by col2im): C[M, N] =
// A[M, K] @ B[K, N] with A(i, k) = A[i * a_sm + k * a_sk] and B(k, j) = B[k * b_sk + j * b_sn], views of dense
// buffers that packing reads through their strides (no operand is transposed in memory); C row-major with row
// stride ldc, + bias per column, relu if asked, then post_fn(i0, j0, m, n, tile, ldc) on each finished tile when
// has_post.
template <typename T, typename Post>
struct StridedGemm {
  int64_t batch = 1, M, N, K;
  int64_t num_a = 1;
  const T* A;
  int64_t a_sm, a_sk;
  const T* B;
  int64_t b_sk, b_sn;
  T* C;
  int64_t ldc;
  const T* bias = nullptr;  // per column
  bool relu = false;
  bool has_post = false;
  Post post_fn;

  int64_t a_of(int64_t) const { return 0; }
  void pack_a(int64_t, int64_t i0, int mr, T* dst, int MR) const { pack_a_strided(A, a_sm, a_sk, i0, mr, K, dst, MR); }
  const T* a_rows(int64_t* lda) const {
    if (a_sk != 1 || a_sm <= 0) return nullptr;
    *lda = a_sm;
    return A;
  }
  void pack_b(int64_t, int64_t j0, int nr, int64_t k0, int64_t kc, T* dst, int NR) const {
    pack_b_strided(B, b_sk, b_sn, j0, nr, k0, kc, dst, NR);
  }
  bool pack_b_block(int64_t b, int64_t j0, int64_t n, int64_t k0, int64_t kc, T* dst, int NR) const {
    int64_t ldb;
    const T* rows = b_rows(b, &ldb);
    return rows && pack_b_rows(rows, ldb, j0, n, k0, kc, dst, NR);
  }
  const T* b_rows(int64_t, int64_t* ldb) const {
    if (b_sn != 1) return nullptr;
    *ldb = b_sk;
    return B;
  }
  T* c(int64_t) const { return C; }
  const T* bias_m(int64_t) const { return nullptr; }
  const T* bias_n(int64_t) const { return bias; }
  void post(int64_t, int64_t i0, int64_t j0, int m, int n, T* c, int64_t ldc_) const { post_fn(i0, j0, m, n, c, ldc_); }
};

}  // namespace cpu
}  // namespace dlkernels
