//===- prediction_report.cpp - the plan's predictions next to the run's measurements ===//
#include "runtime/train/prediction_report.h"

#include <algorithm>
#include <cstdio>
#include <ostream>

#include "runtime/cpu/kernels.h"

namespace parallora::rt {

int64_t allocated_bytes(const Executor &ex, bool cpu_backend) {
  const int64_t arena_stride = (ex.arena_bytes() + 63) / 64 * 64;  // the executor's alignment
  return ex.slots() * arena_stride + ex.persistent_bytes() + (cpu_backend ? cpu::scratch_bytes() : 0);
}

void report_prediction(const plan::Plan &plan, double measured_step_s, const std::vector<int64_t> &alloc,
                       nlohmann::json &summary, std::ostream &os) {
  auto err = [](double pred, double meas) { return meas > 0 ? 100.0 * (pred - meas) / meas : 0.0; };
  char line[512];
  int64_t max_alloc = 0, max_pred_alloc = 0, max_peak = 0;
  double worst_mem_err = 0;
  for (size_t r = 0; r < alloc.size() && r < plan.ranks.size(); ++r) {
    const plan::RankPlan &rp = plan.ranks[r];
    max_alloc = std::max(max_alloc, alloc[r]);
    max_pred_alloc = std::max(max_pred_alloc, rp.predicted_alloc_bytes);
    max_peak = std::max(max_peak, rp.peak_bytes);
    if (rp.predicted_alloc_bytes > 0)
      worst_mem_err = std::max(worst_mem_err, std::abs(err(double(rp.predicted_alloc_bytes), double(alloc[r]))));
    if (summary.contains("ranks") && r < summary["ranks"].size()) {
      summary["ranks"][r]["alloc_peak_bytes"] = alloc[r];
      summary["ranks"][r]["predicted_alloc_bytes"] = rp.predicted_alloc_bytes;
      summary["ranks"][r]["predicted_step_s"] = rp.predicted_step_s;
    }
  }
  summary["alloc_peak_bytes"] = max_alloc;  // max over ranks
  summary["predicted_alloc_bytes"] = max_pred_alloc;
  summary["predicted_step_s"] = plan.predicted_step_s;
  summary["device_profile"] = plan.device_profile;
  if (plan.predicted_step_s > 0) {
    std::snprintf(line, sizeof line, "prediction (%s): step %.4g ms, measured %.4g ms (median, rank 0): %+.1f%%\n",
                  plan.device_profile.c_str(), 1e3 * plan.predicted_step_s, 1e3 * measured_step_s,
                  err(plan.predicted_step_s, measured_step_s));
    os << line;
  } else {
    os << "prediction: none in the plan (compiled without a device profile)\n";
  }
  if (max_pred_alloc > 0) {
    std::snprintf(line, sizeof line,
                  "memory: predicted %.3f MiB per rank (largest), allocated %.3f MiB (runtime high-water mark, max over ranks); "
                  "worst rank %.2f%% off; the compiler's peak estimate %.3f MiB\n",
                  max_pred_alloc / 1048576.0, max_alloc / 1048576.0, worst_mem_err, max_peak / 1048576.0);
    os << line;
  }
}

} // namespace parallora::rt
