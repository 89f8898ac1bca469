// The CUDA built-ins for the CPU emulation of csrc/cuda: a test tool that runs the project's own CUDA source
// on the CPU (see csrc/cuda_emu/README.md for what it checks and what it cannot see).
//
// Included through csrc/cuda/runtime.cuh when DLKERNELS_CUDA_EMU is defined; the nvcc build never sees it.
// The kernels stay plain CUDA: __global__/__device__ vanish, __shared__ variables become thread_local (all
// threads of a block run as fibers on one worker thread, so they share them, and concurrent blocks on other
// workers do not), threadIdx & co. read the running fiber's coordinates, and __syncthreads() and the warp
// collectives suspend the fiber until the scheduler (emu.cpp) lets its block or warp go on.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <c10/core/Device.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

// ---------------------------------------------------------------------------------------------------------
// Language extensions

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define __syncthreads() ::dlkernels::emu::syncthreads(__FILE__, __LINE__)
#define threadIdx (::dlkernels::emu::builtins().thread_idx)
#define blockIdx (::dlkernels::emu::builtins().block_idx)
#define blockDim (::dlkernels::emu::builtins().block_dim)
#define gridDim (::dlkernels::emu::builtins().grid_dim)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};

constexpr int warpSize = 32;

namespace dlkernels {
namespace emu {

struct Builtins {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The coordinates of the fiber running on this worker thread (set by the scheduler before each switch).
Builtins& builtins();

void syncthreads(const char* file, int line);

// Stops the calling thread of the kernel with an error (reported, with kernel, block and thread, by the
// launch that runs it); never returns.
[[noreturn]] void fail(const std::string& message);

// ---------------------------------------------------------------------------------------------------------
// Warp collectives. Every lane named in `mask` must reach the same collective with the same mask; the calling
// lane must be in it. A lane that exits, waits at __syncthreads or at another collective instead is an error.

enum class WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp, kLdmatrix, kMma };

// What one lane brings to a collective and takes from it. The inputs stay on the lane's stack while it waits.
struct LaneIO {
  WarpOp op;
  uint32_t mask;
  uint64_t value;       // shuffles: the lane's value; votes: its predicate
  int arg;              // shuffles: source lane, delta or lane mask; ldmatrix: matrices; mma: the shape kind
  int width;            // shuffles: segment width; ldmatrix: 1 for .trans
  const void* address;  // ldmatrix: the row address this lane provides
  uint32_t in[10];      // mma: A (4), B (2), C (4 floats as bits)
  uint32_t out[4];      // ldmatrix / mma results
  uint64_t result;      // shuffles and votes
};

void warp_collective(LaneIO& io);

uint32_t lane_id();
uint32_t active_mask();

// ---------------------------------------------------------------------------------------------------------
// Launch

struct Stream {};  // launches run synchronously, in order

struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t dynamic_shared_bytes;
  const char* kernel;  // name with template arguments
};

// Runs `body` (the kernel with its arguments) once per thread of every block of the grid.
void run_grid(const LaunchConfig& config, const std::function<void()>& body);

// The name of a kernel from its template argument ("linear_act_forward_kernel<float, ...>").
std::string kernel_name_from_signature(const char* pretty_function);

template <auto Kernel>
const char* kernel_name() {
  static const std::string name = kernel_name_from_signature(__PRETTY_FUNCTION__);
  return name.c_str();
}

template <auto Kernel, typename... Params, typename... Args>
void launch_kernel(void (*)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  // The arguments converted once to the kernel's parameter types, as a CUDA launch does; every thread calls
  // the kernel with copies of them.
  const std::tuple<std::decay_t<Params>...> params(static_cast<Params>(std::forward<Args>(args))...);
  run_grid({grid, block, shared_bytes, kernel_name<Kernel>()}, [&params] { std::apply(Kernel, params); });
}

// The block's dynamic shared memory (extern __shared__), poisoned at the start of each block.
void* dynamic_shared_memory();

// ---------------------------------------------------------------------------------------------------------
// The PTX the tensor-core kernels use (csrc/cuda/ptx.cuh calls these in place of its asm).

void cp_async(void* shared_dst, const void* global_src, int copy_bytes, int src_bytes, bool cache_global);
void cp_async_commit();
void cp_async_wait(int pending_groups);

}  // namespace emu
}  // namespace dlkernels

