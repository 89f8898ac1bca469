// The emulator's model of the warp-level PTX of the tensor-core kernels (csrc/cuda/ptx.cuh): mma.sync,
// ldmatrix and cp.async, with the counters their tests read (shared-memory wavefronts, global sectors).
//
// The fragment layouts are the PTX ISA's per-lane tables (chapter "Warp Level Matrix Multiply-Accumulate
// Instructions"), with groupID = lane >> 2 and threadID_in_group = lane % 4 (g and t below):
//
//   mma.m16n8k16 .f16/.bf16 (section "Matrix Fragments for mma.m16n8k16 with floating point type")
//     A, four .b32 registers of two elements each (low half first):
//       a0,a1: (g, 2t), (g, 2t+1)       a2,a3: (g+8, 2t), (g+8, 2t+1)
//       a4,a5: (g, 2t+8), (g, 2t+9)     a6,a7: (g+8, 2t+8), (g+8, 2t+9)
//     B (K x N), two registers: b0,b1: (2t, g), (2t+1, g)     b2,b3: (2t+8, g), (2t+9, g)
//   mma.m16n8k8 .tf32 (section "Matrix Fragments for mma.m16n8k8")
//     A, four registers: a0: (g, t)  a1: (g+8, t)  a2: (g, t+4)  a3: (g+8, t+4)
//     B, two registers:  b0: (t, g)  b1: (t+4, g)
//   C and D (.f32) for both: c0: (g, 2t)  c1: (g, 2t+1)  c2: (g+8, 2t)  c3: (g+8, 2t+1)
//
//   ldmatrix .m8n8 .b16 (section "Warp-level matrix load instruction: ldmatrix"): lanes 8i..8i+7 give the
//   addresses of the eight 16-byte rows of matrix i (.x1: i = 0; .x2: i < 2; .x4: i < 4). Register i of lane l
//   holds row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i; with .trans, rows 2(l%4) and 2(l%4)+1 of column
//   l/4 (the transposed matrix).
//
// The products of an mma are exact in float64 and summed there, then rounded once to float32: the hardware's
// own accumulation order and rounding are not modelled. tf32 operands are truncated to their 19 high bits, as
// the tensor cores read a float32 register (kernels round with cvt.rna first, ptx::to_tf32).
#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda_emu/emu_internal.h"

