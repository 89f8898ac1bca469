// Faulty kernels, built into the emulator only: each breaks one rule of CUDA, and tests/test_cuda_emu.py checks
// that the emulator reports it (or, for a missing barrier or wait, that the schedule changes the result).
// On a GPU most of them would hang or race; they are not part of the CUDA build.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "cuda/ptx.cuh"
#include "cuda/runtime.cuh"
#include "cuda_emu/faults.h"

namespace dlkernels {
namespace cuda {
namespace {

// Thread 5 leaves before the barrier the others wait at.
__global__ void exit_before_barrier_kernel(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Even and odd threads wait at two different barriers.
__global__ void divergent_barriers_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Lane 3 leaves; the others shuffle with a full mask.
__global__ void shuffle_missing_lane_kernel(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<float>(threadIdx.x), 0);
}

// A lane calls a shuffle whose mask leaves it out.
__global__ void shuffle_not_in_mask_kernel(float* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<float>(threadIdx.x), 0);
}

// Writes one element past the end of `out` (n elements).
__global__ void write_past_end_kernel(float* out, int64_t n) {
  for (int64_t i = threadIdx.x; i <= n; i += blockDim.x) out[i] = 1.f;
}

// Writes one element past its dynamic shared memory (n floats).
__global__ void shared_past_end_kernel(float* out, int n) {
  DLK_DYNAMIC_SHARED(float, smem);
  for (int i = threadIdx.x; i <= n; i += blockDim.x) smem[i] = 1.f;
  __syncthreads();
  out[threadIdx.x] = smem[threadIdx.x];
}

// Reverses `in` (blockDim.x elements) through shared memory; with_barrier = false drops the barrier between
// the writes and the reads.
template <bool WithBarrier>
__global__ void reverse_kernel(const float* in, float* out) {
  __shared__ float tile[1024];
  const int t = threadIdx.x;
  tile[t] = in[t];
  if (WithBarrier) __syncthreads();
  out[t] = tile[blockDim.x - 1 - t];
}

// Copies `in` (32 x 4 floats) through cp.async; with_wait = false reads shared memory without waiting.
template <bool WithWait>
__global__ void copy_kernel(const float* in, float* out) {
  DLK_DYNAMIC_SHARED(float, smem);
  const int lane = threadIdx.x;
  ptx::cp_async<16>(smem + 4 * lane, in + 4 * lane);
  ptx::cp_async_commit();
  if (WithWait) ptx::cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) out[4 * lane + i] = smem[4 * lane + i];
  ptx::cp_async_wait<0>();
}

// ldmatrix.x4 with its rows 128 bytes apart: all eight rows of a matrix fall in the same four banks, so each
// matrix takes eight wavefronts instead of one (the counters must show it).
__global__ void ldmatrix_conflicts_kernel(float* out) {
  DLK_DYNAMIC_SHARED(uint16_t, smem);  // 32 rows x 64 halves
  const int lane = threadIdx.x;
  for (int i = lane; i < 32 * 64; i += 32) smem[i] = static_cast<uint16_t>(i);
  __syncthreads();
  uint32_t r[4];
  ptx::ldmatrix<4, false>(r, smem + lane * 64);
  out[lane] = static_cast<float>(r[0] & 0xffff);
}

}  // namespace

at::Tensor run_fault(const std::string& name, const at::Tensor& in) {
  at::Tensor out = at::zeros({1024}, at::kFloat);
  float* o = out.mutable_data_ptr<float>();
  const auto s = current_stream();
  if (name == "exit_before_barrier") {
    launch<exit_before_barrier_kernel>(1, 64, 0, s, o);
  } else if (name == "divergent_barriers") {
    launch<divergent_barriers_kernel>(1, 64, 0, s, o);
  } else if (name == "shuffle_missing_lane") {
    launch<shuffle_missing_lane_kernel>(1, 32, 0, s, o);
  } else if (name == "shuffle_not_in_mask") {
    launch<shuffle_not_in_mask_kernel>(1, 32, 0, s, o);
  } else if (name == "write_past_end") {
    at::Tensor small = at::empty({100}, at::kFloat);
    launch<write_past_end_kernel>(1, 32, 0, s, small.mutable_data_ptr<float>(), int64_t(100));
  } else if (name == "shared_past_end") {
    launch<shared_past_end_kernel>(1, 32, 64 * sizeof(float), s, o, 64);
  } else if (name == "reverse" || name == "reverse_without_barrier") {
    const int n = static_cast<int>(in.numel());
    if (name == "reverse") {
      launch<reverse_kernel<true>>(1, n, 0, s, in.const_data_ptr<float>(), o);
    } else {
      launch<reverse_kernel<false>>(1, n, 0, s, in.const_data_ptr<float>(), o);
    }
  } else if (name == "copy" || name == "copy_without_wait") {
    if (name == "copy") {
      launch<copy_kernel<true>>(1, 32, 128 * sizeof(float), s, in.const_data_ptr<float>(), o);
    } else {
      launch<copy_kernel<false>>(1, 32, 128 * sizeof(float), s, in.const_data_ptr<float>(), o);
    }
  } else if (name == "ldmatrix_conflicts") {
    launch<ldmatrix_conflicts_kernel>(1, 32, 32 * 64 * sizeof(uint16_t), s, o);
  } else if (name == "too_many_threads") {
    launch<exit_before_barrier_kernel>(1, 2048, 0, s, o);
  } else {
    TORCH_CHECK(false, "unknown fault ", name);
  }
  return out;
}

}  // namespace cuda
}  // namespace dlkernels
