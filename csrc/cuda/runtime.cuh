// The one place where the two builds of csrc/cuda differ: nvcc builds the kernels for the GPU (dlkernels._C),
// the host compiler builds the same source for the CPU emulator (dlkernels._cuda_emu, DLKERNELS_CUDA_EMU
// defined; a test tool, see csrc/cuda_emu/README.md). The .cu files use only what this header names for
// launching, streams, device guards and op registration:
//
//   launch<kernel<...>>(grid, block, shared_bytes, stream, args...)   a checked kernel launch (any dynamic
//                                                                       shared memory size up to 227 KB)
//   DeviceGuard guard(x.device());  current_stream();  kDeviceType     the glue around it
//   sm_count()                                                          the device's multiprocessors
//   DLK_DYNAMIC_SHARED(type, name)                                      the block's dynamic shared memory
//   TORCH_LIBRARY_IMPL(DLK_CUDA_NAMESPACE, DLK_CUDA_DISPATCH_KEY, m)    the ops' registration
#pragma once

#include <cstddef>
#include <utility>

#include <c10/core/DeviceType.h>

#ifdef DLKERNELS_CUDA_EMU
#include "cuda_emu/emu.h"
#define DLK_CUDA_NAMESPACE dlkernels_cuda_emu
#define DLK_CUDA_DISPATCH_KEY CPU
#define DLK_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::dlkernels::emu::dynamic_shared_memory())
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define DLK_CUDA_NAMESPACE dlkernels
#define DLK_CUDA_DISPATCH_KEY CUDA
#define DLK_DYNAMIC_SHARED(type, name)                                                                                 \
  extern __shared__ __align__(16) unsigned char name##_bytes[];                                                        \
  type* name = reinterpret_cast<type*>(name##_bytes)
#endif

namespace dlkernels {
namespace cuda {

#ifdef DLKERNELS_CUDA_EMU
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CPU;  // the emulated ops take CPU tensors
using DeviceGuard = emu::DeviceGuard;
using Stream = emu::Stream;
inline Stream current_stream() { return {}; }

template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Stream, Args&&... args) {
  emu::launch_kernel<Kernel>(Kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
}

// The emulator plans grids as for an H100 SXM.
inline int sm_count() { return 132; }
#else
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CUDA;
using DeviceGuard = c10::cuda::CUDAGuard;
using Stream = cudaStream_t;
inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Stream stream,
                   Args&&... args) {
  if (shared_bytes > 48 * 1024) {  // more than the default needs the kernel's opt-in
    C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  }
  // clang-format would split the closing chevrons of a launch inside a template.
  // clang-format off
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(std::forward<Args>(args))...);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Streaming multiprocessors of the current device.
inline int sm_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// The kernel is a template argument so that the emulator can name it in its reports.
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Stream stream, Args&&... args) {
  launch_kernel(Kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
}
#endif

}  // namespace cuda
}  // namespace dlkernels
