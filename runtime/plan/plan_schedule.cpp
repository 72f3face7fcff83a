//===- plan_schedule.cpp - a plan's pipeline costs ------------------------===//
#include "runtime/plan/plan_schedule.h"

namespace parallora::rt {

double program_flops(const plan::RankPlan &rp, const std::string &name) {
  double f = 0;
  for (const plan::Program &p : rp.programs)
    if (p.name == name)
      for (const plan::Instr &in : p.instrs) f += in.flops;
  return f;
}

PipelineCosts stage_pipeline_costs(const std::vector<const plan::RankPlan *> &stages, int chunks, bool *known) {
  const int S = static_cast<int>(stages.size()), v = std::max(1, chunks);
  PipelineCosts c;
  c.fwd.assign(S * v, 1.0 / v);
  c.bwd.assign(S * v, 2.0 / v);
  c.wgt.assign(S * v, 0.0);
  bool all = true;
  for (int s = 0; s < S; ++s) {
    const plan::RankPlan *rp = stages[s];
    double sum = 0;
    if (rp)
      for (int ch = 0; ch < v; ++ch) {
        const int k = ch * S + s;
        c.fwd[k] = program_flops(*rp, pipeline_program(Phase::Forward, ch));
        c.bwd[k] = program_flops(*rp, pipeline_program(Phase::Backward, ch));
        c.wgt[k] = program_flops(*rp, pipeline_program(Phase::Weight, ch));
        sum += c.fwd[k] + c.bwd[k] + c.wgt[k];
      }
    if (sum > 0) continue;
    // No instruction FLOPs: the rank's totals, spread over its chunks; else 1 : 2.
    const double f = rp ? rp->forward_flops : 0, b = rp ? rp->backward_flops : 0;
    const bool have = f > 0 || b > 0;
    all = all && have;
    for (int ch = 0; ch < v; ++ch) {
      const int k = ch * S + s;
      c.fwd[k] = (have ? f : 1.0) / v;
      c.bwd[k] = (have ? b : 2.0) / v;
      c.wgt[k] = 0;
    }
  }
  if (known) *known = all;
  return c;
}

PipelineCosts plan_pipeline_costs(const plan::Plan &plan, int chunks, bool *known) {
  std::vector<const plan::RankPlan *> stages;
  for (int32_t s = 0; s < plan.mesh.pp; ++s) {
    const int32_t r0 = plan::rank_of(plan.mesh, 0, 0, s);
    stages.push_back(r0 >= 0 && r0 < static_cast<int32_t>(plan.ranks.size()) ? &plan.ranks[r0] : nullptr);
  }
  return stage_pipeline_costs(stages, chunks, known);
}

} // namespace parallora::rt
