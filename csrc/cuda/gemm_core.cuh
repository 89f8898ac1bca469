// The tensor-core GEMM core of the CUDA kernels: C[M, N] = A[M, K] . B[K, N] with float32 accumulators, on
// mma.sync m16n8k16 (bfloat16, float16) or m16n8k8 (float32 as TF32). linear_act's forward and both
// backward GEMMs run on it; the conv2d implicit GEMM reuses it.
//
// A CTA computes a BM x BN tile of C with (BM/WM) x (BN/WN) warps, each a WM x WN tile of 16 x 8 mma tiles.
// The reduction runs in k-tiles of 128 bytes per row (BK = 64 16-bit or 32 float elements), staged from
// global to shared memory with 16-byte cp.async in a ring of Stages buffers: while the warps multiply k-tile
// kt, the copies of k-tiles kt+1 .. kt+Stages-1 are in flight. Elements past M, N or K are zero-filled
// (src-size 0), so edges need no special code; rows of an operand must be 16-byte aligned (its contiguous
// extent a multiple of 8 16-bit or 4 float elements): the host code falls back to the CUDA-core kernel
// otherwise.
//
// Each operand is K-major (contiguous along the reduction: A[m][k], B stored as [n][k]) or MN-major
// (contiguous along its output dimension: A stored as [k][m], B as [k][n]). Shared memory keeps the global
// orientation; fragments of a K-major operand come from ldmatrix, of an MN-major one from ldmatrix.trans
// (16-bit) or shared loads (TF32, which ldmatrix cannot transpose), so no operand is ever copied transposed.
//
// Shared memory layout: a tile is rows of whole 128-byte lines (8 chunks of 16 bytes); chunk c of row r is
// stored at chunk c ^ (r % 8). The 8 row addresses of an ldmatrix (8 consecutive rows, one chunk) then fall
// in 8 different 16-byte bank groups, and so do the 8 stores of a quarter-warp's 16-byte cp.async: both
// conflict-free (the emulator's counters check it).
#pragma once

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/activation.h"
#include "cuda/ptx.cuh"
#include "cuda/runtime.cuh"

namespace dlkernels {
namespace cuda {
namespace gemm {

enum class Major { kK, kMN };

template <typename T>
struct Mma;
template <>
struct Mma<c10::BFloat16> {
  static constexpr int kK = 16;
  static constexpr ptx::MmaKind kKind = ptx::MmaKind::kBF16;
};
template <>
struct Mma<c10::Half> {
  static constexpr int kK = 16;
  static constexpr ptx::MmaKind kKind = ptx::MmaKind::kF16;
};
template <>
struct Mma<float> {
  static constexpr int kK = 8;
  static constexpr ptx::MmaKind kKind = ptx::MmaKind::kTF32;
};

template <int BM_, int BN_, int WM_, int WN_, int Stages_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, kStages = Stages_;
  static constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int MI = WM / 16, NI = WN / 8;  // mma tiles per warp
  static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "warp tiles of whole mma pairs");
  static_assert(kStages >= 2, "a pipeline of at least two stages");
};

// One GEMM: A(i, k) = a[i * lda + k] (K-major) or a[k * lda + i] (MN-major), the same for B(k, j) with j in
// place of i. Each blockIdx.z reduces over its own k_per_split (a multiple of BK) of K.
template <typename T>
struct Problem {
  const T* a;
  int64_t lda;
  const T* b;
  int64_t ldb;
  int64_t M, N, K;
  int64_t k_per_split;
};

template <typename T>
struct Smem {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  static constexpr int BK = 128 / static_cast<int>(sizeof(T));   // the k-tile: one 128-byte line per row
  // Element (row, col) of a tile whose rows hold row_elems elements (whole 128-byte lines).
  static __device__ __forceinline__ int offset(int row, int col, int row_elems) {
    return row * row_elems + (((col / kVec) ^ (row & 7)) * kVec) + (col % kVec);
  }
};

__device__ __forceinline__ float as_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename T, class TileT, Major AMajor, Major BMajor>
struct Core {
  using S = Smem<T>;
  static constexpr int kVec = S::kVec, BK = S::BK, kMmaK = Mma<T>::kK;
  static constexpr int BM = TileT::BM, BN = TileT::BN, kThreads = TileT::kThreads;
  static constexpr int MI = TileT::MI, NI = TileT::NI;
  static constexpr bool k16Bit = sizeof(T) == 2;
  static constexpr int kARow = AMajor == Major::kK ? BK : BM;  // elements per row of the A tile
  static constexpr int kBRow = BMajor == Major::kK ? BK : BN;
  static constexpr int kAElems = BM * BK, kBElems = BN * BK;
  static constexpr size_t kPipelineBytes = size_t(TileT::kStages) * (kAElems + kBElems) * sizeof(T);
  static constexpr size_t kEpilogueBytes = size_t(BM) * (BN + kVec) * sizeof(T);
  static constexpr size_t kSmemBytes = kPipelineBytes > kEpilogueBytes ? kPipelineBytes : kEpilogueBytes;
  static_assert(kARow * sizeof(T) % 128 == 0 && kBRow * sizeof(T) % 128 == 0, "tile rows of whole 128-byte lines");
  static_assert((kAElems / kVec) % kThreads == 0 && (kBElems / kVec) % kThreads == 0, "copies split evenly");
  static_assert(NI % 2 == 0, "B fragments are loaded two mma tiles at a time");

