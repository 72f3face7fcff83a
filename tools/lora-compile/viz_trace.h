//===- viz_trace.h - the measured timeline of one step in the plan viewer ---===//
//
// Reads a `lora-run --trace` file (the Chrome trace of runtime/train/trace.h) and draws one step
// of it for the plan viewer (index.html of `--viz`), beside the predicted timeline:
//   * one group of lanes per rank (the trace's processes, clocks already aligned to rank 0):
//     programs (forward / backward / micro_step / optimizer_step spans, labelled with the
//     micro-batch), compute kernels, communication (blocked in send / recv / all-reduce) and
//     idle (the gaps the trace derived), and the gradient buckets in flight (when there are
//     any: async slices, begin .. end), on one time axis;
//   * a table per rank: the measured bubble of the drawn step (exposed communication + idle,
//     as a share of the rank's step span), the same over the whole run (the trace's summary,
//     otherData.summary, which lora-run printed), the compiler's predicted bubble of the stage
//     and the textbook formula ((p-1)/(m+p-1) for GPipe and 1F1B).
// An event belongs to a rank's step when it begins inside that rank's `step N` span (the rule
// of the trace's own summary). The drawn step is --viz-step, else the step of median duration
// on rank 0 with the first step excluded (it pays one-time costs), as lora-study draws it.
//
// Elements carry their numbers for tests: <g class="m-rank" data-rank=R>, <rect class="m-ev"
// data-rank=R data-lane=program|compute|comm|idle|bucket>, <tr class="m-row" data-rank=R
// data-step-bubble=... data-run-bubble=...> (full precision, %.17g).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"
#include "runtime/plan/schedule.h"

namespace parallora::viz {

// Bucket: a gradient bucket's all-reduce in flight (the trace's async slices: host start .. wait,
// and on NCCL its device time), drawn only when the step has some; not part of the shares.
enum class Lane : int { Program = 0, Compute = 1, Comm = 2, Idle = 3, Bucket = 4 };

struct MeasuredEvent {
  Lane lane = Lane::Compute;
  double ts = 0, dur = 0;  // microseconds on the trace's aligned clock
  std::string name, program, tip;
  int micro_batch = -1;
  bool backward = false;   // a backward kernel or program (colour)
  bool optimizer = false;  // optimizer_step (colour)
};

struct MeasuredRank {
  int rank = 0;
  std::string name;        // the trace's process name, "rank 1 (dp 0, tp 0, pp 1)"
  double step_ts = 0, step_dur = 0;  // this rank's span of the drawn step
  double compute_us = 0, comm_us = 0, idle_us = 0;  // inside the drawn step (idle = the rest)
  std::vector<MeasuredEvent> events;
  // Over the whole run, from otherData.summary (absent in an old trace).
  bool has_run = false;
  double run_compute = 0, run_hidden = 0, run_exposed = 0, run_idle = 0;
  double step_bubble() const { return step_dur > 0 ? (comm_us + idle_us) / step_dur : 0; }
  double run_bubble() const { return run_exposed + run_idle; }
};

struct MeasuredStep {
  std::string path;
  int64_t step = 0;
  std::vector<int64_t> steps;  // every step in the trace
  double lo = 0, hi = 0;       // the drawn window: the ranks' step spans together
  double clock_error_us = -1;  // otherData.clock_error_us_max (-1: not stated)
  bool has_buckets = false;    // some rank has a Bucket event in the step
  std::vector<MeasuredRank> ranks;
};

/// Reads `path` and picks step `step` (-1: the median step, see above). Errors name the file:
/// unreadable, not JSON, not a lora-run trace, a step that is not in it, or a trace of another
/// mesh than `plan`'s.
Status load_measured_step(const std::string &path, int64_t step, const plan::Plan &plan, MeasuredStep *out);

/// The textbook bubble of `schedule` with p stages and m micro-batches, when there is one
/// ((p-1)/(m+p-1) for gpipe and 1f1b; 0 without a pipeline).
std::optional<double> formula_bubble(const std::string &schedule, int p, int64_t m);

/// The measured step as an SVG picture.
std::string measured_svg(const MeasuredStep &m);

/// The viewer's "Measured timeline" section: the picture and the per-rank table (predicted per
/// stage from `pipe`, null without a pipeline).
std::string measured_html(const plan::Plan &plan, const MeasuredStep &m, const rt::Timeline *pipe);

/// The viewer's script (end of index.html): "index.html#timelines" shows only the title and the
/// timeline sections (scripts/render_viz.sh screenshots that), and <body data-height> receives
/// the laid-out page height (render_viz.sh sizes its window by it).
std::string viewer_script();

} // namespace parallora::viz
