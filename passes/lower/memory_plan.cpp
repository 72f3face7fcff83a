//===- memory_plan.cpp - greedy-by-size arena placement ---------------------===//
#include "passes/lower/memory_plan.h"

#include <algorithm>
#include <map>
#include <numeric>

namespace parallora {

static int64_t round_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

MemoryPlan plan_memory(const std::vector<LiveInterval> &buffers, int64_t alignment) {
  MemoryPlan plan;
  plan.offsets.assign(buffers.size(), 0);
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  // Largest first; ties by earlier definition, then index, so the result is deterministic.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].bytes != buffers[b].bytes) return buffers[a].bytes > buffers[b].bytes;
    return buffers[a].first < buffers[b].first;
  });
  std::vector<size_t> placed;
  for (size_t i : order) {
    const LiveInterval &cur = buffers[i];
    int64_t size = round_up(std::max<int64_t>(cur.bytes, 1), alignment);
    // Placed buffers alive at the same time, by offset.
    std::vector<std::pair<int64_t, int64_t>> busy;  // [offset, end)
    for (size_t j : placed) {
      const LiveInterval &o = buffers[j];
      if (o.last < cur.first || cur.last < o.first) continue;
      busy.emplace_back(plan.offsets[j], plan.offsets[j] + round_up(std::max<int64_t>(o.bytes, 1), alignment));
    }
    std::sort(busy.begin(), busy.end());
    int64_t offset = 0;
    for (auto &[begin, end] : busy) {
      if (offset + size <= begin) break;  // fits in the gap before this buffer
      offset = std::max(offset, end);
    }
    plan.offsets[i] = offset;
    plan.arena_bytes = std::max(plan.arena_bytes, offset + size);
    placed.push_back(i);
  }
  // Lower bound: live bytes at each instruction.
  std::map<int64_t, int64_t> delta;
  for (const LiveInterval &b : buffers) {
    delta[b.first] += b.bytes;
    delta[b.last + 1] -= b.bytes;
  }
  int64_t live = 0;
  for (auto &[t, d] : delta) {
    live += d;
    plan.peak_live_bytes = std::max(plan.peak_live_bytes, live);
  }
  return plan;
}

} // namespace parallora
