//===- run_summary.cpp - summary.json and the end-of-run report -------------===//
#include "runtime/train/run_summary.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "runtime/train/prediction_report.h"

namespace parallora::rt {
namespace {
using json = nlohmann::json;

} // namespace

std::string fmt(const char *f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double peak_rss_mib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

Status write_run_summary(const RunInfo &info, const RunStats &stats, const plan::Plan &plan, const Executor &ex,
                         Communicator &comm) {
  const int R = comm.rank();
  const bool rank0 = R == 0;
  const bool multi = plan.world_size > 1;
  const plan::Mesh &mesh = plan.mesh;
  const plan::RankPlan &rp = plan.ranks[R];
  const double peak_tflops = info.peak_tflops;
  const std::string &fingerprint = info.fingerprint;
  // Per-rank communication report: measured (training steps only) vs predicted, gathered on
  // rank 0 as fixed-size numbers.
  // Row fields 0-8 as before (rank, bytes by all_reduce / send measured and predicted, arena,
  // RSS, steps, persistent bytes); then the time split, MFU inputs, GPU numbers, broadcast bytes.
  enum : int { kCompute = 9, kComm, kStepTime, kStepMedian, kFlops, kGpuPeak, kGpuAlloc, kUtilMean, kUtilSamples,
               kUtilMax, kBcast, kBcastPred, kAlloc, kFields };
  auto per_step = [&](const std::string &kind) -> double {
    auto it = stats.train_bytes.find(kind);
    return stats.steps_run > 0 && it != stats.train_bytes.end() ? static_cast<double>(it->second) / stats.steps_run : 0.0;
  };
  auto predicted = [&](const plan::RankPlan &r, const std::string &kind) -> double {
    auto it = r.bytes_sent.find(kind);
    return it == r.bytes_sent.end() ? 0.0 : static_cast<double>(it->second);
  };
  double mine_row[kFields] = {static_cast<double>(R),
                              per_step("all_reduce"),
                              per_step("send"),
                              predicted(rp, "all_reduce"),
                              predicted(rp, "send"),
                              static_cast<double>(ex.arena_bytes() * ex.slots()),
                              peak_rss_mib(),
                              static_cast<double>(stats.steps_run),
                              static_cast<double>(ex.persistent_bytes()),
                              stats.total_compute,
                              stats.total_comm,
                              stats.total_step_time,
                              median(stats.step_times),
                              rp.flops_per_step,
                              stats.gpu_peak_used_mib,
                              stats.gpu_alloc_peak_mib,
                              stats.has_util ? stats.util_total.mean : -1.0,
                              stats.has_util ? static_cast<double>(stats.util_total.samples) : 0.0,
                              stats.has_util ? stats.util_total.max : -1.0,
                              per_step("broadcast"),
                              predicted(rp, "broadcast"),
                              static_cast<double>(allocated_bytes(ex, info.backend == "cpu"))};
  std::vector<double> rows(static_cast<size_t>(kFields * plan.world_size));
  if (Status s = control_gather(comm, mine_row, kFields, rank0 ? rows.data() : nullptr); !s) return s;
  if (!rank0) return Status::ok();

  // A run of one step has no step after the first: its own rate is reported.
  const bool one_step = stats.step_tps.empty();
  double median_tps = one_step ? stats.first_step_tps : median(stats.step_tps);
  const double median_goodput = one_step ? stats.first_step_goodput : median(stats.step_goodput);
  const int64_t processed = (info.steps - info.start_step) * plan.global_batch * plan.seq_len;
  double wall = seconds_since(info.t_start);
  json summary = {{"plan", info.plan_path},
                  {"plan_fingerprint", fingerprint},
                  {"steps", info.steps},
                  {"start_step", info.start_step},
                  {"final_loss", stats.last_loss},
                  {"tokens_per_s_median", median_tps},
                  // Goodput (DESIGN.md "Metrics"): counted labels of applied steps; padding, masked
                  // prompts and skipped steps are processed but not trained.
                  {"trained_tokens", stats.trained_tokens},
                  {"processed_tokens", processed},
                  {"trained_share", processed > 0 ? double(stats.trained_tokens) / double(processed) : 0.0},
                  {"goodput_tokens_per_s_median", median_goodput},
                  {"wall_time_s", wall},
                  {"peak_rss_mib", peak_rss_mib()},
                  {"arena_mib", ex.arena_bytes() * ex.slots() / 1048576.0},
                  {"persistent_mib", ex.persistent_bytes() / 1048576.0},
                  {"adapter", info.out_dir + "/adapter"},
                  {"threads", info.threads},
                  {"omp_wait_policy", info.omp_wait_policy},
                  {"cpu_gemm", info.cpu_gemm},
                  {"backend", info.backend},
                  {"world_size", plan.world_size},
                  {"mesh", {{"dp", mesh.dp}, {"tp", mesh.tp}, {"pp", mesh.pp}}},
                  {"strategy", plan.strategy},
                  {"schedule", plan.pipeline_schedule},
                  {"base_weights", info.base_weights},
                  {"global_batch", plan.global_batch},
                  {"seq_len", plan.seq_len},
                  {"tokens_per_step", plan.global_batch * plan.seq_len},
                  // summary.json is written once, after every step, the adapter and the final
                  // checkpoint: complete = true marks a finished run (lora-study skips those).
                  {"complete", true}};
  // Time split and MFU (docs/training.md "Metrics"). Per rank: compute / comm / idle totals over
  // the training steps of this run. MFU: the plan's model FLOPs of one step summed over ranks /
  // rank 0's median step time (first step excluded when there are several) / (peak x ranks).
  auto fraction = [](double part, double whole) -> json { return whole > 0 ? json(part / whole) : json(nullptr); };
  auto time_json = [&](const double *row) {
    double idle = row[kStepTime] - row[kCompute] - row[kComm];
    return json{{"compute_s", row[kCompute]},
                {"comm_s", row[kComm]},
                {"idle_s", idle},
                {"step_time_s", row[kStepTime]},
                {"compute_fraction", fraction(row[kCompute], row[kStepTime])},
                {"comm_fraction", fraction(row[kComm], row[kStepTime])},
                {"idle_fraction", fraction(idle, row[kStepTime])}};
  };
  int slowest = 0;  // the rank with the most compute time: the one the others wait for
  double flops_per_step = 0;
  for (int r = 0; r < plan.world_size; ++r) {
    const double *row = rows.data() + static_cast<size_t>(r) * kFields;
    if (row[kCompute] > rows[static_cast<size_t>(slowest) * kFields + kCompute]) slowest = r;
    flops_per_step += row[kFlops];
  }
  const json time0 = time_json(rows.data());  // rank 0's split, at the top level
  for (auto it = time0.begin(); it != time0.end(); ++it) summary[it.key()] = it.value();
  summary["slowest_rank"] = slowest;
  std::vector<double> mfu_times(stats.step_times.begin() + (stats.step_times.size() > 1 ? 1 : 0), stats.step_times.end());
  const double step_median = median(mfu_times);
  const double achieved = step_median > 0 ? flops_per_step / step_median : 0.0;  // FLOP/s
  summary["step_time_s_median"] = step_median;
  summary["flops_per_step"] = flops_per_step;
  summary["achieved_tflops"] = achieved / 1e12;
  summary["peak_tflops"] = peak_tflops > 0 ? json(peak_tflops) : json(nullptr);
  summary["mfu"] = peak_tflops > 0 ? json(achieved / (peak_tflops * 1e12 * plan.world_size)) : json(nullptr);
  if (!info.gpu_name.empty()) summary["gpu_name"] = info.gpu_name;
  double util_sum = 0, util_max = -1;
  int64_t util_samples = 0;
  double gpu_peak_all = 0, gpu_alloc_all = 0;
  if (info.backend == "cuda") {
    for (int r = 0; r < plan.world_size; ++r) {
      const double *row = rows.data() + static_cast<size_t>(r) * kFields;
      gpu_peak_all = std::max(gpu_peak_all, row[kGpuPeak]);
      gpu_alloc_all = std::max(gpu_alloc_all, row[kGpuAlloc]);
      if (row[kUtilMean] >= 0 && row[kUtilSamples] > 0) {
        util_sum += row[kUtilMean] * row[kUtilSamples];
        util_samples += static_cast<int64_t>(row[kUtilSamples]);
        util_max = std::max(util_max, row[kUtilMax]);
      }
    }
    summary["gpu_peak_mem_mib"] = gpu_peak_all;  // max over ranks of cudaMemGetInfo used
    summary["gpu_alloc_peak_mib"] = gpu_alloc_all;
    summary["gpu_util_mean"] = util_samples > 0 ? json(util_sum / util_samples) : json(nullptr);
    summary["gpu_util_max"] = util_samples > 0 ? json(util_max) : json(nullptr);
  }
  json ranks = json::array();
  std::ostringstream comm_report, mismatch;
  for (int r = 0; r < plan.world_size; ++r) {
    const double *row = rows.data() + static_cast<size_t>(r) * kFields;
    const plan::RankPlan &pr = plan.ranks[r];
    auto as_int = [](double v) -> json {
      double i = std::round(v);
      return std::fabs(v - i) < 1e-9 ? json(static_cast<int64_t>(i)) : json(v);
    };
    json measured = {{"all_reduce", as_int(row[1])}, {"send", as_int(row[2])}};
    if (row[kBcast] != 0 || pr.bytes_sent.count("broadcast")) measured["broadcast"] = as_int(row[kBcast]);  // ZeRO-1
    json pred = json::object();
    for (auto &[k, v] : pr.bytes_sent) pred[k] = v;
    if (!pred.contains("all_reduce")) pred["all_reduce"] = 0;
    if (!pred.contains("send")) pred["send"] = 0;
    ranks.push_back({{"rank", r},
                     {"coords", {{"dp", pr.dp_rank}, {"tp", pr.tp_rank}, {"pp", pr.pp_stage}}},
                     {"bytes_sent_per_step", measured},
                     {"bytes_sent_predicted", pred},
                     {"arena_bytes", static_cast<int64_t>(row[5])},
                     {"predicted_peak_bytes", pr.peak_bytes},
                     {"predicted_bubble_fraction", pr.bubble_fraction},
                     {"persistent_bytes", static_cast<int64_t>(row[8])},
                     {"peak_rss_mib", row[6]},
                     {"time", time_json(row)},
                     {"step_time_s_median", row[kStepMedian]},
                     {"flops_per_step", row[kFlops]}});
    if (info.backend == "cuda") {
      json &e = ranks.back();
      e["gpu_peak_mem_mib"] = row[kGpuPeak];
      e["gpu_alloc_peak_mib"] = row[kGpuAlloc];
      e["gpu_util_mean"] = row[kUtilMean] >= 0 && row[kUtilSamples] > 0 ? json(row[kUtilMean]) : json(nullptr);
    }
    if (multi) {
      comm_report << "  rank " << r << " (dp " << pr.dp_rank << ", tp " << pr.tp_rank << ", pp " << pr.pp_stage
                  << "): sent " << fmt("%.0f", row[1]) << " B/step by all_reduce, " << fmt("%.0f", row[2])
                  << " by send; predicted " << fmt("%.0f", row[3]) << ", " << fmt("%.0f", row[4])
                  << (row[kBcast] != 0 || row[kBcastPred] != 0
                          ? "; broadcast " + fmt("%.0f", row[kBcast]) + " B/step, predicted " + fmt("%.0f", row[kBcastPred])
                          : std::string())
                  << "\n";
      if (row[7] > 0 && (std::fabs(row[1] - row[3]) > 0.5 || std::fabs(row[2] - row[4]) > 0.5 ||
                         std::fabs(row[kBcast] - row[kBcastPred]) > 0.5))
        mismatch << "lora-run: warning: MISMATCH on rank " << r << ": measured bytes sent per step ("
                    << fmt("%.0f", row[1]) << " all_reduce, " << fmt("%.0f", row[2])
                    << " send) differ from the plan's prediction (" << fmt("%.0f", row[3]) << ", "
                    << fmt("%.0f", row[4]) << ")"
                 << (row[kBcast] != 0 || row[kBcastPred] != 0
                         ? "; broadcast " + fmt("%.0f", row[kBcast]) + " vs " + fmt("%.0f", row[kBcastPred])
                         : std::string())
                 << "\n";
    }
  }
  summary["ranks"] = ranks;
  std::ostringstream prediction;  // docs/planner.md: predicted vs measured on every run
  {
    std::vector<int64_t> alloc;
    for (int r = 0; r < plan.world_size; ++r) alloc.push_back(static_cast<int64_t>(rows[static_cast<size_t>(r) * kFields + kAlloc]));
    report_prediction(plan, step_median, alloc, summary, prediction);
  }
  std::ostringstream prof;
  if (info.profile) {
    json pj = json::object();
    std::vector<std::pair<std::string, OpProfile>> ops(ex.profile().begin(), ex.profile().end());
    std::sort(ops.begin(), ops.end(), [](auto &x, auto &y) { return x.second.seconds > y.second.seconds; });
    double total = 0;
    for (auto &o : ops) total += o.second.seconds;
    prof << "  profile" << (multi ? " of rank 0" : "") << " (kernel time " << fmt("%.3f", total) << " s):\n";
    char line[256];
    std::snprintf(line, sizeof line, "    %-20s %10s %8s %7s %10s\n", "op", "seconds", "calls", "share", "GFLOP/s");
    prof << line;
    for (auto &[name, p] : ops) {
      double gflops = p.seconds > 0 ? p.flops / p.seconds / 1e9 : 0;
      std::snprintf(line, sizeof line, "    %-20s %10.4f %8lld %6.1f%% %10.2f\n", name.c_str(), p.seconds,
                    static_cast<long long>(p.calls), total > 0 ? 100.0 * p.seconds / total : 0.0, gflops);
      prof << line;
      pj[name] = {{"seconds", p.seconds}, {"calls", p.calls}, {"flops", p.flops}};
    }
    summary["profile"] = pj;
  }
  if (info.trace) summary["trace"] = json::parse(trace_summary_json(*info.trace));
  {
    std::ofstream os(info.out_dir + "/summary.json");
    os << summary.dump(2) << "\n";
    if (!os) return Status::error("cannot write " + info.out_dir + "/summary.json");
  }
  std::cout << "lora-run: done: " << info.steps << " steps, final loss " << fmt("%.6f", stats.last_loss) << ", "
            << fmt("%.0f", median_tps) << (one_step ? " tokens/s (one step), wall " : " tokens/s (median, first step excluded), wall ") << fmt("%.2f", wall)
            << " s, goodput " << fmt("%.0f", median_goodput) << " trained tokens/s ("
            << fmt("%.1f", processed > 0 ? 100.0 * double(stats.trained_tokens) / double(processed) : 0.0)
            << "% of processed tokens trained), peak RSS " << fmt("%.0f", peak_rss_mib()) << " MiB" << (multi ? " (rank 0)" : "") << "\n"
            << "  adapter: " << info.out_dir << "/adapter, metrics: " << info.metrics_path << ", summary: " << info.out_dir
            << "/summary.json\n";
  {
    const double *r0 = rows.data();
    const double *rs = rows.data() + static_cast<size_t>(slowest) * kFields;
    auto pct = [](double part, double whole) { return fmt("%.1f", whole > 0 ? 100.0 * part / whole : 0.0); };
    std::cout << "time: compute " << pct(r0[kCompute], r0[kStepTime]) << "%, communication " << pct(r0[kComm], r0[kStepTime])
              << "%, idle/other " << pct(r0[kStepTime] - r0[kCompute] - r0[kComm], r0[kStepTime]) << "% (rank 0); slowest rank " << slowest
              << " (most compute): compute " << pct(rs[kCompute], rs[kStepTime]) << "%, communication " << pct(rs[kComm], rs[kStepTime])
              << "%, idle/other " << pct(rs[kStepTime] - rs[kCompute] - rs[kComm], rs[kStepTime]) << "%\n";
    if (peak_tflops > 0)
      std::cout << "MFU: " << fmt("%.2f", 100.0 * achieved / (peak_tflops * 1e12 * plan.world_size)) << "% ("
                << fmt("%.4g", achieved / 1e12) << " TFLOP/s achieved by " << plan.world_size << " rank"
                << (plan.world_size == 1 ? "" : "s") << " / " << fmt("%g", peak_tflops) << " TFLOP/s peak per device)\n";
    else
      std::cout << "MFU: not reported (" << fmt("%.4g", achieved / 1e12)
                << " TFLOP/s achieved; peak unknown: pass --peak-tflops)\n";
    if (info.backend == "cuda")
      std::cout << "gpu: peak memory used " << fmt("%.0f", gpu_peak_all) << " MiB (cudaMemGetInfo, max over ranks), "
                << "allocator peak " << fmt("%.0f", gpu_alloc_all) << " MiB; utilization "
                << (util_samples > 0 ? "mean " + fmt("%.1f", util_sum / util_samples) + "% (NVML)"
                                     : std::string("unavailable (") + (info.nvml_why.empty() ? "no samples" : info.nvml_why) + ")")
                << "\n";
  }
  std::cout << prediction.str() << comm_report.str() << prof.str();
  if (info.trace) print_trace_summary(std::cout, *info.trace);
  std::cout.flush();
  std::cerr << mismatch.str();
  return Status::ok();
}

} // namespace parallora::rt
