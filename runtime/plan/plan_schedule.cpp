//===- plan_schedule.cpp - a plan's pipeline costs ------------------------===//
#include "runtime/plan/plan_schedule.h"

#include <cstdio>

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

std::string bubble_report(const plan::Plan &plan) {
  const int S = plan.mesh.pp, M = static_cast<int>(plan.micro_batches), v = std::max(1, plan.virtual_stages);
  if (S <= 1 || M <= 0) return "";
  const std::string &sched = plan.pipeline_schedule;
  PipelineCosts c = plan_pipeline_costs(plan, v);
  double f = 0, b = 0, w = 0;
  for (size_t k = 0; k < c.fwd.size(); ++k) f += c.fwd[k], b += c.bwd[k], w += c.wgt[k];
  const double n = static_cast<double>(std::max<size_t>(1, c.fwd.size()));
  f /= n, b /= n, w /= n;
  const double formula = bubble_formula(sched, S, M, v, f, b, w);
  std::string text;
  if (sched == "zb-h1") {
    char fbw[96];
    std::snprintf(fbw, sizeof fbw, " with F:B:W = 1:%.2f:%.2f", f > 0 ? b / f : 0, f > 0 ? w / f : 0);
    text = "(p-1)(F+B-W)/(m(F+B+W)+(p-1)(F+B-W))" + std::string(fbw);
  } else if (sched == "interleaved") {
    text = "(p-1)/(v*m+p-1)";
  } else {
    text = "(p-1)/(m+p-1)";
  }
  Timeline tl = simulate_pipeline(sched, M, c, v);
  char buf[256];
  std::snprintf(buf, sizeof buf, "pipeline bubble: %s, pp %d x %d micro-batches%s: %s = %.1f%%; simulated %.1f%% (mean over ranks; per rank",
                sched.c_str(), S, M, v > 1 ? (" x " + std::to_string(v) + " chunks").c_str() : "", text.c_str(),
                100.0 * formula, 100.0 * tl.bubble_fraction);
  std::string out = buf;
  for (double x : tl.bubble) {
    std::snprintf(buf, sizeof buf, " %.1f%%", 100.0 * x);
    out += buf;
  }
  out += ")";
  if (sched != "1f1b" && tl.makespan > 0) {
    // The same work under 1F1B (each rank's chunks and its B + W as one backward): the bubble
    // fraction alone hides work a schedule saves or adds (zb-h1 skips unused input gradients).
    PipelineCosts one;
    one.fwd.assign(S, 0.0);
    one.bwd.assign(S, 0.0);
    for (size_t k = 0; k < c.fwd.size(); ++k) {
      one.fwd[k % S] += c.fwd[k];
      one.bwd[k % S] += c.bwd[k] + (k < c.wgt.size() ? c.wgt[k] : 0.0);
    }
    Timeline base = simulate_pipeline("1f1b", M, one, 1);
    if (base.makespan > 0) {
      std::snprintf(buf, sizeof buf, "; step time %.2fx 1f1b's", tl.makespan / base.makespan);
      out += buf;
    }
  }
  return out;
}

} // namespace parallora::rt
