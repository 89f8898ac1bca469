// The emulator's scheduler: the threads of a block as fibers on one worker thread, blocks spread over
// ATen's thread pool.
//
// A fiber runs until it reaches __syncthreads(), a warp collective, or its end; then the scheduler runs the
// next one. When no fiber can run, the scheduler completes the warp collectives whose lanes have all arrived,
// or, when every live thread waits at the same barrier, releases the barrier. Anything else (a thread that
// exited or waits elsewhere while others wait) is barrier divergence, reported as an error naming kernel,
// block and threads, never a hang. The order in which fibers run between two synchronisation points is
// chosen by set_schedule (in order, reversed, seeded random), so a missing barrier changes results.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "cuda_emu/emu_internal.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace dlkernels {
namespace emu {

// ---------------------------------------------------------------------------------------------------------
// Context switch. On x86-64 a few instructions that save the callee-saved registers and the FPU control
// words (no system call, unlike swapcontext); elsewhere ucontext.

namespace {

constexpr size_t kStackBytes = 256 * 1024;

#if defined(__x86_64__)
extern "C" void dlk_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl dlk_emu_switch
  .hidden dlk_emu_switch
  .type dlk_emu_switch, @function
dlk_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dlk_emu_switch, .-dlk_emu_switch
)");

void switch_context(Context& from, Context& to) { dlk_emu_switch(&from.sp, to.sp); }

// A new fiber's stack as dlk_emu_switch leaves one: FPU words, six registers, then the entry point as the
// return address, placed so that the entry starts with the stack alignment of a called function.
void init_context(Context& c, unsigned char* stack, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top);
  *--slot = 0;                                  // the entry's own return address: none
  *--slot = reinterpret_cast<uint64_t>(entry);  // popped by ret
  for (int i = 0; i < 6; ++i) *--slot = 0;      // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--slot = (uint64_t(fpucw) << 32) | mxcsr;
  c.sp = slot;
}
#else
// ucontext: the Context holds a pointer to its ucontext_t.
thread_local std::unordered_map<Context*, std::unique_ptr<ucontext_t> > tls_ucontexts;
ucontext_t& ucontext_of(Context& c) {
  auto& u = tls_ucontexts[&c];
  if (!u) u = std::make_unique<ucontext_t>();
  return *u;
}
void switch_context(Context& from, Context& to) { swapcontext(&ucontext_of(from), &ucontext_of(to)); }
void init_context(Context& c, unsigned char* stack, void (*entry)()) {
  ucontext_t& u = ucontext_of(c);
  getcontext(&u);
  u.uc_stack.ss_sp = stack;
  u.uc_stack.ss_size = kStackBytes;
  u.uc_link = nullptr;
  makecontext(&u, entry, 0);
}
#endif

unsigned char* allocate_stack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p =
      mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "dlkernels CUDA emulator: cannot allocate a fiber stack");
  mprotect(p, page, PROT_NONE);  // an overflow faults instead of corrupting the next stack
  return static_cast<unsigned char*>(p) + page;
}

thread_local Worker* tls_worker = nullptr;
thread_local Builtins tls_builtins{};

std::atomic<int> g_schedule{static_cast<int>(Schedule::kInOrder)};
std::atomic<uint64_t> g_seed{0};
std::atomic<uint64_t> g_launches{0};

std::mutex g_counters_mutex;
std::map<std::string, Counters> g_counters;

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kSyncWarp: return "__syncwarp";
    case WarpOp::kLdmatrix: return "ldmatrix";
    case WarpOp::kMma: return "mma.sync";
  }
  return "?";
}

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

std::string coords(const uint3& v) {
  std::ostringstream s;
  s << "(" << v.x << ", " << v.y << ", " << v.z << ")";
  return s.str();
}

[[noreturn]] void fiber_entry() {
  Worker& w = *tls_worker;
  (*w.body)();
  w.current->state = FiberState::kDone;
  switch_context(w.current->context, w.scheduler);
  std::abort();  // a finished fiber is never resumed
}

// Suspends the running fiber (its state already set) until the scheduler resumes it.
void yield_to_scheduler() {
  Worker& w = *tls_worker;
  switch_context(w.current->context, w.scheduler);
}

bool is_shuffle(WarpOp op) {
  return op == WarpOp::kShflIdx || op == WarpOp::kShflUp || op == WarpOp::kShflDown || op == WarpOp::kShflXor;
}

