// Output allocation for the CPU kernels; see empty_output in cpu_utils.h.
#include "cpu/cpu_utils.h"

#include <cstdint>

#include <ATen/ops/empty.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dlkernels {
namespace cpu {

namespace {
constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
// Below this a buffer takes few enough faults that the system call costs more than it saves.
constexpr size_t kAdviseMinBytes = size_t(8) << 20;
}  // namespace

void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kAdviseMinBytes) return;
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

}  // namespace cpu

at::Tensor empty_output(c10::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  cpu::advise_huge_pages(t.mutable_data_ptr(), t.nbytes());
  return t;
}

}  // namespace dlkernels
