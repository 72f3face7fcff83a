//===- session.h - a training session: a plan, data and a loop of optimizer steps ===//
//
// What `lora-run plan.lp --data ... --steps N --out dir/` does, as a library, so that tools and
// tests drive training without a subprocess:
//   1. read the plan; join the world (MPI when launched by mpirun or the plan has several ranks)
//   2. kernels (cpu or cuda), communicator (local, MPI or NCCL), executor; GPU metrics
//   3. resume point (checkpoint_store.h) or --init-adapter (adapter_export.h); base weights
//   4. data: every rank reads the same token file in the same seeded order and takes its
//      data-parallel share of each global batch; pipelined plans follow the plan's schedule
//   5. the step loop: micro_step (or forward/backward tasks) per micro-batch, optimizer_step,
//      metrics (metrics_log.h), validation, periodic checkpoints
//   6. the final adapter, the final checkpoint, summary.json and the report (run_summary.h);
//      with --trace, every rank's timeline merged into one Chrome trace (trace.h)
// Rank 0 prints progress and writes metrics and the summary; every rank writes its checkpoint
// shard. Errors are returned; the caller (tools/lora-run) turns them into exit codes and, for
// a rank-local failure in a run of several ranks, ends the other ranks.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>

#include "runtime/base/status.h"
#include "runtime/train/world.h"

namespace parallora::rt {

/// lora-run's training options (see lora-run --help for each).
struct SessionOptions {
  std::string plan;
  std::string data, data_format = "auto", val_data;
  std::string data_layout = "auto";  // examples (a label-mask file next to the data): packed | padded | auto
  int64_t val_every = 0, val_batches = 0;
  int64_t steps = 0;
  uint64_t seed = 42;
  bool shuffle = true;
  std::string out, weights, init_adapter, resume;
  bool overwrite = false;  // replace a finished run's outputs in `out` (else refused without resume)
  int64_t save_every = 0, keep_last = 0;
  int threads = -1;  // < 0: OMP_NUM_THREADS, else all cores
  std::string cpu_gemm = "auto";  // auto | onednn | openblas (runtime/cpu/blas_core.h)
  std::string backend = "cpu";
  std::string collectives = "mpi";
  bool cuda_graphs = false;
  int64_t log_every = 10;
  bool profile = false;
  std::string dump_first_step;
  double comm_timeout = 300;
  double peak_tflops = -1;  // < 0: by GPU name (cuda), 0 on the cpu backend
  std::string nonfinite = "stop";  // "stop" | "skip" (= "skip-step") (runtime/train/nonfinite.h)
  std::string trace;               // Chrome trace of every rank, written by rank 0 (runtime/train/trace.h)
  int64_t trace_max_events = 1 << 20;  // per rank; later events are dropped and counted
};

/// How a session ended, beyond its Status.
struct SessionOutcome {
  /// The error arose identically on every rank (e.g. the world size does not match the plan):
  /// rank 0 reports it and no rank needs to end the others.
  bool same_on_every_rank = false;
  /// The process exit code for a failure: 1, or 128 + signal when stopped by SIGINT / SIGTERM.
  int exit_code = 1;
};

/// Runs the whole session. `world` receives this process's place (MPI is initialized inside
/// when needed; the caller finalizes it with finalize_world).
Status run_session(const SessionOptions &options, World &world, SessionOutcome *outcome);

/// OMP_WAIT_POLICY as the session reports it ("default" when unset).
std::string omp_wait_policy();

} // namespace parallora::rt
