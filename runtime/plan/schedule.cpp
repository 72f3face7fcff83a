//===- schedule.cpp - pipeline schedules and their simulation -------------===//
#include "runtime/plan/schedule.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

namespace parallora::rt {

Status check_schedule_name(const std::string &schedule) {
  if (schedule == "gpipe" || schedule == "1f1b" || schedule == "interleaved" || schedule == "zb-h1")
    return Status::ok();
  return Status::error("unknown pipeline schedule '" + schedule + "' (choose gpipe, 1f1b, interleaved or zb-h1)");
}

Status check_pipeline_shape(const std::string &schedule, int stages, int micro_batches, int chunks) {
  if (Status s = check_schedule_name(schedule); !s) return s;
  if (chunks < 1) return Status::error("virtual stages " + std::to_string(chunks) + " must be >= 1");
  if (schedule != "interleaved" && chunks != 1)
    return Status::error("virtual stages " + std::to_string(chunks) + " need the interleaved schedule (not " +
                         schedule + ")");
  if (schedule == "interleaved" && stages > 0 && micro_batches % stages != 0)
    return Status::error("the interleaved schedule runs micro-batches in groups of pp: micro-batches " +
                         std::to_string(micro_batches) + " is not a multiple of pp " + std::to_string(stages));
  return Status::ok();
}

bool schedule_splits_weight_grad(const std::string &schedule) { return schedule == "zb-h1"; }

std::string pipeline_program(Phase phase, int chunk) {
  std::string name = phase == Phase::Forward ? "forward" : phase == Phase::Backward ? "backward" : "backward_weight";
  return chunk > 0 ? name + ".c" + std::to_string(chunk) : name;
}

namespace {

// Warm-up forwards of stage `stage` under 1f1b.
int warmup(int stages, int stage, int micro_batches) {
  return std::max(0, std::min(stages - stage - 1, micro_batches));
}

// The (phase, chunk, micro-batch) order of one stage, slots not yet assigned.
std::vector<PipelineTask> raw_order(const std::string &schedule, int S, int s, int M, int v) {
  std::vector<PipelineTask> t;
  auto push = [&](Phase ph, int mb, int chunk = 0) { t.push_back(PipelineTask{ph, mb, 0, chunk}); };
  if (schedule == "gpipe") {
    for (int mb = 0; mb < M; ++mb) push(Phase::Forward, mb);
    for (int mb = 0; mb < M; ++mb) push(Phase::Backward, mb);
  } else if (schedule == "1f1b" || schedule == "zb-h1" || (schedule == "interleaved" && v == 1)) {
    const bool zb = schedule == "zb-h1";
    const int w = warmup(S, s, M);
    int next_fwd = 0, next_w = 0;
    for (; next_fwd < w; ++next_fwd) push(Phase::Forward, next_fwd);
    for (int k = 0; k < M; ++k) {
      if (next_fwd < M) push(Phase::Forward, next_fwd++);
      push(Phase::Backward, k);
      if (zb && k >= s) push(Phase::Weight, next_w++);  // stage s keeps s W's deferred
    }
    while (zb && next_w < M) push(Phase::Weight, next_w++);
  } else if (schedule == "interleaved") {  // v > 1 (one chunk: 1F1B above)
    // Megatron-LM's forward_backward_pipelining_with_interleaving: virtual micro-batch k.
    const int total = M * v;
    auto mb_of = [&](int k) { return (k / (S * v)) * S + k % S; };
    auto chunk_of = [&](int k, bool fwd) {
      int c = (k % (S * v)) / S;
      return fwd ? c : v - 1 - c;
    };
    int w = M == S ? total : std::min((S - s - 1) * 2 + (v - 1) * S, total);
    for (int k = 0; k < w; ++k) push(Phase::Forward, mb_of(k), chunk_of(k, true));
    for (int k = 0; k < total - w; ++k) {
      push(Phase::Forward, mb_of(w + k), chunk_of(w + k, true));
      push(Phase::Backward, mb_of(k), chunk_of(k, false));
    }
    for (int k = std::max(0, total - w); k < total; ++k) push(Phase::Backward, mb_of(k), chunk_of(k, false));
  }
  return t;
}

// Gives each (chunk, micro-batch) the lowest free slot at its forward, freed after its last task.
int assign_slots(std::vector<PipelineTask> &tasks, bool weight_last) {
  std::set<int> free;
  std::map<std::pair<int, int>, int> held;
  int used = 0;
  for (PipelineTask &t : tasks) {
    auto key = std::make_pair(t.chunk, t.micro_batch);
    if (t.phase == Phase::Forward) {
      int slot;
      if (free.empty()) slot = used++;
      else slot = *free.begin(), free.erase(free.begin());
      held[key] = slot;
      t.slot = slot;
    } else {
      auto it = held.find(key);
      t.slot = it == held.end() ? 0 : it->second;
      if ((t.phase == Phase::Weight) == weight_last && it != held.end()) {
        free.insert(it->second);
        held.erase(it);
      }
    }
  }
  return std::max(used, 1);
}

} // namespace

int pipeline_slots(const std::string &schedule, int stages, int stage, int micro_batches, int chunks) {
  if (micro_batches <= 0) return 1;
  if (schedule == "1f1b") {
    // w warm-up forwards, then one more forward before the first backward: w + 1 in flight
    // (never more than the micro-batches there are).
    return std::max(1, std::min(warmup(stages, stage, micro_batches) + 1, micro_batches));
  }
  if (schedule == "interleaved" || schedule == "zb-h1") {
    if (!check_pipeline_shape(schedule, stages, micro_batches, chunks)) return 1;
    std::vector<PipelineTask> t = raw_order(schedule, stages, stage, micro_batches, chunks);
    return assign_slots(t, schedule_splits_weight_grad(schedule));
  }
  return micro_batches;  // gpipe: every forward before any backward
}

std::vector<PipelineTask> pipeline_tasks(const std::string &schedule, int stages, int stage, int micro_batches,
                                         int chunks) {
  if (micro_batches <= 0 || !check_pipeline_shape(schedule, stages, micro_batches, chunks)) return {};
  std::vector<PipelineTask> tasks = raw_order(schedule, stages, stage, micro_batches, chunks);
  if (schedule == "gpipe" || schedule == "1f1b") {
    // Slots in turn: with these FIFO orders a slot is free again (its backward done) before
    // the forward that reuses it, and mb % slots is what the lowest free slot gives.
    const int slots = pipeline_slots(schedule, stages, stage, micro_batches);
    for (PipelineTask &t : tasks) t.slot = t.micro_batch % slots;
  } else {
    assign_slots(tasks, schedule_splits_weight_grad(schedule));
  }
  return tasks;
}

Timeline simulate_pipeline(const std::string &schedule, int micro_batches, const PipelineCosts &costs, int chunks) {
  Timeline tl;
  const int v = std::max(1, chunks);
  const int K = static_cast<int>(std::min(costs.fwd.size(), costs.bwd.size()));  // model chunks
  const int S = K / v;
  tl.busy.assign(S, 0.0);
  tl.bubble.assign(S, 0.0);
  if (S == 0 || micro_batches <= 0) return tl;
  const int M = micro_batches;
  auto cost = [&](Phase ph, int k) {
    const std::vector<double> &c = ph == Phase::Forward ? costs.fwd : ph == Phase::Backward ? costs.bwd : costs.wgt;
    return k < static_cast<int>(c.size()) ? std::max(0.0, c[k]) : 0.0;
  };

  std::vector<std::vector<PipelineTask>> order(S);
  for (int s = 0; s < S; ++s) order[s] = pipeline_tasks(schedule, S, s, M, v);

  // End times of each (phase, model chunk, micro-batch); -1 = not yet run.
  const double kUnknown = -1;
  std::vector<std::vector<std::vector<double>>> end(
      3, std::vector<std::vector<double>>(K, std::vector<double>(M, kUnknown)));
  auto done = [&](Phase ph, int k, int mb) { return end[static_cast<int>(ph)][k][mb]; };
  std::vector<size_t> next(S, 0);
  std::vector<double> free_at(S, 0.0);
  std::vector<std::vector<TimelineEntry>> per_stage(S);

  // Each stage runs its tasks in order, each as soon as the stage is free and its inputs have
  // arrived. Sweep the stages until no task can be placed; the start time of a task is fixed by
  // its predecessors alone, so the sweep order does not change the result.
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < S; ++s) {
      while (next[s] < order[s].size()) {
        const PipelineTask &t = order[s][next[s]];
        const int k = t.chunk * S + s;
        double ready = free_at[s];
        // A dependency on another model chunk: on another rank it pays p2p (chunk k-1 of an
        // interleaved plan on one stage is the same rank).
        auto after = [&](Phase ph, int dep) {
          double e = done(ph, dep, t.micro_batch);
          if (e < 0) return false;
          ready = std::max(ready, e + (dep % S != s ? costs.p2p : 0.0));
          return true;
        };
        bool ok = true;
        if (t.phase == Phase::Forward) {
          if (k > 0) ok = after(Phase::Forward, k - 1);
        } else if (t.phase == Phase::Backward) {
          if (k + 1 < K) ok = after(Phase::Backward, k + 1);
          ok = ok && after(Phase::Forward, k);  // own forward (implied by the task order)
        } else {
          ok = after(Phase::Backward, k);
        }
        if (!ok) break;
        const double c = cost(t.phase, k);
        end[static_cast<int>(t.phase)][k][t.micro_batch] = ready + c;
        per_stage[s].push_back(TimelineEntry{s, t.phase, t.micro_batch, ready, ready + c, t.chunk});
        tl.busy[s] += c;
        free_at[s] = ready + c;
        tl.makespan = std::max(tl.makespan, ready + c);
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

Timeline simulate_pipeline(const std::string &schedule, int micro_batches, const std::vector<double> &fwd_cost,
                           const std::vector<double> &bwd_cost, double p2p_cost) {
  PipelineCosts c{fwd_cost, bwd_cost, {}, p2p_cost};
  return simulate_pipeline(schedule, micro_batches, c, 1);
}

double bubble_formula(const std::string &schedule, int stages, int micro_batches, int chunks, double f, double b,
                      double w) {
  const double S = stages, M = micro_batches, v = std::max(1, chunks);
  if (stages <= 1 || micro_batches <= 0) return 0;
  if (schedule == "zb-h1") {
    const double idle = (S - 1) * std::max(0.0, f + b - w);
    return idle / (M * (f + b + w) + idle);
  }
  if (schedule == "interleaved") return (S - 1) / (v * M + S - 1);
  return (S - 1) / (M + S - 1);
}

} // namespace parallora::rt
