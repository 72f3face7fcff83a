//===- viz.h - pictures of a compiled plan (DOT, SVG, HTML) ----------------===//
//
// Works from plan::Plan alone (no MLIR). write_plan_viz(plan, dir, log) creates `dir` and writes
//   rank<R>.dot     rank R's training programs (micro_step | forward + backward, optimizer_step;
//                   eval_step is skipped) as a dataflow graph: one node per instruction, edges
//                   through buffers (producer -> consumer, labelled with activation shapes),
//                   one cluster per program; collectives (all_reduce/send/recv) highlighted
//   rank<R>.svg     the same rendered with `dot -Tsvg` when Graphviz is on PATH (else a note on
//                   `log` and only the .dot files)
//   timeline.svg    the pipeline schedule (runtime/plan/schedule.h) simulated from the ranks'
//                   forward/backward FLOPs: one row per stage (pp > 1) or per rank (pp == 1),
//                   forward and backward boxes labelled with the micro-batch, the bubble in the title
//   mesh.svg        the dp x tp x pp device mesh with rank numbers
//   index.html      self-contained summary: strategy, mesh, per-rank table (coords, slots,
//                   memory, GFLOP, bytes sent, bubble), the timeline and links to the rank graphs
//   measured.svg    with VizOptions::trace (a lora-run --trace file): one step as measured, also
//                   drawn in index.html beside the predicted timeline with the measured bubble per
//                   rank (viz_trace.h)
//
//===----------------------------------------------------------------------===//
#pragma once

#include <ostream>
#include <string>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora {

struct VizOptions {
  std::string trace;        // a lora-run --trace file of a run of this plan ("" = none)
  int64_t trace_step = -1;  // the step drawn (-1: the median step, the first excluded)
};

/// The trace, when given, is read first: a bad one is an error before anything is written.
Status write_plan_viz(const plan::Plan &plan, const std::string &dir, std::ostream &log, const VizOptions &opt = {});

namespace viz {
/// The pieces write_plan_viz writes, for tests and other tools.
std::string rank_dot(const plan::Plan &plan, const plan::RankPlan &rank);
std::string timeline_svg(const plan::Plan &plan);
std::string mesh_svg(const plan::Plan &plan);
/// Absolute path of `dot` on PATH, or "" when there is none.
std::string find_dot();
/// Text helpers shared by the viewer's parts: printf of one double; &, <, >, ", ' as entities.
std::string fmt(const char *f, double v);
std::string xml_escape(const std::string &s);
} // namespace viz

} // namespace parallora
