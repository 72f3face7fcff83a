// The liveness-based arena planner: no two buffers alive at the same time overlap, buffers
// with disjoint lifetimes share bytes, and the arena stays close to the live-bytes lower bound.
#include <random>

#include <gtest/gtest.h>

#include "passes/lower/memory_plan.h"

using namespace parallora;

namespace {

void expect_no_conflicts(const std::vector<LiveInterval> &bufs, const MemoryPlan &plan) {
  for (size_t i = 0; i < bufs.size(); ++i) {
    EXPECT_EQ(plan.offsets[i] % 64, 0) << "buffer " << i << " misaligned";
    EXPECT_LE(plan.offsets[i] + bufs[i].bytes, plan.arena_bytes);
    for (size_t j = i + 1; j < bufs.size(); ++j) {
      bool time_overlap = !(bufs[i].last < bufs[j].first || bufs[j].last < bufs[i].first);
      bool space_overlap = plan.offsets[i] < plan.offsets[j] + bufs[j].bytes && plan.offsets[j] < plan.offsets[i] + bufs[i].bytes;
      EXPECT_FALSE(time_overlap && space_overlap) << "buffers " << i << " and " << j << " overlap";
    }
  }
}

TEST(MemoryPlan, DisjointLifetimesShareBytes) {
  // A chain a -> b -> c: a dies when b is made, so c can reuse a's bytes.
  std::vector<LiveInterval> bufs = {{1024, 0, 1}, {1024, 1, 2}, {1024, 2, 3}};
  MemoryPlan plan = plan_memory(bufs);
  expect_no_conflicts(bufs, plan);
  EXPECT_EQ(plan.arena_bytes, 2048);
  EXPECT_EQ(plan.offsets[0], plan.offsets[2]);
  EXPECT_EQ(plan.peak_live_bytes, 2048);
}

TEST(MemoryPlan, AllAliveNeedsTheSum) {
  std::vector<LiveInterval> bufs = {{100, 0, 5}, {200, 1, 5}, {300, 2, 5}};
  MemoryPlan plan = plan_memory(bufs);
  expect_no_conflicts(bufs, plan);
  EXPECT_EQ(plan.arena_bytes, 128 + 256 + 320);  // each rounded up to 64 bytes
}

TEST(MemoryPlan, RandomGraphsAreValidAndNearTheLowerBound) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<LiveInterval> bufs;
    for (int i = 0; i < 200; ++i) {
      int64_t first = rng() % 400;
      bufs.push_back({int64_t(64 * (1 + rng() % 64)), first, first + int64_t(rng() % 30)});
    }
    MemoryPlan plan = plan_memory(bufs);
    expect_no_conflicts(bufs, plan);
    EXPECT_GE(plan.arena_bytes, plan.peak_live_bytes);
    EXPECT_LE(plan.arena_bytes, plan.peak_live_bytes * 3 / 2) << "trial " << trial;
  }
}

} // namespace
