//===- trace.h - lora-run --trace: every rank's timeline in one Chrome trace ===//
//
// At the end of a session every rank's TraceRecorder (runtime/core/trace.h) is merged on rank 0
// into one file in the Chrome trace event format (JSON: {"traceEvents": [...], "otherData":
// {...}}), which ui.perfetto.dev and chrome://tracing open. Everything goes over the
// communicator's control plane (barrier, gather_f64, broadcast_bytes, send_control /
// recv_control), never the data plane:
//   1. clocks: kClockRounds barriers back to back; every rank reads its steady clock as it
//      enters and as it leaves each. No rank leaves a barrier before every rank has entered it,
//      so each round bounds rank r's offset o to rank 0 (r's clock minus 0's) to
//      [enter_r - exit_0, exit_r - enter_0]; the offset is the middle of the rounds'
//      intersection and its error half the intersection's width (a bound, as long as the
//      clocks do not drift apart during the rounds; if the rounds contradict each other, the
//      median of exit_r - exit_0 with half their spread). Both go into otherData.
//   2. each rank's breakdown (TraceBreakdown) is gathered for the summary.
//   3. each rank writes its events as JSON text with its offset applied (one "process" per
//      rank, named "rank 3 (dp 1, tp 1, pp 0)") and sends it to rank 0, which writes the file
//      rank by rank (never more than one rank's text in memory).
// docs/parallel.md "Reading a trace" says how to read the result.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/comm/comm.h"
#include "runtime/core/trace.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

constexpr int kClockRounds = 8;

/// Rank r's clock minus rank 0's (ns), and the estimate's error (ns), for every rank.
struct ClockSync {
  std::vector<int64_t> offset_ns, error_ns;
};
/// From each rank's barrier exits exit_ns[r][k] and barrier durations (enter to exit)
/// barrier_ns[r][k] over the same rounds k (see the file comment); rank 0's offset is 0.
ClockSync estimate_clock_offsets(const std::vector<std::vector<int64_t>> &exit_ns,
                                 const std::vector<std::vector<int64_t>> &barrier_ns);

/// What the end-of-run report and summary.json say about the trace (rank 0's copy).
struct TraceSummary {
  std::string path;
  std::vector<TraceBreakdown> ranks;
  std::vector<std::string> names;  // "rank 3 (dp 1, tp 1, pp 0)"
  ClockSync clock;
  int64_t events = 0, dropped = 0;
  int slowest_rank = 0;        // most compute inside the steps: the rank the others wait for
  int longest_waiting_rank = 0;  // most exposed communication + idle
};
/// Fills slowest_rank / longest_waiting_rank from `ranks`.
void rank_extremes(TraceSummary &summary);
/// The report's lines ("trace: ...", one per rank, the slowest rank and why).
void print_trace_summary(std::ostream &os, const TraceSummary &summary);
/// summary.json's "trace" object, as JSON text.
std::string trace_summary_json(const TraceSummary &summary);

/// Process name of a rank: "rank 3 (dp 1, tp 1, pp 0)".
std::string trace_process_name(const plan::RankPlan &rank);

/// Writes the merged file from already-aligned rank fragments (each a TraceRecorder::append_json
/// text); `other_data` is a JSON object's text. Exposed for tests.
Status write_trace_file(const std::string &path, const std::vector<std::string> &fragments,
                        const std::string &other_data);

/// Collective over the world: aligns the clocks, gathers the breakdowns and the events; rank 0
/// writes `path` and fills `summary` (other ranks leave it alone).
Status write_merged_trace(const std::string &path, const TraceRecorder &recorder, Communicator &comm,
                          const plan::Plan &plan, const std::string &plan_path, TraceSummary *summary);

} // namespace parallora::rt
