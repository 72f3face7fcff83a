//===- schedule.h - pipeline schedules and their simulation ---------------===//
//
// Shared by the compiler (bubble fraction, slots per stage, the timeline picture) and the
// runtime (the order in which a stage runs its "forward"/"backward" programs). No MLIR.
//
//   gpipe: every forward of the step (micro-batches 0..M-1), then every backward (0..M-1).
//          Stage s keeps M micro-batches in flight.
//   1f1b:  stage s runs w = min(S - s - 1, M) warm-up forwards, then alternates one forward and
//          one backward until the forwards run out, then the remaining backwards (PipeDream-
//          flush / Megatron's non-interleaved schedule). At most w + 1 micro-batches in flight.
//   interleaved (Megatron's virtual pipeline, Narayanan et al. 2021): each rank holds v chunks
//          of layers; model chunk k = c * S + s is chunk c of rank s, so a micro-batch visits
//          the ranks v times. Rank s runs the M * v (chunk, micro-batch) forwards in groups of
//          S micro-batches per chunk (chunk 0 of mbs 0..S-1, chunk 1 of the same, ..., then the
//          next S micro-batches), the backwards in the same order with the chunks reversed;
//          w = min((S - s - 1) * 2 + (v - 1) * S, M * v) warm-up forwards (all of them when
//          M == S), then 1F1B. Needs M % S == 0. With v = 1 it is 1f1b.
//   zb-h1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", ZB-H1): the backward split into
//          B (the input gradient the previous stage waits for) and W (the weight gradient; with
//          LoRA only the adapters' dA, dB). 1F1B's order of F and B; stage s runs the W of a
//          micro-batch right after its B except that the first s W's are deferred (each later
//          B is followed by the oldest pending W, the rest close the step), which moves them
//          into the cool-down bubbles. At most S micro-batches in flight on every stage (1F1B's
//          peak, on stage 0); bubble (S-1)(F+B-W) instead of 1F1B's (S-1)(F+B+W).
// A (chunk, micro-batch)'s slot (its arena copy) is taken by its forward and given back after
// its last task (backward, or W under zb-h1); slots(stage) = the most in flight at once.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <string>
#include <vector>

#include "runtime/base/status.h"

namespace parallora::rt {

enum class Phase { Forward, Backward, Weight };

struct PipelineTask {
  Phase phase = Phase::Forward;
  int micro_batch = 0;
  int slot = 0;
  int chunk = 0;  // the rank's chunk (interleaved); model chunk = chunk * stages + stage
};

/// "gpipe", "1f1b", "interleaved" or "zb-h1" (else an error naming the value and the choices).
Status check_schedule_name(const std::string &schedule);

/// The shape constraints of a schedule: chunks (virtual stages per rank) >= 1, > 1 only with
/// interleaved; interleaved needs micro_batches % stages == 0. The error names the values.
Status check_pipeline_shape(const std::string &schedule, int stages, int micro_batches, int chunks);

/// True for schedules that run the weight-gradient part of the backward as its own task (zb-h1).
bool schedule_splits_weight_grad(const std::string &schedule);

/// The program a task runs: "forward", "backward", "backward_weight"; chunk c > 0 of an
/// interleaved plan adds ".c<c>" ("forward.c1").
std::string pipeline_program(Phase phase, int chunk = 0);

/// Micro-batches in flight on `stage` (= arena slots it needs).
int pipeline_slots(const std::string &schedule, int stages, int stage, int micro_batches, int chunks = 1);

/// The order stage `stage` runs its tasks in, one optimizer step (empty for a bad name or shape).
std::vector<PipelineTask> pipeline_tasks(const std::string &schedule, int stages, int stage, int micro_batches,
                                         int chunks = 1);

struct TimelineEntry {
  int stage = 0;
  Phase phase = Phase::Forward;
  int micro_batch = 0;
  double start = 0, end = 0;
  int chunk = 0;
};

struct Timeline {
  std::vector<TimelineEntry> entries;  // every task of every stage
  double makespan = 0;                 // time of the whole step
  std::vector<double> busy;            // per stage: time spent computing
  std::vector<double> bubble;          // per stage: idle fraction = 1 - busy / makespan
  double bubble_fraction = 0;          // mean over stages
};

/// Costs of one micro-batch per model chunk (stages * chunks entries, in model order: entry
/// c * stages + s is chunk c of stage s). `bwd` is the whole backward, or under zb-h1 its input
/// part B with `wgt` the weight part W (empty = 0).
struct PipelineCosts {
  std::vector<double> fwd, bwd, wgt;
  double p2p = 0;
};

/// Simulates one step: each stage runs its tasks in pipeline_tasks() order; a forward of
/// (model chunk k, mb) starts after forward (k-1, mb) ends + p2p, a backward of (k, mb) after
/// backward (k+1, mb) ends + p2p (and its own forward), a W after its own B. Costs in any unit
/// (seconds or FLOPs). Never deadlocks on the orders above (a test checks it); if an order did,
/// the tasks left unplaced are missing from `entries`.
Timeline simulate_pipeline(const std::string &schedule, int micro_batches, const PipelineCosts &costs, int chunks);

/// The one-chunk form: `fwd_cost`/`bwd_cost` have one entry per stage.
Timeline simulate_pipeline(const std::string &schedule, int micro_batches, const std::vector<double> &fwd_cost,
                           const std::vector<double> &bwd_cost, double p2p_cost = 0);

/// The textbook bubble fraction of uniform stages (F, B, W per micro-batch per model chunk;
/// W = 0 folds the weight gradient into B): gpipe / 1f1b (S-1)/(M+S-1), interleaved
/// (S-1)/(v*M+S-1), zb-h1 (S-1)(F+B-W) / (M(F+B+W) + (S-1)(F+B-W)).
double bubble_formula(const std::string &schedule, int stages, int micro_batches, int chunks, double f = 1,
                      double b = 2, double w = 0);

} // namespace parallora::rt
