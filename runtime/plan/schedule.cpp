//===- schedule.cpp - pipeline schedules (GPipe, 1F1B) and their simulation ===//
#include "runtime/plan/schedule.h"

#include <algorithm>

namespace parallora::rt {

Status check_schedule_name(const std::string &schedule) {
  if (schedule == "gpipe" || schedule == "1f1b") return Status::ok();
  return Status::error("unknown pipeline schedule '" + schedule + "' (choose gpipe or 1f1b)");
}

namespace {
// Warm-up forwards of stage `stage` under 1f1b.
int warmup(int stages, int stage, int micro_batches) {
  return std::max(0, std::min(stages - stage - 1, micro_batches));
}
} // namespace

int pipeline_slots(const std::string &schedule, int stages, int stage, int micro_batches) {
  if (micro_batches <= 0) return 1;
  if (schedule == "1f1b") {
    // w warm-up forwards, then one more forward before the first backward: w + 1 in flight
    // (never more than the micro-batches there are).
    return std::max(1, std::min(warmup(stages, stage, micro_batches) + 1, micro_batches));
  }
  return micro_batches;  // gpipe: every forward before any backward
}

std::vector<PipelineTask> pipeline_tasks(const std::string &schedule, int stages, int stage, int micro_batches) {
  std::vector<PipelineTask> tasks;
  if (micro_batches <= 0 || !check_schedule_name(schedule)) return tasks;
  const int slots = pipeline_slots(schedule, stages, stage, micro_batches);
  auto push = [&](Phase phase, int mb) { tasks.push_back(PipelineTask{phase, mb, mb % slots}); };
  tasks.reserve(2 * static_cast<size_t>(micro_batches));
  if (schedule == "gpipe") {
    for (int mb = 0; mb < micro_batches; ++mb) push(Phase::Forward, mb);
    for (int mb = 0; mb < micro_batches; ++mb) push(Phase::Backward, mb);
    return tasks;
  }
  // 1f1b (non-interleaved): warm-up, steady 1F1B, cool-down.
  const int w = warmup(stages, stage, micro_batches);
  int next_fwd = 0, next_bwd = 0;
  for (; next_fwd < w; ++next_fwd) push(Phase::Forward, next_fwd);
  while (next_fwd < micro_batches) {
    push(Phase::Forward, next_fwd++);
    push(Phase::Backward, next_bwd++);
  }
  while (next_bwd < micro_batches) push(Phase::Backward, next_bwd++);
  return tasks;
}

Timeline simulate_pipeline(const std::string &schedule, int micro_batches, const std::vector<double> &fwd_cost,
                           const std::vector<double> &bwd_cost, double p2p_cost) {
  Timeline tl;
  const int S = static_cast<int>(std::min(fwd_cost.size(), bwd_cost.size()));
  tl.busy.assign(S, 0.0);
  tl.bubble.assign(S, 0.0);
  if (S == 0 || micro_batches <= 0) return tl;
  const int M = micro_batches;

  std::vector<std::vector<PipelineTask>> order(S);
  for (int s = 0; s < S; ++s) order[s] = pipeline_tasks(schedule, S, s, M);

  // End times of each (stage, micro-batch) forward/backward; -1 = not yet run (costs are clamped to >= 0).
  const double kUnknown = -1;
  std::vector<std::vector<double>> fwd_end(S, std::vector<double>(M, kUnknown));
  std::vector<std::vector<double>> bwd_end(S, std::vector<double>(M, kUnknown));
  std::vector<size_t> next(S, 0);
  std::vector<double> free_at(S, 0.0);
  std::vector<std::vector<TimelineEntry>> per_stage(S);

  // Each stage runs its tasks in order, each as soon as the stage is free and its cross-stage
  // input has arrived. Sweep the stages until no task can be placed; the start time of a task is
  // fixed by its predecessors alone, so the sweep order does not change the result.
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < S; ++s) {
      while (next[s] < order[s].size()) {
        const PipelineTask &t = order[s][next[s]];
        double ready = free_at[s];
        if (t.phase == Phase::Forward) {
          if (s > 0) {
            if (fwd_end[s - 1][t.micro_batch] < 0) break;
            ready = std::max(ready, fwd_end[s - 1][t.micro_batch] + p2p_cost);
          }
        } else {
          if (s + 1 < S) {
            if (bwd_end[s + 1][t.micro_batch] < 0) break;
            ready = std::max(ready, bwd_end[s + 1][t.micro_batch] + p2p_cost);
          }
          if (fwd_end[s][t.micro_batch] < 0) break;  // own forward (implied by the task order)
          ready = std::max(ready, fwd_end[s][t.micro_batch]);
        }
        const double cost = std::max(0.0, t.phase == Phase::Forward ? fwd_cost[s] : bwd_cost[s]);
        const double end = ready + cost;
        (t.phase == Phase::Forward ? fwd_end : bwd_end)[s][t.micro_batch] = end;
        per_stage[s].push_back(TimelineEntry{s, t.phase, t.micro_batch, ready, end});
        tl.busy[s] += cost;
        free_at[s] = end;
        tl.makespan = std::max(tl.makespan, end);
        ++next[s];
        progress = true;
      }
    }
  }
  for (int s = 0; s < S; ++s) {
    for (const TimelineEntry &e : per_stage[s]) tl.entries.push_back(e);
    tl.bubble[s] = tl.makespan > 0 ? 1.0 - tl.busy[s] / tl.makespan : 0.0;
    tl.bubble_fraction += tl.bubble[s];
  }
  tl.bubble_fraction /= S;
  return tl;
}

} // namespace parallora::rt