  // Starts the copies of k-tile [k0, k0 + BK) of one dense operand (kRowElems elements per tile row, kElems in
  // all) whose output rows (A) or columns (B) o0.. lie in [0, extent): element (o, k) at g[o * ld + k]
  // (K-major) or g[k * ld + o] (MN-major).
  template <Major M, int kRowElems, int kElems>
  static __device__ __forceinline__ void load_dense(T* s, const T* g, int64_t ld, int64_t extent, int64_t o0,
                                                    int64_t k0, int64_t k_end) {
    constexpr int kChunksPerRow = kRowElems / kVec;
#pragma unroll
    for (int i = threadIdx.x; i < kElems / kVec; i += kThreads) {
      const int row = i / kChunksPerRow, col = (i % kChunksPerRow) * kVec;
      const int64_t go = M == Major::kK ? o0 + row : o0 + col;
      const int64_t gk = M == Major::kK ? k0 + col : k0 + row;
      const bool ok = go < extent && gk < k_end;
      const int64_t at = !ok ? 0 : M == Major::kK ? go * ld + gk : gk * ld + go;
      ptx::cp_async<16, true>(s + S::offset(row, col, kRowElems), g + at, ok ? 16 : 0);
    }
  }

  // Starts the copies of k-tile [k0, k0 + BK) of A (rows m0..) and B (columns n0..) into one stage.
  static __device__ __forceinline__ void load(const Problem<T>& p, T* sa, T* sb, int64_t m0, int64_t n0, int64_t k0,
                                              int64_t k_end) {
    load_dense<AMajor, kARow, kAElems>(sa, p.a, p.lda, p.M, m0, k0, k_end);
    load_dense<BMajor, kBRow, kBElems>(sb, p.b, p.ldb, p.N, n0, k0, k_end);
  }

  // One stage of the pipeline from a dense Problem, or from any source with a
  // `template <class Core> load(sa, sb, m0, n0, k0, k_end) const` (the conv2d implicit GEMM's im2col gather,
  // csrc/cuda/conv2d_kernels.cuh), which must leave zeros wherever the operands have no element.
  template <class P>
  static __device__ __forceinline__ void stage(const P& p, T* sa, T* sb, int64_t m0, int64_t n0, int64_t k0,
                                               int64_t k_end) {
    if constexpr (std::is_same_v<P, Problem<T>>) {
      load(p, sa, sb, m0, n0, k0, k_end);
    } else {
      p.template load<Core>(sa, sb, m0, n0, k0, k_end);
    }
  }

