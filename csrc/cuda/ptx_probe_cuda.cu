// One-instruction kernels that show what the PTX wrappers of csrc/cuda/ptx.cuh and the warp intrinsics do,
// register by register: the tests (tests/test_ptx.py) check them against the PTX ISA's tables and a float64
// matmul. Built into the emulator (ops dlkernels_cuda_emu_probe::*, CPU tensors), where they check the
// emulator's model, and into the CUDA build (dlkernels_probe::*, CUDA tensors), where the same tests check
// the hardware against the same tables.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/ptx.cuh"
#include "cuda/runtime.cuh"

#ifdef DLKERNELS_CUDA_EMU
#define DLK_PROBE_NAMESPACE dlkernels_cuda_emu_probe
#else
#define DLK_PROBE_NAMESPACE dlkernels_probe
#endif

namespace dlkernels {
namespace cuda {
namespace {

// Lanes 8i..8i+7 point at the rows of matrix i of the tile copied to shared memory; each lane writes its
// registers out.
template <int Num, bool Trans>
__global__ void ldmatrix_probe_kernel(const uint16_t* __restrict__ tile, uint32_t* __restrict__ out) {
  DLK_DYNAMIC_SHARED(uint16_t, smem);
  const int lane = threadIdx.x;
  for (int i = lane; i < Num * 64; i += 32) smem[i] = tile[i];
  __syncthreads();
  const int m = lane / 8;
  const uint16_t* row = smem + (m < Num ? m * 64 + (lane % 8) * 8 : 0);  // lanes past .xNum: ignored
  uint32_t regs[Num];
  ptx::ldmatrix<Num, Trans>(regs, row);
  for (int i = 0; i < Num; ++i) out[lane * Num + i] = regs[i];
}

// Registers in, registers out: the layouts are the test's to check.
template <ptx::MmaKind Kind>
__global__ void mma_probe_kernel(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
                                 const float* __restrict__ c, float* __restrict__ d) {
  const int lane = threadIdx.x;
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i];
  for (int i = 0; i < 2; ++i) rb[i] = b[lane * 2 + i];
  for (int i = 0; i < 4; ++i) rc[i] = c[lane * 4 + i];
  ptx::mma<Kind>(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = rd[i];
}

// Lane l copies bytes [l*Bytes, (l+1)*Bytes) of src (the first src_bytes of them) to the same place in
// shared memory. mode 0: wait for the group, then read shared memory back; mode 1: read it before waiting;
// mode 2: a second group copies the next 32*Bytes bytes, and wait_group 1 returns before it must land.
template <int Bytes, bool CacheGlobal>
__global__ void cp_async_probe_kernel(const unsigned char* __restrict__ src, unsigned char* __restrict__ out,
                                      int src_bytes, int mode) {
  DLK_DYNAMIC_SHARED(unsigned char, smem);
  const int lane = threadIdx.x;
  ptx::cp_async<Bytes, CacheGlobal>(smem + lane * Bytes, src + lane * Bytes, src_bytes);
  ptx::cp_async_commit();
  if (mode == 2) {
    ptx::cp_async<Bytes, CacheGlobal>(smem + (32 + lane) * Bytes, src + (32 + lane) * Bytes, src_bytes);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
  } else if (mode == 0) {
    ptx::cp_async_wait<0>();
  }
  // Each lane reads back only its own copies: another lane's final wait may land its second group any time.
  for (int i = 0; i < Bytes; ++i) {
    out[lane * Bytes + i] = smem[lane * Bytes + i];
    out[(32 + lane) * Bytes + i] = smem[(32 + lane) * Bytes + i];
  }
  ptx::cp_async_wait<0>();
}

// The lanes of `mask` run the collective `op`; the others keep their value.
__global__ void warp_probe_kernel(const int* __restrict__ values, int* __restrict__ out, int op, int arg, int width,
                                  unsigned int mask) {
  const int lane = threadIdx.x;
  const int v = values[lane];
  int r = v;
  if (mask >> lane & 1) {
    switch (op) {
      case 0: r = __shfl_sync(mask, v, arg, width); break;
      case 1: r = __shfl_up_sync(mask, v, arg, width); break;
      case 2: r = __shfl_down_sync(mask, v, arg, width); break;
      case 3: r = __shfl_xor_sync(mask, v, arg, width); break;
      case 4: r = static_cast<int>(__ballot_sync(mask, v)); break;
      case 5: r = __any_sync(mask, v); break;
      case 6: r = __all_sync(mask, v); break;
      default: __syncwarp(mask);
    }
  }
  out[lane] = r;
}

__global__ void to_tf32_probe_kernel(const float* __restrict__ x, uint32_t* __restrict__ out, int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = ptx::to_tf32(x[i]);
}

void check_probe_input(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
  TORCH_CHECK(t.device().type() == kDeviceType && t.scalar_type() == dtype && t.is_contiguous() && t.numel() == numel,
              "ptx probe: '", name, "' must be a contiguous ", c10::toString(dtype), " tensor of ", numel,
              " elements on ", c10::DeviceTypeName(kDeviceType), ", got ", t.scalar_type(), " ", t.sizes(), " on ",
              t.device());
}

at::Tensor ldmatrix_probe(const at::Tensor& tile, int64_t num, bool trans) {
  TORCH_CHECK(num == 1 || num == 2 || num == 4, "ptx probe: 'num' must be 1, 2 or 4, got ", num);
  check_probe_input(tile, at::kShort, num * 64, "tile");
  const DeviceGuard guard(tile.device());
  at::Tensor out = at::empty({32, num}, tile.options().dtype(at::kInt));
  const auto* src = reinterpret_cast<const uint16_t*>(tile.const_data_ptr<int16_t>());
  auto* dst = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>());
  const size_t smem = num * 64 * sizeof(uint16_t);
  const auto stream = current_stream();
#define DLK_LDMATRIX_CASE(N)                                                                                           \
  if (num == N) {                                                                                                      \
    if (trans) {                                                                                                       \
      launch<ldmatrix_probe_kernel<N, true>>(1, 32, smem, stream, src, dst);                                           \
    } else {                                                                                                           \
      launch<ldmatrix_probe_kernel<N, false>>(1, 32, smem, stream, src, dst);                                          \
    }                                                                                                                  \
  }
  DLK_LDMATRIX_CASE(1)
  DLK_LDMATRIX_CASE(2)
  DLK_LDMATRIX_CASE(4)
#undef DLK_LDMATRIX_CASE
  return out;
}

at::Tensor mma_probe(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, c10::string_view kind) {
  check_probe_input(a, at::kInt, 128, "a");
  check_probe_input(b, at::kInt, 64, "b");
  check_probe_input(c, at::kFloat, 128, "c");
  const DeviceGuard guard(a.device());
  at::Tensor d = at::empty({32, 4}, c.options());
  const auto* pa = reinterpret_cast<const uint32_t*>(a.const_data_ptr<int32_t>());
  const auto* pb = reinterpret_cast<const uint32_t*>(b.const_data_ptr<int32_t>());
  const float* pc = c.const_data_ptr<float>();
  float* pd = d.mutable_data_ptr<float>();
  const auto stream = current_stream();
  if (kind == "bf16") {
    launch<mma_probe_kernel<ptx::MmaKind::kBF16>>(1, 32, 0, stream, pa, pb, pc, pd);
  } else if (kind == "f16") {
    launch<mma_probe_kernel<ptx::MmaKind::kF16>>(1, 32, 0, stream, pa, pb, pc, pd);
  } else if (kind == "tf32") {
    launch<mma_probe_kernel<ptx::MmaKind::kTF32>>(1, 32, 0, stream, pa, pb, pc, pd);
  } else {
    TORCH_CHECK(false, "ptx probe: 'kind' must be bf16, f16 or tf32, got ", kind);
  }
  return d;
}

at::Tensor cp_async_probe(const at::Tensor& src, int64_t copy_bytes, int64_t src_bytes, bool cache_global,
                          int64_t mode) {
  TORCH_CHECK(copy_bytes == 4 || copy_bytes == 8 || copy_bytes == 16, "ptx probe: 'copy_bytes' must be 4, 8 or 16");
  TORCH_CHECK(!cache_global || copy_bytes == 16, "ptx probe: cache_global copies 16 bytes");
  TORCH_CHECK(mode >= 0 && mode <= 2, "ptx probe: 'mode' must be 0, 1 or 2");
  check_probe_input(src, at::kByte, 64 * copy_bytes, "src");
  const DeviceGuard guard(src.device());
  at::Tensor out = at::empty({64 * copy_bytes}, src.options());
  const unsigned char* s = src.const_data_ptr<uint8_t>();
  unsigned char* o = out.mutable_data_ptr<uint8_t>();
  const size_t smem = 64 * copy_bytes;
  const int sb = static_cast<int>(src_bytes);
  const int md = static_cast<int>(mode);
  const auto stream = current_stream();
  if (copy_bytes == 4) {
    launch<cp_async_probe_kernel<4, false>>(1, 32, smem, stream, s, o, sb, md);
  } else if (copy_bytes == 8) {
    launch<cp_async_probe_kernel<8, false>>(1, 32, smem, stream, s, o, sb, md);
  } else if (cache_global) {
    launch<cp_async_probe_kernel<16, true>>(1, 32, smem, stream, s, o, sb, md);
  } else {
    launch<cp_async_probe_kernel<16, false>>(1, 32, smem, stream, s, o, sb, md);
  }
  return out;
}

at::Tensor warp_probe(const at::Tensor& values, c10::string_view op, int64_t arg, int64_t width, int64_t mask) {
  check_probe_input(values, at::kInt, 32, "values");
  int code = -1;
  const char* names[] = {"shfl", "shfl_up", "shfl_down", "shfl_xor", "ballot", "any", "all", "syncwarp"};
  for (int i = 0; i < 8; ++i) {
    if (op == names[i]) code = i;
  }
  TORCH_CHECK(code >= 0, "ptx probe: unknown warp op ", op);
  const DeviceGuard guard(values.device());
  at::Tensor out = at::empty({32}, values.options());
  launch<warp_probe_kernel>(1, 32, 0, current_stream(), values.const_data_ptr<int>(), out.mutable_data_ptr<int>(), code,
                            static_cast<int>(arg), static_cast<int>(width), static_cast<unsigned int>(mask));
  return out;
}

at::Tensor to_tf32_probe(const at::Tensor& x) {
  check_probe_input(x, at::kFloat, x.numel(), "x");
  const DeviceGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kInt));
  if (x.numel() == 0) return out;
  launch<to_tf32_probe_kernel>(1, 256, 0, current_stream(), x.const_data_ptr<float>(),
                               reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>()), x.numel());
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace dlkernels

TORCH_LIBRARY_FRAGMENT(DLK_PROBE_NAMESPACE, m) {  // a fragment: it expands the macro
  m.def("ldmatrix(Tensor tile, int num, bool trans) -> Tensor");
  m.def("mma(Tensor a, Tensor b, Tensor c, str kind) -> Tensor");
  m.def("cp_async(Tensor src, int copy_bytes, int src_bytes, bool cache_global, int mode) -> Tensor");
  m.def("warp(Tensor values, str op, int arg, int width, int mask) -> Tensor");
  m.def("to_tf32(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(DLK_PROBE_NAMESPACE, DLK_CUDA_DISPATCH_KEY, m) {
  m.impl("ldmatrix", &dlkernels::cuda::ldmatrix_probe);
  m.impl("mma", &dlkernels::cuda::mma_probe);
  m.impl("cp_async", &dlkernels::cuda::cp_async_probe);
  m.impl("warp", &dlkernels::cuda::warp_probe);
  m.impl("to_tf32", &dlkernels::cuda::to_tf32_probe);
}
