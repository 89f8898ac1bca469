// Memory for the CPU kernels: outputs on huge pages and per-thread scratch (see memory.h).
#include "cpu/memory.h"

#include <cstdint>
#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>

#include <ATen/EmptyTensor.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dlkernels {
namespace cpu {

namespace {
constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
// Smaller buffers mostly come from malloc's heap, already faulted in and reused from call to call; advising
// them would only split its mappings.
constexpr size_t kAdviseMinBytes = size_t(8) << 20;
}  // namespace

bool huge_pages_enabled() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("DLKERNELS_CPU_HUGE_PAGES");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
#else
  return false;
#endif
}

void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = huge_pages_enabled();
  if (!enabled || bytes < kAdviseMinBytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  // Only whole huge pages inside the buffer, so no other allocation is affected. A kernel without
  // transparent huge pages answers EINVAL, which changes nothing: the advice is best effort.
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

namespace {
constexpr size_t kKeepBytes = size_t(64) << 20;

void* aligned_scratch(size_t bytes) {
  const size_t size = (bytes + 63) / 64 * 64 + 64;  // room for the vector loads that run past the end
  void* p = std::aligned_alloc(64, size);
  TORCH_CHECK(p != nullptr, "dlkernels: out of memory for a scratch buffer of ", bytes, " bytes");
  advise_huge_pages(p, size);
  return p;
}

struct ScratchSlot {
  void* data = nullptr;
  size_t capacity = 0;
  bool in_use = false;
  ~ScratchSlot() { std::free(data); }
};
thread_local ScratchSlot scratch_slots[4];
}  // namespace

Scratch::Scratch(int slot, size_t bytes) : data_(nullptr), slot_(-1) {
  TORCH_INTERNAL_ASSERT(slot >= 0 && slot < 4);
  ScratchSlot& s = scratch_slots[slot];
  if (bytes > kKeepBytes || s.in_use) {
    data_ = aligned_scratch(bytes);
    return;
  }
  if (s.capacity < bytes) {
    std::free(s.data);
    s.data = nullptr;
    s.capacity = 0;
    s.data = aligned_scratch(bytes);
    s.capacity = bytes;
  }
  s.in_use = true;
  data_ = s.data;
  slot_ = slot;
}

Scratch::~Scratch() {
  if (slot_ < 0) {
    std::free(data_);
  } else {
    scratch_slots[slot_].in_use = false;
  }
}

}  // namespace cpu

at::Tensor empty_output(c10::IntArrayRef sizes, const at::TensorOptions& options) {
  // Straight to the CPU allocation rather than at::empty through the dispatcher: a kernel's output is a CPU
  // tensor that it writes in full, and the dispatcher's hop costs a third of a tiny op's allocation.
  at::Tensor t =
      at::detail::empty_cpu(sizes, options.dtype().toScalarType(), /*pin_memory=*/false, options.memory_format_opt());
  cpu::advise_huge_pages(t.mutable_data_ptr(), t.nbytes());
  return t;
}

}  // namespace dlkernels
