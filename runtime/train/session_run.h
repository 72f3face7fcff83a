//===- session_run.h - run_session's steps and the state they share (internal) ===//
//
// run_session (session.h) is this sequence; each step is one member function:
//   setup()        session.cpp       plan, world, kernels, communicator, executor, trace, GPU metrics
//   load()         session.cpp       resume point, data, batch geometry, pipeline schedule, parameters
//   open_outputs() session.cpp       the output directory, metrics, the run's header lines
//   train()        session_step.cpp  validation at step 0, then step(s) for every step:
//                                    the micro-batches or pipeline tasks, optimizer_step, the
//                                    control all-reduce, metrics, non-finite steps, validation,
//                                    checkpoints, a requested stop
//   finish()       session_step.cpp  the final adapter and checkpoint, the trace, the summary
// Members are declared in the order run_session once declared them as locals, so they are
// built and destroyed in that order (the peer watch first, the plan last).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/comm/comm.h"
#include "runtime/core/executor.h"
#include "runtime/core/trace.h"
#include "runtime/cuda/plugin.h"
#include "runtime/io/gpu_metrics.h"
#include "runtime/io/metrics.h"
#include "runtime/plan/schedule.h"
#include "runtime/train/batch_source.h"
#include "runtime/train/checkpoint_store.h"
#include "runtime/train/metrics_log.h"
#include "runtime/train/nonfinite.h"
#include "runtime/train/output_dir.h"
#include "runtime/train/peer_watch.h"
#include "runtime/train/run_summary.h"
#include "runtime/train/session.h"
#include "runtime/train/stop_signals.h"

namespace parallora::rt {

class SessionRun {
public:
  SessionRun(const SessionOptions &options, World &world, SessionOutcome *session_outcome)
      : a(options), w(world), outcome(session_outcome) {}

  Status setup();
  Status load();
  Status open_outputs();
  Status train();
  Status finish();

private:
  static Status fail(const std::string &message) { return Status::error(message); }
  void warn(const std::string &message) const;
  /// Rows [first, first + micro_batch) of the loaded global batch into slot `slot`'s inputs.
  Status feed(const BatchSource &src, int64_t first, int slot);
  /// Sums `local` (this rank's contribution, or 0) over the world: control traffic, not counted
  /// in the communicator's bytes.
  StatusOr<double> world_sum(double local);
  /// This rank's first row of micro-batch m in the global batch.
  int64_t micro(int64_t m) const;
  /// The StepState of micro-batch m of step s.
  StepState micro_state_of(int64_t s, int64_t m) const;

  // Evaluation and checkpoints (session_step.cpp).
  StatusOr<double> validate();
  Status run_validation(int64_t step);
  Status checkpoint(int64_t step, double loss, double lr);

  // One training step (session_step.cpp).
  Status step(int64_t s);
  Status run_micro_steps(int64_t s, double *loss_sum);
  Status run_pipeline_tasks(int64_t s, double *loss_sum);
  /// Times, throughput and the metrics record of step s (ended by the control all-reduce).
  Status record_step(int64_t s, const StepState &state, std::chrono::steady_clock::time_point t0,
                     const TimeSplit &split_before, double flush_s);
  /// A step whose loss, gradient norm or weights are not finite: skipped, or the run stops.
  Status on_nonfinite(int64_t s, const StepState &state, double loss_sum, const NonFinite &bad_weight,
                      bool loss_finite, bool weights_finite);
  /// Validation and checkpoints due after step s; a stop asked for by a signal.
  Status end_of_step(int64_t s, double lr, bool stop_requested);
  /// --dump-first-step's logits: input 0 of micro_step's cross_entropy_fwd.
  void capture_logits(const KernelCall &c);

  const SessionOptions &a;
  World &w;
  SessionOutcome *outcome;

  // setup()
  std::chrono::steady_clock::time_point t_start;
  plan::Plan plan;
  std::string fingerprint;
  std::optional<StopSignals> stop_signals;  // after MPI_Init, so the handlers are ours
  bool multi = false;
  int R = 0;
  const plan::RankPlan *rank_plan = nullptr;
  bool rank0 = false;
  int fail_rank = -1;  // test hook (see --help): make one rank fail at one step
  int64_t fail_step = -1;
  std::optional<ResumePoint> resume;
  uint64_t seed = 0;
  int64_t start_step = 0;
  int threads = 0;
  KernelRegistry registry;
  MemoryHooks cuda_memory;
  const MemoryHooks *memory_hooks = nullptr;
  std::string device_line;
  const cuda::BackendApi *gpu = nullptr;
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<Executor> executor;
  std::unique_ptr<TraceRecorder> trace;
  std::unique_ptr<DeviceTimer> device_timer;
  TraceRecorder *tr = nullptr;
  std::unique_ptr<NvmlSampler> nvml;
  std::string gpu_name, nvml_why;
  double peak_tflops = 0;

  // load()
  std::string weights, base_model;
  std::optional<CheckpointStore> store;
  std::unique_ptr<BatchSource> train_data;
  std::unique_ptr<BatchSource> val_file;
  int64_t dp = 1, per_dp = 0, micro_batch = 0, ids_numel = 0;
  bool pipelined = false, last_stage = false, loss_rank = false;
  std::vector<PipelineTask> tasks;
  size_t last_backward = 0, last_weight = 0;  // this rank's last backward (zb-h1: weight) task
  int64_t val_batch = 0, val_batches = 0;

  // open_outputs()
  std::optional<OutputDir> out_dir;
  std::optional<MetricsLog> metrics;
  std::string metrics_path;
  int64_t tokens_per_step = 0;
  int64_t trained_total = 0;   // counted labels of the applied steps of this run (goodput's tokens)
  int64_t trained_before = 0;  // ... and of the steps before a resume

  // train()
  std::optional<ProgressBar> progress;
  std::vector<float> dump_logits;
  std::vector<int64_t> dump_logits_shape;
  RunStats stats;
  int consecutive_nonfinite = 0;
  int64_t last_saved = 0;  // the newest checkpoint of this run (0: none)
  bool plan_has_loss = false;
  std::unique_ptr<PeerWatch> watch;
};

} // namespace parallora::rt
