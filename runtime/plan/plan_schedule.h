//===- plan_schedule.h - a plan's pipeline costs, for the schedule simulator ---===//
//
// The compiler (RankPlan::bubble_fraction) and lora-compile --viz (the predicted timeline)
// simulate a pipelined plan from the same costs: the instruction FLOPs of each stage's
// programs, per task kind (runtime/plan/schedule.h's pipeline_program names).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <vector>

#include "runtime/plan/plan.h"
#include "runtime/plan/schedule.h"

namespace parallora::rt {

/// FLOPs of one run of program `name` of `rp` (0 when absent).
double program_flops(const plan::RankPlan &rp, const std::string &name);

/// One micro-batch's costs per model chunk from one RankPlan per stage (in stage order):
/// forward, backward (its input part B under zb-h1) and weight part W, from each chunk's
/// programs. Stages whose programs carry no FLOPs fall back to forward_flops / backward_flops,
/// then to 1 : 2; `known` (if given) says whether every stage had FLOPs.
PipelineCosts stage_pipeline_costs(const std::vector<const plan::RankPlan *> &stages, int chunks,
                                   bool *known = nullptr);

/// The same for a whole plan, from the first rank (dp 0, tp 0) of each stage.
PipelineCosts plan_pipeline_costs(const plan::Plan &plan, int chunks, bool *known = nullptr);

/// One line comparing the plan's simulated bubble with the textbook formula of its schedule,
/// with F, B, W the means over the model chunks of the per-micro-batch FLOPs, e.g.
/// "pipeline bubble: 1f1b, pp 2 x 8 micro-batches: (p-1)/(m+p-1) = 11.1%; simulated from
/// the plan's FLOPs 14.2% (mean over ranks; per rank 17.0% 11.4%)". "" when pp = 1.
std::string bubble_report(const plan::Plan &plan);

} // namespace parallora::rt