  // The A fragment of the 16-row mma tile at m, reduction step kk (layouts: csrc/cuda_emu/ptx_emu.cpp).
  static __device__ __forceinline__ void load_a(const T* sa, int m, int kk, uint32_t (&f)[4]) {
    const int lane = threadIdx.x % 32, q = lane / 8, r = lane % 8;
    if constexpr (AMajor == Major::kK) {
      // Matrices (rows 0-7 | 8-15) x (k first | second half): registers a0..a3 in order.
      ptx::ldmatrix<4, false>(f, sa + S::offset(m + (q & 1) * 8 + r, kk + (q >> 1) * (kMmaK / 2), kARow));
      if constexpr (!k16Bit) {
#pragma unroll
        for (int i = 0; i < 4; ++i) f[i] = ptx::to_tf32(as_float(f[i]));
      }
    } else if constexpr (k16Bit) {
      // Stored [k][m]: the transposed load of (k 0-7 | 8-15) x (m 0-7 | 8-15) gives a0..a3.
      ptx::ldmatrix<4, true>(f, sa + S::offset(kk + (q >> 1) * 8 + r, m + (q & 1) * 8, kARow));
    } else {
      const int g = lane >> 2, t = lane & 3;
      f[0] = ptx::to_tf32(sa[S::offset(kk + t, m + g, kARow)]);
      f[1] = ptx::to_tf32(sa[S::offset(kk + t, m + g + 8, kARow)]);
      f[2] = ptx::to_tf32(sa[S::offset(kk + t + 4, m + g, kARow)]);
      f[3] = ptx::to_tf32(sa[S::offset(kk + t + 4, m + g + 8, kARow)]);
    }
  }

  // The B fragments of the two 8-column mma tiles at n and n + 8.
  static __device__ __forceinline__ void load_b(const T* sb, int n, int kk, uint32_t (&f0)[2], uint32_t (&f1)[2]) {
    const int lane = threadIdx.x % 32, q = lane / 8, r = lane % 8;
    uint32_t x[4];
    if constexpr (BMajor == Major::kK) {
      // Stored [n][k]: matrices (n 0-7 | 8-15) x (k first | second half).
      ptx::ldmatrix<4, false>(x, sb + S::offset(n + (q >> 1) * 8 + r, kk + (q & 1) * (kMmaK / 2), kBRow));
      if constexpr (!k16Bit) {
#pragma unroll
        for (int i = 0; i < 4; ++i) x[i] = ptx::to_tf32(as_float(x[i]));
      }
    } else if constexpr (k16Bit) {
      // Stored [k][n]: the transposed load of (k 0-7 | 8-15) x (n 0-7 | 8-15).
      ptx::ldmatrix<4, true>(x, sb + S::offset(kk + (q & 1) * 8 + r, n + (q >> 1) * 8, kBRow));
    } else {
      const int g = lane >> 2, t = lane & 3;
      x[0] = ptx::to_tf32(sb[S::offset(kk + t, n + g, kBRow)]);
      x[1] = ptx::to_tf32(sb[S::offset(kk + t + 4, n + g, kBRow)]);
      x[2] = ptx::to_tf32(sb[S::offset(kk + t, n + 8 + g, kBRow)]);
      x[3] = ptx::to_tf32(sb[S::offset(kk + t + 4, n + 8 + g, kBRow)]);
    }
    f0[0] = x[0];
    f0[1] = x[1];
    f1[0] = x[2];
    f1[1] = x[3];
  }