// Shuffles and votes over the lanes of `mask` (all arrived). An error message, or empty.
std::string resolve_simple(Fiber* const* lanes, uint32_t mask, WarpOp op) {
  if (is_shuffle(op)) {
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1)) continue;
      LaneIO& io = *lanes[l]->io;
      const int width = io.width;
      const int seg = (l / width) * width;
      int src = l;
      switch (op) {
        case WarpOp::kShflIdx: src = seg + (io.arg % width + width) % width; break;
        case WarpOp::kShflUp: src = (l - seg) - io.arg < 0 ? l : l - io.arg; break;
        case WarpOp::kShflDown: src = (l - seg) + io.arg >= width ? l : l + io.arg; break;
        default: {  // xor: lanes of later segments give the caller its own value
          const int x = l ^ (io.arg & 31);
          src = x >= seg + width ? l : x;
        }
      }
      if (!(mask >> src & 1)) {
        return std::string(op_name(op)) + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
               ", which is not in the mask " + hex(mask) + " (undefined on the GPU)";
      }
      io.result = lanes[src]->io->value;
    }
    return {};
  }
  uint32_t ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if ((mask >> l & 1) && lanes[l]->io->value) ballot |= 1u << l;
  }
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    LaneIO& io = *lanes[l]->io;
    io.result = op == WarpOp::kBallot ? ballot : op == WarpOp::kAny ? (ballot != 0) : (ballot == mask);
  }
  return {};
}

[[noreturn]] void block_error(const Worker& w, const Fiber* f, const std::string& message) {
  std::ostringstream s;
  s << "dlkernels CUDA emulator: kernel " << w.config->kernel << ", block " << coords(tls_builtins.block_idx);
  if (f != nullptr) s << ", thread " << coords(f->tid) << " (warp " << f->warp << ", lane " << f->lane << ")";
  s << ": " << message;
  TORCH_CHECK(false, s.str());
}

std::string where_is(const Fiber& f) {
  switch (f.state) {
    case FiberState::kDone: return "has exited";
    case FiberState::kAtBarrier:
      return std::string("waits at __syncthreads() at ") + f.barrier_file + ":" + std::to_string(f.barrier_line);
    case FiberState::kAtWarp: return std::string("waits at ") + op_name(f.io->op) + " with mask " + hex(f.io->mask);
    default: return "is running";
  }
}

// Completes every warp collective whose lanes have all arrived; true if any did.
bool resolve_collectives(Worker& w) {
  bool progress = false;
  const int warps = (w.threads + 31) / 32;
  for (int warp = 0; warp < warps; ++warp) {
    Fiber* lanes[32] = {};
    for (int l = 0; l < 32 && warp * 32 + l < w.threads; ++l) lanes[l] = w.fibers[warp * 32 + l].get();
    for (int l = 0; l < 32; ++l) {
      Fiber* f = lanes[l];
      if (f == nullptr || f->state != FiberState::kAtWarp) continue;
      const uint32_t mask = f->io->mask;
      const WarpOp op = f->io->op;
      bool all = true;
      for (int m = 0; m < 32 && all; ++m) {
        if (!(mask >> m & 1)) continue;
        const Fiber* g = lanes[m];
        all = g != nullptr && g->state == FiberState::kAtWarp && g->io->op == op && g->io->mask == mask;
      }
      if (!all) continue;
      std::string error;
      if (op == WarpOp::kLdmatrix) {
        error = resolve_ldmatrix(w, lanes);
      } else if (op == WarpOp::kMma) {
        error = resolve_mma(w, lanes);
      } else {
        error = resolve_simple(lanes, mask, op);
      }
      if (!error.empty()) block_error(w, f, error);
      for (int m = 0; m < 32; ++m) {
        if (mask >> m & 1) lanes[m]->state = FiberState::kRunnable;
      }
      progress = true;
    }
  }
  return progress;
}

