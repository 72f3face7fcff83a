//===- run_summary.h - summary.json and the end-of-run report ---------------===//
//
// At the end of a session every rank contributes one row of numbers (bytes sent per step,
// measured and predicted; arena and RSS; the compute / communication / idle split; MFU inputs;
// GPU memory and utilization), gathered on rank 0, which writes <out>/summary.json and prints
// the report (docs/training.md "Metrics").
//
//===----------------------------------------------------------------------===//
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/core/executor.h"
#include "runtime/io/gpu_metrics.h"
#include "runtime/plan/plan.h"
#include "runtime/train/trace.h"
#include "runtime/train/world.h"

namespace parallora::rt {

/// What one rank measured over the training steps of this run.
struct RunStats {
  std::map<std::string, int64_t> train_bytes;  // communicator bytes of the training steps only
  double total_compute = 0, total_comm = 0, total_step_time = 0;
  std::vector<double> step_times;  // every step
  std::vector<double> step_tps;    // tokens/s of every step after the first of this run
  double first_step_tps = 0;       // the first step's (reported when it is the only one)
  int64_t trained_tokens = 0;      // counted labels of this run's applied steps
  std::vector<double> step_goodput;  // trained tokens/s of every step after the first
  double first_step_goodput = 0;
  double gpu_peak_used_mib = 0, gpu_alloc_peak_mib = 0;
  bool has_util = false;           // NVML sampled (util_total valid)
  GpuUtilStats util_total;
  int64_t steps_run = 0;
  double last_loss = std::nan(""), last_lr = 0;
};

/// The run's settings as the summary reports them.
struct RunInfo {
  std::string plan_path, fingerprint, out_dir, metrics_path, backend, omp_wait_policy;
  std::string cpu_gemm;  // the cpu backend's GEMM library ("oneDNN 2.6.3 (avx512)"); "" on cuda
  std::string gpu_name, nvml_why, base_weights;
  int64_t steps = 0, start_step = 0;
  int threads = 0;
  bool profile = false;
  double peak_tflops = 0;  // 0: unknown (MFU not reported)
  std::chrono::steady_clock::time_point t_start;
  const TraceSummary *trace = nullptr;  // --trace: rank 0's summary of the merged trace
};

/// Median of `v` (0 when empty).
double median(std::vector<double> v);
/// `v` printed with one printf conversion (`f`, e.g. "%.6f"): the session's and summary's numbers.
std::string fmt(const char *f, double v);
/// Seconds since `t0` on the steady clock.
double seconds_since(std::chrono::steady_clock::time_point t0);
/// This process's peak resident set in MiB.
double peak_rss_mib();

/// Gathers every rank's row on rank 0, which writes summary.json and prints the report
/// (collective over the world).
Status write_run_summary(const RunInfo &info, const RunStats &stats, const plan::Plan &plan, const Executor &ex,
                         Communicator &comm);

} // namespace parallora::rt
