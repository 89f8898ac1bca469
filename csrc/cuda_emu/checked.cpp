// The checked mode of the emulator: every CPU tensor allocated while it is on gets guard bands before and
// after its bytes, and after each emulated launch the guards of every live tensor are compared, so a kernel
// that writes outside the tensors it was handed is reported with its name (a tensor allocated before the
// checked mode was turned on has no guards). Reads outside a tensor are not
// caught; the guard bytes are 0xA5 (a NaN in no float type) and new tensors start poisoned with 0xFF, so
// reading memory nobody wrote usually shows up as NaN or -1 in the results.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include "cuda_emu/emu_internal.h"

namespace dlkernels {
namespace emu {
namespace {

constexpr size_t kGuard = 64;

struct Allocation {
  unsigned char* base;
  size_t bytes;
};

std::mutex g_mutex;
std::unordered_map<void*, Allocation> g_live;  // by data pointer
bool g_checked = false;
c10::Allocator* g_previous = nullptr;

// The first corrupted guard byte of an allocation, described; the guards are refilled so that one fault is
// reported once.
std::string find_violation(void* data, const Allocation& a) {
  unsigned char* after = a.base + kGuard + a.bytes;
  for (size_t i = 0; i < kGuard; ++i) {
    if (a.base[kGuard - 1 - i] != kGuardByte || after[i] != kGuardByte) {
      std::ostringstream s;
      s << "a write outside a tensor: "
        << (a.base[kGuard - 1 - i] != kGuardByte ? std::to_string(i + 1) + " bytes before the start"
                                                 : "at byte " + std::to_string(a.bytes + i))
        << " of the " << a.bytes << "-byte tensor data at " << data;
      std::memset(a.base, kGuardByte, kGuard);
      std::memset(after, kGuardByte, kGuard);
      return s.str();
    }
  }
  return {};
}

void free_guarded(void* data) {
  const std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_live.find(data);
  if (it == g_live.end()) return;
  std::free(it->second.base);
  g_live.erase(it);
}

class GuardedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    const size_t total = (bytes + 2 * kGuard + 63) / 64 * 64;
    auto* base = static_cast<unsigned char*>(std::aligned_alloc(64, total));
    TORCH_CHECK(base != nullptr, "dlkernels CUDA emulator: out of memory (", bytes, " bytes)");
    std::memset(base, kGuardByte, kGuard);
    std::memset(base + kGuard, kPoisonByte, bytes);
    std::memset(base + kGuard + bytes, kGuardByte, total - kGuard - bytes);
    void* data = base + kGuard;
    {
      const std::lock_guard<std::mutex> lock(g_mutex);
      g_live[data] = {base, bytes};
    }
    return {data, data, &free_guarded, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_guarded; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
};

GuardedAllocator g_allocator;

}  // namespace

void set_checked(bool on) {
  if (on == g_checked) return;
  if (on) {
    g_previous = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&g_allocator, /*priority=*/255);
  } else {
    c10::SetCPUAllocator(g_previous, /*priority=*/255);
  }
  g_checked = on;
}

bool checked() { return g_checked; }

std::string check_guards() {
  const std::lock_guard<std::mutex> lock(g_mutex);
  for (const auto& [data, a] : g_live) {
    std::string v = find_violation(data, a);
    if (!v.empty()) return v;
  }
  return {};
}

}  // namespace emu
}  // namespace dlkernels
