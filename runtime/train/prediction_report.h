//===- prediction_report.h - the plan's predictions next to the run's measurements ===//
//
// lora-run ends every run with the cost model's predicted step time (Plan::predicted_step_s,
// written by lora-compile's planner, docs/planner.md) next to the measured median step, and the
// predicted memory next to what the runtime allocated (per rank: the executor's block of arenas
// and persistent buffers + the CPU backend's widening scratch: the allocator's high-water mark,
// not RSS), so every user sees the planner's error on their own machine.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <iosfwd>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/core/executor.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

/// Bytes this rank's runtime holds: the executor's one block + the CPU bf16 scratch high-water mark.
int64_t allocated_bytes(const Executor &ex, bool cpu_backend);

/// Adds predicted vs measured (step time of rank 0's median, memory per rank) to `summary` and
/// prints one line each. `alloc` has one entry per rank.
void report_prediction(const plan::Plan &plan, double measured_step_s, const std::vector<int64_t> &alloc,
                       nlohmann::json &summary, std::ostream &os);

} // namespace parallora::rt
