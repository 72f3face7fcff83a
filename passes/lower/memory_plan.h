//===- memory_plan.h - liveness-based arena offsets (no MLIR) ---------------===//
//
// Every temporary buffer has a size and a live interval [first, last] in instruction
// indices (defined by instruction `first`, last read by instruction `last`). Two buffers may
// share bytes iff their intervals are disjoint. We place buffers greedily, largest first, at
// the lowest offset that does not overlap any already-placed buffer live at the same time
// (the "greedy by size" strategy of TFLite's and ONNX Runtime's planners), which is within a
// few percent of optimal on transformer graphs and deterministic.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <vector>

namespace parallora {

struct LiveInterval {
  int64_t bytes = 0;
  int64_t first = 0;  // defining instruction
  int64_t last = 0;   // last reading instruction (>= first)
};

struct MemoryPlan {
  std::vector<int64_t> offsets;  // one per interval, multiples of `alignment`
  int64_t arena_bytes = 0;       // max(offset + bytes), rounded up to `alignment`
  int64_t peak_live_bytes = 0;   // max over time of the live bytes: a lower bound for arena_bytes
};

MemoryPlan plan_memory(const std::vector<LiveInterval> &buffers, int64_t alignment = 64);

} // namespace parallora
