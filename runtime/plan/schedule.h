//===- schedule.h - pipeline schedules (GPipe, 1F1B) and their simulation --===//
//
// Shared by the compiler (bubble fraction, slots per stage, the timeline picture) and the
// runtime (the order in which a stage runs its "forward"/"backward" programs). No MLIR.
//
//   gpipe: every forward of the step (micro-batches 0..M-1), then every backward (0..M-1).
//          Stage s keeps M micro-batches in flight.
//   1f1b:  stage s runs w = min(S - s - 1, M) warm-up forwards, then alternates one forward and
//          one backward until the forwards run out, then the remaining backwards (PipeDream-
//          flush / Megatron's non-interleaved schedule). At most w + 1 micro-batches in flight.
// A micro-batch's slot (its arena copy) is mb % slots(stage); with the orders above a slot is
// free again (its backward done) before the forward that reuses it.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <string>
#include <vector>

#include "runtime/base/status.h"

namespace parallora::rt {

enum class Phase { Forward, Backward };

struct PipelineTask {
  Phase phase = Phase::Forward;
  int micro_batch = 0;
  int slot = 0;
};

/// "gpipe" or "1f1b" (else an error naming the value and the two choices).
Status check_schedule_name(const std::string &schedule);

/// Micro-batches in flight on `stage` (= arena slots it needs).
int pipeline_slots(const std::string &schedule, int stages, int stage, int micro_batches);

/// The order stage `stage` runs its tasks in, one optimizer step.
std::vector<PipelineTask> pipeline_tasks(const std::string &schedule, int stages, int stage, int micro_batches);

struct TimelineEntry {
  int stage = 0;
  Phase phase = Phase::Forward;
  int micro_batch = 0;
  double start = 0, end = 0;
};

struct Timeline {
  std::vector<TimelineEntry> entries;  // every task of every stage
  double makespan = 0;                 // time of the whole step
  std::vector<double> busy;            // per stage: time spent computing
  std::vector<double> bubble;          // per stage: idle fraction = 1 - busy / makespan
  double bubble_fraction = 0;          // mean over stages
};

/// Simulates one step: each stage runs its tasks in pipeline_tasks() order; a forward of
/// (s, mb) starts after forward (s-1, mb) ends + p2p, a backward of (s, mb) after backward
/// (s+1, mb) ends + p2p (and, on the last stage, after its own forward). Costs in any unit
/// (seconds or FLOPs); `fwd_cost`/`bwd_cost` have one entry per stage.
Timeline simulate_pipeline(const std::string &schedule, int micro_batches, const std::vector<double> &fwd_cost,
                           const std::vector<double> &bwd_cost, double p2p_cost = 0);

} // namespace parallora::rt
