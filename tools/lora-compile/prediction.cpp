//===- prediction.cpp - lora-compile's cost-model hook ----------------------===//
#include "tools/lora-compile/prediction.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <vector>

#include "passes/planner/cost_model.h"

namespace parallora {

std::string devices_dir() { return PARALLORA_DEVICES_DIR; }

Status predict_plan(plan::Plan &p, const std::string &profile, std::string &report, bool breakdown) {
  auto dev = planner::load_device_profile(profile, devices_dir());
  if (!dev) return dev.status();
  planner::PlanCost c = planner::cost_plan(p, *dev);
  planner::store_prediction(p, c, *dev);
  size_t slowest = 0;
  for (size_t i = 0; i < c.ranks.size(); ++i)
    if (c.ranks[i].step_s > c.ranks[slowest].step_s) slowest = i;
  const planner::RankCost &r = c.ranks[slowest];
  double flops = 0;
  for (const plan::RankPlan &q : p.ranks) flops += q.flops_per_step;
  double tokens = static_cast<double>(p.global_batch * p.seq_len);
  int64_t peak = 0;
  for (const plan::RankPlan &q : p.ranks) peak = std::max(peak, q.predicted_alloc_bytes);
  char line[512];
  std::snprintf(line, sizeof line,
                "  predicted step on %s: %.4g ms, %.0f tokens/s, MFU %.1f%% (slowest rank %zu: compute %.4g ms, "
                "communication %.4g ms exposed + %.4g ms hidden, pipeline idle %.4g ms); allocation %.1f MiB (largest rank)\n",
                dev->name.c_str(), 1e3 * c.step_s, c.step_s > 0 ? tokens / c.step_s : 0.0,
                c.step_s > 0 ? 100.0 * flops / c.step_s / (dev->peak_tflops * 1e12 * p.world_size) : 0.0, slowest,
                1e3 * r.compute_s, 1e3 * r.comm_s, 1e3 * r.comm_hidden_s, 1e3 * r.bubble_s, peak / 1048576.0);
  report = line;
  if (breakdown) {
    std::map<std::string, double> ops = planner::op_seconds(p, 0, *dev);
    std::vector<std::pair<std::string, double>> sorted(ops.begin(), ops.end());
    std::sort(sorted.begin(), sorted.end(), [](auto &x, auto &y) { return x.second > y.second || (x.second == y.second && x.first < y.first); });
    double total = 0;
    for (auto &kv : sorted) total += kv.second;
    report += "  predicted kernel time of rank 0 per step (blocking collectives, no overlap):\n";
    for (auto &[op, sec] : sorted) {
      std::snprintf(line, sizeof line, "    %-20s %12.6f s %6.1f%%\n", op.c_str(), sec, total > 0 ? 100.0 * sec / total : 0.0);
      report += line;
    }
  }
  return Status::ok();
}

} // namespace parallora