  static __device__ __forceinline__ void compute(const T* sa, const T* sb, int wm0, int wn0, float (&acc)[MI][NI][4]) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += kMmaK) {
      uint32_t af[MI][4], bf[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) load_a(sa, wm0 + i * 16, kk, af[i]);
#pragma unroll
      for (int j = 0; j < NI; j += 2) load_b(sb, wn0 + j * 8, kk, bf[j], bf[j + 1]);
#pragma unroll
      for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) ptx::mma<Mma<T>::kKind>(acc[i][j], af[i], bf[j], acc[i][j]);
      }
    }
  }

  // acc (this warp's WM x WN tile) = A[m0.., k_begin:k_end] . B[k_begin:k_end, n0..]. Ends with every copy
  // landed and a barrier, so the caller may reuse shared memory.
  template <class P>
  static __device__ void mainloop(const P& p, T* smem, int64_t m0, int64_t n0, int64_t k_begin, int64_t k_end,
                                  float (&acc)[MI][NI][4]) {
    const int warp = threadIdx.x / 32;
    const int wm0 = (warp / TileT::kWarpsN) * TileT::WM, wn0 = (warp % TileT::kWarpsN) * TileT::WN;
    T* sa = smem;
    T* sb = smem + TileT::kStages * kAElems;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
      for (int j = 0; j < NI; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
    }
    const int64_t tiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
#pragma unroll
    for (int s = 0; s < TileT::kStages - 1; ++s) {
      if (s < tiles) stage(p, sa + s * kAElems, sb + s * kBElems, m0, n0, k_begin + s * BK, k_end);
      ptx::cp_async_commit();
    }
    for (int64_t kt = 0; kt < tiles; ++kt) {
      // k-tile kt has landed (at most Stages-2 younger groups pending), and every warp is done with kt-1,
      // whose buffer the next copies overwrite.
      ptx::cp_async_wait<TileT::kStages - 2>();
      __syncthreads();
      const int64_t next = kt + TileT::kStages - 1;
      if (next < tiles) {
        const int s = static_cast<int>(next % TileT::kStages);
        stage(p, sa + s * kAElems, sb + s * kBElems, m0, n0, k_begin + next * BK, k_end);
      }
      ptx::cp_async_commit();
      const int s = static_cast<int>(kt % TileT::kStages);
      compute(sa + s * kAElems, sb + s * kBElems, wm0, wn0, acc);
    }
    ptx::cp_async_wait<0>();
    __syncthreads();
  }

  // The epilogue's first half: act(acc + bias) as T for the CTA's tile into shared memory, rows of
  // kEpilogueLd elements (one chunk of padding), for the caller to copy out in whatever layout its output has.
  // Columns n0.. of [0, N) take bias[n] (bias may be null). Ends with a barrier.
  static constexpr int kEpilogueLd = BN + kVec;
  template <Activation A>
  static __device__ void stage_tile(const float (&acc)[MI][NI][4], T* smem, int64_t N, int64_t n0, const T* bias,
                                    const ActivationParams& ap) {
    constexpr int ld = kEpilogueLd;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const int wm0 = (warp / TileT::kWarpsN) * TileT::WM, wn0 = (warp % TileT::kWarpsN) * TileT::WN;
#pragma unroll
    for (int j = 0; j < NI; ++j) {
      const int col = wn0 + j * 8 + 2 * t;
      float b[2] = {0.f, 0.f};
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (bias != nullptr && n0 + col + e < N) b[e] = static_cast<float>(bias[n0 + col + e]);
      }
#pragma unroll
      for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = wm0 + i * 16 + g + 8 * h;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            smem[row * ld + col + e] = static_cast<T>(ActivationFn<A>::forward(acc[i][j][2 * h + e] + b[e], ap));
          }
        }
      }
    }
    __syncthreads();
  }

  // The epilogue's second half for a row-major C (row gm at c + gm * ldc): 16-byte vectors along rows when
  // ldc and N keep every row's columns 16-byte aligned (c itself must be).
  static __device__ void store_rows(const T* smem, T* c, int64_t ldc, int64_t M, int64_t N, int64_t m0, int64_t n0) {
    constexpr int ld = kEpilogueLd;
    const bool vectors = N % kVec == 0 && ldc % kVec == 0;
    for (int i = threadIdx.x; i < BM * BN / kVec; i += kThreads) {
      const int row = i / (BN / kVec), col = (i % (BN / kVec)) * kVec;
      const int64_t gm = m0 + row, gn = n0 + col;
      if (gm >= M || gn >= N) continue;
      if (vectors) {
        *reinterpret_cast<uint4*>(c + gm * ldc + gn) = *reinterpret_cast<const uint4*>(smem + row * ld + col);
      } else {
        for (int e = 0; e < kVec && gn + e < N; ++e) c[gm * ldc + gn + e] = smem[row * ld + col + e];
      }
    }
  }

  // C = act(acc + bias) for the CTA's tile, through shared memory so that the global stores are 16-byte
  // vectors along rows (when N keeps rows 16-byte aligned) and the output is written once.
  template <Activation A>
  static __device__ void store(const float (&acc)[MI][NI][4], T* smem, T* c, int64_t M, int64_t N, int64_t m0,
                               int64_t n0, const T* bias, const ActivationParams& ap) {
    stage_tile<A>(acc, smem, N, n0, bias, ap);
    store_rows(smem, c, N, M, N, m0, n0);
  }

  // The split-K partial sums of the CTA's tile, as float, into partial[M][N] (its blockIdx.z slice).
  static __device__ void store_partial(const float (&acc)[MI][NI][4], float* partial, int64_t M, int64_t N, int64_t m0,
                                       int64_t n0) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const int wm0 = (warp / TileT::kWarpsN) * TileT::WM, wn0 = (warp % TileT::kWarpsN) * TileT::WN;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
      for (int j = 0; j < NI; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t gm = m0 + wm0 + i * 16 + g + 8 * h;
          const int64_t gn = n0 + wn0 + j * 8 + 2 * t;
          if (gm >= M) continue;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (gn + e < N) partial[gm * N + gn + e] = acc[i][j][2 * h + e];
          }
        }
      }
    }
  }
};