namespace dlkernels {
namespace emu {
namespace {

// Wavefronts one shared-memory access phase takes: the most distinct 4-byte words any of the 32 banks serves.
int wavefronts(const std::vector<std::pair<uintptr_t, int>>& accesses) {
  std::set<uintptr_t> words[32];
  for (const auto& [addr, bytes] : accesses) {
    for (uintptr_t w = addr / 4; w < (addr + bytes + 3) / 4; ++w) words[w % 32].insert(w);
  }
  size_t most = 0;
  for (const auto& s : words) most = std::max(most, s.size());
  return static_cast<int>(most);
}

double element16(uint32_t reg, int half, bool bf16) {
  const uint16_t bits = static_cast<uint16_t>(reg >> (16 * half));
  if (bf16) {
    const uint32_t f = uint32_t(bits) << 16;
    float v;
    std::memcpy(&v, &f, 4);
    return v;
  }
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

double tf32(uint32_t reg) {
  const uint32_t f = reg & 0xFFFFE000u;
  float v;
  std::memcpy(&v, &f, 4);
  return v;
}

float as_float(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

uint32_t as_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits;
}

}  // namespace

std::string resolve_ldmatrix(Worker& w, Fiber* const* lanes) {
  const int num = lanes[0]->io->arg;
  const bool trans = lanes[0]->io->width != 0;
  for (int l = 1; l < 32; ++l) {
    if (lanes[l]->io->arg != num || (lanes[l]->io->width != 0) != trans) {
      return "ldmatrix: the lanes of the warp disagree on .x1/.x2/.x4 or .trans";
    }
  }
  const uint16_t* rows[4][8];
  for (int m = 0; m < num; ++m) {
    std::vector<std::pair<uintptr_t, int>> phase;
    for (int r = 0; r < 8; ++r) {
      const int l = m * 8 + r;
      const void* a = lanes[l]->io->address;
      if (reinterpret_cast<uintptr_t>(a) % 16 != 0) {
        return "ldmatrix: lane " + std::to_string(l) + " gives a row address that is not 16-byte aligned";
      }
      if (!in_dynamic_shared(w, a, 16)) {
        return "ldmatrix: lane " + std::to_string(l) + " gives a row address outside the block's shared memory";
      }
      rows[m][r] = static_cast<const uint16_t*>(a);
      phase.emplace_back(reinterpret_cast<uintptr_t>(a), 16);
    }
    w.counters.ldmatrix_wavefronts += wavefronts(phase);
  }
  w.counters.ldmatrix_ideal_wavefronts += num;
  ++w.counters.ldmatrix;
  for (int l = 0; l < 32; ++l) {
    for (int m = 0; m < num; ++m) {
      uint16_t lo, hi;
      if (!trans) {
        lo = rows[m][l / 4][2 * (l % 4)];
        hi = rows[m][l / 4][2 * (l % 4) + 1];
      } else {
        lo = rows[m][2 * (l % 4)][l / 4];
        hi = rows[m][2 * (l % 4) + 1][l / 4];
      }
      lanes[l]->io->out[m] = uint32_t(lo) | uint32_t(hi) << 16;
    }
  }
  return {};
}

std::string resolve_mma(Worker& w, Fiber* const* lanes) {
  const int kind = lanes[0]->io->arg;  // ptx.cuh's MmaKind: 0 bf16, 1 f16 (m16n8k16), 2 tf32 (m16n8k8)
  for (int l = 1; l < 32; ++l) {
    if (lanes[l]->io->arg != kind) return "mma.sync: the lanes of the warp disagree on the shape or type";
  }
  const int K = kind == 2 ? 8 : 16;
  double A[16][16] = {}, B[16][8] = {}, C[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const uint32_t* in = lanes[l]->io->in;
    if (kind == 2) {
      A[g][t] = tf32(in[0]);
      A[g + 8][t] = tf32(in[1]);
      A[g][t + 4] = tf32(in[2]);
      A[g + 8][t + 4] = tf32(in[3]);
      B[t][g] = tf32(in[4]);
      B[t + 4][g] = tf32(in[5]);
    } else {
      const bool bf16 = kind == 0;
      for (int h = 0; h < 2; ++h) {
        A[g][2 * t + h] = element16(in[0], h, bf16);
        A[g + 8][2 * t + h] = element16(in[1], h, bf16);
        A[g][2 * t + 8 + h] = element16(in[2], h, bf16);
        A[g + 8][2 * t + 8 + h] = element16(in[3], h, bf16);
        B[2 * t + h][g] = element16(in[4], h, bf16);
        B[2 * t + 8 + h][g] = element16(in[5], h, bf16);
      }
    }
    C[g][2 * t] = as_float(in[6]);
    C[g][2 * t + 1] = as_float(in[7]);
    C[g + 8][2 * t] = as_float(in[8]);
    C[g + 8][2 * t + 1] = as_float(in[9]);
  }
  auto d = [&](int r, int c) {
    double acc = C[r][c];
    for (int k = 0; k < K; ++k) acc += A[r][k] * B[k][c];
    return as_bits(static_cast<float>(acc));
  };
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    uint32_t* out = lanes[l]->io->out;
    out[0] = d(g, 2 * t);
    out[1] = d(g, 2 * t + 1);
    out[2] = d(g + 8, 2 * t);
    out[3] = d(g + 8, 2 * t + 1);
  }
  ++w.counters.mma;
  return {};
}

void cp_async(void* shared_dst, const void* global_src, int copy_bytes, int src_bytes, bool cache_global) {
  Fiber& f = current_fiber();
  Worker& w = worker();
  if (copy_bytes != 4 && copy_bytes != 8 && copy_bytes != 16) {
    fail("cp.async: cp-size must be 4, 8 or 16, got " + std::to_string(copy_bytes));
  }
  if (cache_global && copy_bytes != 16) fail("cp.async.cg copies 16 bytes only");
  if (src_bytes < 0 || src_bytes > copy_bytes) {
    fail("cp.async: src-size " + std::to_string(src_bytes) + " outside [0, " + std::to_string(copy_bytes) + "]");
  }
  if (reinterpret_cast<uintptr_t>(shared_dst) % copy_bytes != 0 ||
      (src_bytes > 0 && reinterpret_cast<uintptr_t>(global_src) % copy_bytes != 0)) {
    fail("cp.async: the addresses must be aligned to the " + std::to_string(copy_bytes) + "-byte copy");
  }
  if (!in_dynamic_shared(w, shared_dst, copy_bytes)) {
    fail("cp.async: the destination is outside the block's dynamic shared memory");
  }
  PendingCopy p{static_cast<unsigned char*>(shared_dst), {}, copy_bytes, f.committed_groups};
  if (src_bytes > 0) std::memcpy(p.data, global_src, src_bytes);  // src-size 0 reads nothing
  f.copies.push_back(p);
  const void* site = __builtin_return_address(0);
  w.copy_log.push_back({site, f.copy_sites[site]++, f.warp, f.lane, reinterpret_cast<uintptr_t>(shared_dst),
                        reinterpret_cast<uintptr_t>(global_src), copy_bytes, src_bytes});
}

void cp_async_commit() { ++current_fiber().committed_groups; }

void cp_async_wait(int pending_groups) {
  Fiber& f = current_fiber();
  const int64_t complete_below = f.committed_groups - pending_groups;
  auto landed = std::stable_partition(f.copies.begin(), f.copies.end(),
                                      [&](const PendingCopy& p) { return p.group >= complete_below; });
  for (auto it = landed; it != f.copies.end(); ++it) std::memcpy(it->dst, it->data, it->bytes);
  f.copies.erase(landed, f.copies.end());
}

void count_copies(Worker& w) {
  auto& log = w.copy_log;
  std::sort(log.begin(), log.end(), [](const CopyRecord& a, const CopyRecord& b) {
    return std::tie(a.warp, a.site, a.occurrence, a.lane) < std::tie(b.warp, b.site, b.occurrence, b.lane);
  });
  for (size_t i = 0; i < log.size();) {
    size_t j = i;
    while (j < log.size() && log[j].warp == log[i].warp && log[j].site == log[i].site &&
           log[j].occurrence == log[i].occurrence) {
      ++j;
    }
    // One warp-wide instruction: lanes i..j. Shared stores go in phases of 128 bytes of lanes.
    const int lanes_per_phase = 128 / log[i].bytes;
    std::vector<std::pair<uintptr_t, int>> phases[32];
    std::set<uintptr_t> sectors;
    for (size_t k = i; k < j; ++k) {
      phases[log[k].lane / lanes_per_phase].emplace_back(log[k].dst, log[k].bytes);
      if (log[k].src_bytes > 0) {
        for (uintptr_t s = log[k].src / 32; s <= (log[k].src + log[k].src_bytes - 1) / 32; ++s) sectors.insert(s);
        w.counters.cp_async_global_bytes += log[k].src_bytes;
      }
    }
    for (const auto& p : phases) {
      if (p.empty()) continue;
      w.counters.cp_async_wavefronts += wavefronts(p);
      ++w.counters.cp_async_ideal_wavefronts;
    }
    w.counters.cp_async_global_sectors += sectors.size();
    ++w.counters.cp_async;
    i = j;
  }
}

}  // namespace emu
}  // namespace dlkernels