// Why the block cannot go on: the first waiting collective with a lane that will never arrive, or the
// threads that keep a barrier from completing.
[[noreturn]] void report_deadlock(Worker& w) {
  for (int i = 0; i < w.threads; ++i) {
    const Fiber& f = *w.fibers[i];
    if (f.state != FiberState::kAtWarp) continue;
    for (int m = 0; m < 32; ++m) {
      if (!(f.io->mask >> m & 1)) continue;
      const int t = f.warp * 32 + m;
      if (t >= w.threads) {
        block_error(w, &f,
                    std::string(op_name(f.io->op)) + " with mask " + hex(f.io->mask) + " names lane " +
                        std::to_string(m) + ", which does not exist (the block has " + std::to_string(w.threads) +
                        " threads)");
      }
      const Fiber& g = *w.fibers[t];
      if (g.state != FiberState::kAtWarp || g.io->op != f.io->op || g.io->mask != f.io->mask) {
        block_error(w, &f,
                    std::string(op_name(f.io->op)) + " with mask " + hex(f.io->mask) + " waits for lane " +
                        std::to_string(m) + ", which " + where_is(g));
      }
    }
  }
  const Fiber* waiting = nullptr;
  for (int i = 0; i < w.threads && waiting == nullptr; ++i) {
    if (w.fibers[i]->state == FiberState::kAtBarrier) waiting = w.fibers[i].get();
  }
  for (int i = 0; i < w.threads; ++i) {
    const Fiber& g = *w.fibers[i];
    if (g.state == FiberState::kDone) {
      block_error(w, waiting,
                  std::string("barrier divergence: this thread ") + where_is(*waiting) + " but thread " +
                      coords(g.tid) + " has exited");
    }
    if (g.state == FiberState::kAtBarrier &&
        (g.barrier_line != waiting->barrier_line || std::string(g.barrier_file) != waiting->barrier_file)) {
      block_error(w, waiting,
                  std::string("barrier divergence: this thread ") + where_is(*waiting) + " but thread " +
                      coords(g.tid) + " " + where_is(g));
    }
  }
  block_error(w, waiting, "the block cannot go on");
}

void make_order(std::vector<int>& order, int threads, uint64_t launch, int64_t block, uint64_t phase) {
  order.resize(threads);
  std::iota(order.begin(), order.end(), 0);
  const auto mode = static_cast<Schedule>(g_schedule.load());
  if (mode == Schedule::kReversed) {
    std::reverse(order.begin(), order.end());
  } else if (mode == Schedule::kRandom) {
    std::seed_seq seq{g_seed.load(), launch, static_cast<uint64_t>(block), phase};
    std::mt19937_64 rng(seq);
    std::shuffle(order.begin(), order.end(), rng);
  }
}

void check_shared_guards(Worker& w) {
  if (w.shared_bytes == 0) return;
  const unsigned char* lo = w.shared.data();
  const unsigned char* hi = lo + kSharedGuardBytes + w.shared_bytes;
  for (size_t i = 0; i < kSharedGuardBytes; ++i) {
    if (lo[i] != kGuardByte) {
      block_error(w, nullptr,
                  "wrote shared memory " + std::to_string(kSharedGuardBytes - i) + " bytes before its " +
                      std::to_string(w.shared_bytes) + "-byte dynamic shared memory");
    }
    if (hi[i] != kGuardByte) {
      block_error(w, nullptr,
                  "wrote shared memory at byte " + std::to_string(w.shared_bytes + i) + " of its " +
                      std::to_string(w.shared_bytes) + "-byte dynamic shared memory");
    }
  }
}