// ---------------------------------------------------------------------------------------------------------
// Warp intrinsics

template <typename T>
T dlk_emu_shuffle(::dlkernels::emu::WarpOp op, unsigned int mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move up to 8 bytes");
  ::dlkernels::emu::LaneIO io{};
  io.op = op;
  io.mask = mask;
  std::memcpy(&io.value, &var, sizeof(T));
  io.arg = arg;
  io.width = width;
  ::dlkernels::emu::warp_collective(io);
  T out;
  std::memcpy(&out, &io.result, sizeof(T));
  return out;
}

template <typename T>
T __shfl_sync(unsigned int mask, T var, int src_lane, int width = warpSize) {
  return dlk_emu_shuffle(::dlkernels::emu::WarpOp::kShflIdx, mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  return dlk_emu_shuffle(::dlkernels::emu::WarpOp::kShflUp, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  return dlk_emu_shuffle(::dlkernels::emu::WarpOp::kShflDown, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = warpSize) {
  return dlk_emu_shuffle(::dlkernels::emu::WarpOp::kShflXor, mask, var, lane_mask, width);
}

inline unsigned int dlk_emu_vote(::dlkernels::emu::WarpOp op, unsigned int mask, int predicate) {
  ::dlkernels::emu::LaneIO io{};
  io.op = op;
  io.mask = mask;
  io.value = predicate != 0;
  ::dlkernels::emu::warp_collective(io);
  return static_cast<unsigned int>(io.result);
}
inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  return dlk_emu_vote(::dlkernels::emu::WarpOp::kBallot, mask, predicate);
}
inline int __any_sync(unsigned int mask, int predicate) {
  return static_cast<int>(dlk_emu_vote(::dlkernels::emu::WarpOp::kAny, mask, predicate));
}
inline int __all_sync(unsigned int mask, int predicate) {
  return static_cast<int>(dlk_emu_vote(::dlkernels::emu::WarpOp::kAll, mask, predicate));
}
inline void __syncwarp(unsigned int mask = 0xffffffffu) { dlk_emu_vote(::dlkernels::emu::WarpOp::kSyncWarp, mask, 1); }
// The lanes of the warp that have not exited (the emulator has no finer notion of divergence).
inline unsigned int __activemask() { return ::dlkernels::emu::active_mask(); }

// ---------------------------------------------------------------------------------------------------------
// Memory: blocks run concurrently on worker threads, so atomics are real atomics.

template <typename T>
T __ldg(const T* p) {
  return *p;
}

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T>
typename std::enable_if<std::is_integral<T>::value, T>::type atomicAdd(T* address, T value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
template <typename T>
typename std::enable_if<std::is_floating_point<T>::value, T>::type atomicAdd(T* address, T value) {
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T desired;
  do {
    desired = old + value;
  } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old < value && !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (value < old && !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  return __atomic_exchange_n(address, value, __ATOMIC_RELAXED);
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}

// ---------------------------------------------------------------------------------------------------------
// Half and bfloat16 (round to nearest even, as the _rn intrinsics), and the bit casts.

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
struct __half2 {
  __half x, y;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline float __low2float(__half2 h) { return static_cast<float>(h.x); }
inline float __high2float(__half2 h) { return static_cast<float>(h.y); }

inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline int __float_as_int(float f) { return static_cast<int>(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned int>(i)); }

// Fast-math intrinsics: the emulator computes them exactly (the hardware's approximations are not modelled).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
