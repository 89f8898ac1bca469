// The warp-level PTX of the tensor-core kernels, one wrapper per instruction: the real asm when compiled for
// the GPU (__CUDA_ARCH__), the CPU emulator's model when compiled for it (DLKERNELS_CUDA_EMU; the fragment
// layouts are written out in csrc/cuda_emu/ptx_emu.cpp, from the PTX ISA's tables).
//
//   cp_async<Bytes, CacheGlobal>(smem, gmem, src_bytes)   cp.async.{ca,cg}.shared.global, zero fill past
//                                                         src_bytes (0: reads nothing, writes zeros)
//   cp_async_commit(), cp_async_wait<N>()                 commit_group / wait_group N
//   ldmatrix<Num, Trans>(regs, row_address)               ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].b16
//   mma<MmaKind>(d, a, b, c)                              mma.sync.aligned m16n8k16 (bf16, f16) or
//                                                         m16n8k8 (tf32), row.col, float32 accumulators
//   to_tf32(x)                                            cvt.rna.tf32.f32
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda/runtime.cuh"

namespace dlkernels {
namespace cuda {
namespace ptx {

enum class MmaKind : int { kBF16 = 0, kF16 = 1, kTF32 = 2 };  // the emulator's numbering (ptx_emu.cpp)

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

template <int Bytes, bool CacheGlobal = false>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, int src_bytes = Bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  static_assert(!CacheGlobal || Bytes == 16, "cp.async.cg copies 16 bytes");
#if defined(__CUDA_ARCH__)
  if constexpr (CacheGlobal) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(smem)), "l"(gmem),
                 "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared_address(smem)), "l"(gmem), "n"(Bytes),
                 "r"(src_bytes));
  }
#elif defined(DLKERNELS_CUDA_EMU)
  emu::cp_async(smem, gmem, Bytes, src_bytes, CacheGlobal);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#elif defined(DLKERNELS_CUDA_EMU)
  emu::cp_async_commit();
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif defined(DLKERNELS_CUDA_EMU)
  emu::cp_async_wait(N);
#endif
}

template <int Num, bool Trans>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[Num], const void* row) {
  static_assert(Num == 1 || Num == 2 || Num == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDA_ARCH__)
  const uint32_t a = shared_address(row);
  if constexpr (Num == 1 && !Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  } else if constexpr (Num == 1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  } else if constexpr (Num == 2 && !Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  } else if constexpr (Num == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  } else if constexpr (!Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  }
#elif defined(DLKERNELS_CUDA_EMU)
  emu::LaneIO io{};
  io.op = emu::WarpOp::kLdmatrix;
  io.mask = 0xffffffffu;
  io.arg = Num;
  io.width = Trans ? 1 : 0;
  io.address = row;
  emu::warp_collective(io);
  for (int i = 0; i < Num; ++i) r[i] = io.out[i];
#endif
}

// d = a . b + c for one warp. a: 4 registers, b: 2, c and d: 4 floats (layouts: csrc/cuda_emu/ptx_emu.cpp).
template <MmaKind Kind>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                    const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
  if constexpr (Kind == MmaKind::kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else if constexpr (Kind == MmaKind::kF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#elif defined(DLKERNELS_CUDA_EMU)
  emu::LaneIO io{};
  io.op = emu::WarpOp::kMma;
  io.mask = 0xffffffffu;
  io.arg = static_cast<int>(Kind);
  for (int i = 0; i < 4; ++i) io.in[i] = a[i];
  io.in[4] = b[0];
  io.in[5] = b[1];
  for (int i = 0; i < 4; ++i) std::memcpy(&io.in[6 + i], &c[i], 4);
  emu::warp_collective(io);
  for (int i = 0; i < 4; ++i) std::memcpy(&d[i], &io.out[i], 4);
#endif
}

// float32 to tf32, rounded to nearest (ties away from zero), as a 32-bit register for mma<kTF32>.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits += 0x1000u;  // not inf/NaN: round the 13 dropped bits
  return bits & 0xffffe000u;
#endif
}

}  // namespace ptx
}  // namespace cuda
}  // namespace dlkernels