// One CTA of a GEMM: C = act(A . B + bias) (Split false), or the float partial sums of its k slice into
// partial + blockIdx.z * M * N (Split true; split_k_reduce_kernel finishes them).
template <typename T, class TileT, Major AMajor, Major BMajor, Activation A, bool Split>
__device__ __forceinline__ void run(const Problem<T>& p, const T* bias, T* c, float* partial,
                                    const ActivationParams& ap) {
  using C = Core<T, TileT, AMajor, BMajor>;
  DLK_DYNAMIC_SHARED(T, smem);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * TileT::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * TileT::BN;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * p.k_per_split;
  const int64_t k_end = k_begin + p.k_per_split < p.K ? k_begin + p.k_per_split : p.K;
  float acc[TileT::MI][TileT::NI][4];
  C::mainloop(p, smem, m0, n0, k_begin, k_end, acc);
  if constexpr (Split) {
    C::store_partial(acc, partial + static_cast<int64_t>(blockIdx.z) * p.M * p.N, p.M, p.N, m0, n0);
  } else {
    C::template store<A>(acc, smem, c, p.M, p.N, m0, n0, bias, ap);
  }
}

// c = act(sum over the splits of partial + bias), the splits summed in order (deterministic).
template <typename T, Activation A>
__global__ void split_k_reduce_kernel(const float* __restrict__ partial, int splits, const T* __restrict__ bias,
                                      T* __restrict__ c, int64_t M, int64_t N, ActivationParams ap) {
  const int64_t total = M * N;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    float v = bias != nullptr ? static_cast<float>(bias[i % N]) : 0.f;
    for (int s = 0; s < splits; ++s) v += partial[s * total + i];
    c[i] = static_cast<T>(ActivationFn<A>::forward(v, ap));
  }
}

}  // namespace gemm
}  // namespace cuda
}  // namespace dlkernels