void run_block(Worker& w, int64_t block, uint64_t launch) {
  const LaunchConfig& cfg = *w.config;
  const int threads = w.threads;
  while (static_cast<int>(w.fibers.size()) < threads) {
    auto f = std::make_unique<Fiber>();
    f->stack = allocate_stack();
    w.fibers.push_back(std::move(f));
  }
  const int64_t gx = cfg.grid.x, gy = cfg.grid.y;
  tls_builtins.block_idx = {static_cast<unsigned int>(block % gx), static_cast<unsigned int>((block / gx) % gy),
                            static_cast<unsigned int>(block / (gx * gy))};
  tls_builtins.block_dim = cfg.block;
  tls_builtins.grid_dim = cfg.grid;
  for (int i = 0; i < threads; ++i) {
    Fiber& f = *w.fibers[i];
    f.tid = {static_cast<unsigned int>(i % cfg.block.x), static_cast<unsigned int>((i / cfg.block.x) % cfg.block.y),
             static_cast<unsigned int>(i / (cfg.block.x * cfg.block.y))};
    f.linear = i;
    f.warp = i / 32;
    f.lane = i % 32;
    f.state = FiberState::kRunnable;
    f.io = nullptr;
    f.error.clear();
    f.copies.clear();
    f.committed_groups = 0;
    f.copy_sites.clear();
    init_context(f.context, f.stack, fiber_entry);
  }
  if (w.shared_bytes > 0) {
    w.shared.assign(w.shared_bytes + 2 * kSharedGuardBytes, kPoisonByte);
    std::fill_n(w.shared.begin(), kSharedGuardBytes, kGuardByte);
    std::fill_n(w.shared.end() - kSharedGuardBytes, kSharedGuardBytes, kGuardByte);
  }
  w.copy_log.clear();

  std::vector<int> order;
  uint64_t phase = 0;
  make_order(order, threads, launch, block, phase);
  for (;;) {
    for (int i : order) {
      Fiber& f = *w.fibers[i];
      if (f.state != FiberState::kRunnable) continue;
      w.current = &f;
      tls_builtins.thread_idx = f.tid;
      switch_context(w.scheduler, f.context);
      w.current = nullptr;
      if (f.state == FiberState::kFailed) block_error(w, &f, f.error);
    }
    if (resolve_collectives(w)) continue;
    int done = 0, at_barrier = 0;
    for (int i = 0; i < threads; ++i) {
      const FiberState s = w.fibers[i]->state;
      done += s == FiberState::kDone;
      at_barrier += s == FiberState::kAtBarrier;
    }
    if (done == threads) break;
    if (at_barrier != threads) report_deadlock(w);
    const Fiber& first = *w.fibers[0];
    for (int i = 1; i < threads; ++i) {
      const Fiber& g = *w.fibers[i];
      if (g.barrier_line != first.barrier_line || std::string(g.barrier_file) != first.barrier_file) {
        report_deadlock(w);
      }
    }
    for (int i = 0; i < threads; ++i) w.fibers[i]->state = FiberState::kRunnable;
    ++w.counters.barriers;
    make_order(order, threads, launch, block, ++phase);
  }
  check_shared_guards(w);
  count_copies(w);
  ++w.counters.blocks;
}

