// The emulator's own state, shared by its translation units (never included by kernel code).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_emu/emu.h"

namespace dlkernels {
namespace emu {

// A saved execution context: the stack pointer of a suspended fiber or of the scheduler.
struct Context {
  void* sp = nullptr;
};

enum class FiberState : uint8_t { kRunnable, kAtBarrier, kAtWarp, kDone, kFailed };

// A cp.async whose data has not landed yet: it lands when a wait_group covers its group.
struct PendingCopy {
  unsigned char* dst;
  unsigned char data[16];
  int bytes;
  int64_t group;
};

// One thread's cp.async, logged so that the block's end can count bank conflicts and sectors per warp-wide
// instruction (the lanes' calls from the same site, the same time).
struct CopyRecord {
  const void* site;
  uint32_t occurrence;
  int warp;
  int lane;
  uintptr_t dst;
  uintptr_t src;
  int bytes;
  int src_bytes;
};

struct Fiber {
  Context context;
  unsigned char* stack = nullptr;  // mmap'ed, with a guard page below
  uint3 tid{};
  int linear = 0;
  int warp = 0;
  int lane = 0;
  FiberState state = FiberState::kRunnable;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  LaneIO* io = nullptr;
  std::string error;
  std::vector<PendingCopy> copies;
  int64_t committed_groups = 0;
  std::unordered_map<const void*, uint32_t> copy_sites;
};

struct Counters {
  uint64_t launches = 0;
  uint64_t blocks = 0;
  uint64_t barriers = 0;
  uint64_t mma = 0;
  uint64_t ldmatrix = 0;                   // warp-wide instructions
  uint64_t ldmatrix_wavefronts = 0;        // shared-memory wavefronts they took
  uint64_t ldmatrix_ideal_wavefronts = 0;  // the conflict-free count (one per 8x8 matrix)
  uint64_t cp_async = 0;                   // warp-wide instructions
  uint64_t cp_async_wavefronts = 0;        // shared-memory store wavefronts
  uint64_t cp_async_ideal_wavefronts = 0;
  uint64_t cp_async_global_sectors = 0;  // distinct 32-byte global sectors read per instruction, summed
  uint64_t cp_async_global_bytes = 0;    // bytes those instructions asked for (src-size)

  void add(const Counters& o);
};

struct Worker {
  Context scheduler;
  std::vector<std::unique_ptr<Fiber>> fibers;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  const LaunchConfig* config = nullptr;
  int threads = 0;
  std::vector<unsigned char> shared;  // dynamic shared memory between two guard bands
  size_t shared_bytes = 0;
  std::vector<CopyRecord> copy_log;
  Counters counters;
};

constexpr size_t kSharedGuardBytes = 256;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;  // NaN in every float type, -1 in every integer type

Worker& worker();
Fiber& current_fiber();

// The block's dynamic shared memory range, empty when the kernel has none.
inline bool in_dynamic_shared(const Worker& w, const void* p, size_t bytes) {
  if (w.shared_bytes == 0) return true;  // static __shared__ only: not tracked
  const auto* base = w.shared.data() + kSharedGuardBytes;
  const auto* q = static_cast<const unsigned char*>(p);
  return q >= base && q + bytes <= base + w.shared_bytes;
}

// ldmatrix / mma over the 32 lanes of a warp (ptx_emu.cpp). An error message, or empty.
std::string resolve_ldmatrix(Worker& w, Fiber* const* lanes);
std::string resolve_mma(Worker& w, Fiber* const* lanes);

// Adds the block's cp.async log to its counters (ptx_emu.cpp).
void count_copies(Worker& w);

// The guarded CPU allocator of the checked mode (checked.cpp).
void set_checked(bool on);
bool checked();
std::string check_guards();  // the first violation since the last call, or empty

// Counters per kernel name.
void merge_counters(const char* kernel, const Counters& c);
std::map<std::string, Counters> counters_snapshot();
void reset_counters();

enum class Schedule : int { kInOrder, kReversed, kRandom };
void set_schedule(Schedule s, uint64_t seed);
Schedule schedule();
uint64_t schedule_seed();

}  // namespace emu
}  // namespace dlkernels
