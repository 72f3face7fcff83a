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

} // namespace parallora::rt