Worker& this_worker() {
  if (tls_worker == nullptr) tls_worker = new Worker();  // one per pool thread, for the process's lifetime
  return *tls_worker;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// What kernels call

Builtins& builtins() { return tls_builtins; }

Worker& worker() { return *tls_worker; }

Fiber& current_fiber() {
  TORCH_CHECK(tls_worker != nullptr && tls_worker->current != nullptr,
              "dlkernels CUDA emulator: device code called outside a kernel launch");
  return *tls_worker->current;
}

void syncthreads(const char* file, int line) {
  Fiber& f = current_fiber();
  f.state = FiberState::kAtBarrier;
  f.barrier_file = file;
  f.barrier_line = line;
  yield_to_scheduler();
}

void fail(const std::string& message) {
  Fiber& f = current_fiber();
  f.error = message;
  f.state = FiberState::kFailed;
  yield_to_scheduler();
  std::abort();  // a failed fiber is never resumed
}

void warp_collective(LaneIO& io) {
  Fiber& f = current_fiber();
  if (!(io.mask >> f.lane & 1)) {
    fail(std::string(op_name(io.op)) + " with mask " + hex(io.mask) + " called by lane " + std::to_string(f.lane) +
         ", which is not in the mask");
  }
  if (is_shuffle(io.op) && (io.width < 1 || io.width > 32 || (io.width & (io.width - 1)) != 0)) {
    fail(std::string(op_name(io.op)) + ": width " + std::to_string(io.width) + " is not a power of two in [1, 32]");
  }
  if ((io.op == WarpOp::kLdmatrix || io.op == WarpOp::kMma) && worker().threads < (f.warp + 1) * 32) {
    fail(std::string(op_name(io.op)) + " needs all 32 lanes of the warp; the block has " +
         std::to_string(worker().threads) + " threads");
  }
  f.io = &io;
  f.state = FiberState::kAtWarp;
  yield_to_scheduler();
  f.io = nullptr;
}

uint32_t lane_id() { return static_cast<uint32_t>(current_fiber().lane); }

uint32_t active_mask() {
  const Worker& w = worker();
  const Fiber& f = current_fiber();
  uint32_t mask = 0;
  for (int l = 0; l < 32; ++l) {
    const int t = f.warp * 32 + l;
    if (t < w.threads && w.fibers[t]->state != FiberState::kDone) mask |= 1u << l;
  }
  return mask;
}

void* dynamic_shared_memory() {
  Worker& w = worker();
  return w.shared_bytes == 0 ? nullptr : w.shared.data() + kSharedGuardBytes;
}

std::string kernel_name_from_signature(const char* pretty_function) {
  // GCC: "const char* dlkernels::emu::kernel_name() [with auto Kernel = <kernel>]"
  std::string s(pretty_function);
  const auto start = s.find("Kernel = ");
  std::string name = start == std::string::npos ? s : s.substr(start + 9);
  if (!name.empty() && name.back() == ']') name.pop_back();
  for (const char* prefix : {"dlkernels::cuda::{anonymous}::", "dlkernels::cuda::", "dlkernels::"}) {
    for (size_t p; (p = name.find(prefix)) != std::string::npos;) name.erase(p, std::strlen(prefix));
  }
  return name;
}

void run_grid(const LaunchConfig& config, const std::function<void()>& body) {
  const int64_t threads = int64_t(config.block.x) * config.block.y * config.block.z;
  const int64_t blocks = int64_t(config.grid.x) * config.grid.y * config.grid.z;
  TORCH_CHECK(threads >= 1 && threads <= 1024 && config.block.z <= 64,
              "dlkernels CUDA emulator: invalid configuration argument: kernel ", config.kernel,
              " launched with block (", config.block.x, ", ", config.block.y, ", ", config.block.z, ")");
  TORCH_CHECK(blocks >= 1 && config.grid.x < (1u << 31) && config.grid.y <= 65535 && config.grid.z <= 65535,
              "dlkernels CUDA emulator: invalid configuration argument: kernel ", config.kernel,
              " launched with grid (", config.grid.x, ", ", config.grid.y, ", ", config.grid.z, ")");
  TORCH_CHECK(config.dynamic_shared_bytes <= 227 * 1024, "dlkernels CUDA emulator: kernel ", config.kernel,
              " asks for ", config.dynamic_shared_bytes,
              " bytes of dynamic shared memory; sm_90 has at most 227 KB per block");
  const uint64_t launch = g_launches.fetch_add(1);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    Worker& w = this_worker();
    w.config = &config;
    w.body = &body;
    w.threads = static_cast<int>(threads);
    w.shared_bytes = config.dynamic_shared_bytes;
    w.counters = Counters{};
    for (int64_t b = begin; b < end; ++b) run_block(w, b, launch);
    merge_counters(config.kernel, w.counters);
  });
  Counters one;
  one.launches = 1;
  merge_counters(config.kernel, one);
  if (checked()) {
    const std::string violation = check_guards();
    TORCH_CHECK(violation.empty(), "dlkernels CUDA emulator: after kernel ", config.kernel, ": ", violation);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Settings and counters

void set_schedule(Schedule s, uint64_t seed) {
  g_schedule = static_cast<int>(s);
  g_seed = seed;
}
Schedule schedule() { return static_cast<Schedule>(g_schedule.load()); }
uint64_t schedule_seed() { return g_seed.load(); }

void Counters::add(const Counters& o) {
  launches += o.launches;
  blocks += o.blocks;
  barriers += o.barriers;
  mma += o.mma;
  ldmatrix += o.ldmatrix;
  ldmatrix_wavefronts += o.ldmatrix_wavefronts;
  ldmatrix_ideal_wavefronts += o.ldmatrix_ideal_wavefronts;
  cp_async += o.cp_async;
  cp_async_wavefronts += o.cp_async_wavefronts;
  cp_async_ideal_wavefronts += o.cp_async_ideal_wavefronts;
  cp_async_global_sectors += o.cp_async_global_sectors;
  cp_async_global_bytes += o.cp_async_global_bytes;
}

void merge_counters(const char* kernel, const Counters& c) {
  const std::lock_guard<std::mutex> lock(g_counters_mutex);
  g_counters[kernel].add(c);
}

std::map<std::string, Counters> counters_snapshot() {
  const std::lock_guard<std::mutex> lock(g_counters_mutex);
  return g_counters;
}

void reset_counters() {
  const std::lock_guard<std::mutex> lock(g_counters_mutex);
  g_counters.clear();
}

}  // namespace emu
}  // namespace dlkernels
