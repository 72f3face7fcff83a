//===- in_step.h - lora-bench: what a real training step costs beyond hot kernels ===//
//
// lora-bench times each kernel hot, in a loop on the same buffers. Inside a training step the
// caches are colder (every kernel reads what the previous ones evicted) and the executor spends
// time of its own between kernels (argument setup, slot lookup, the profiler's clock). This
// runs a short training step of a single-rank plan through the real executor with its profiler
// on (the code lora-run --profile uses: Executor::enable_profile) and compares it with the cost
// model's prediction of the same plan from the hot-loop rates (planner::op_seconds):
//   * per op class c (gemm, attention, memory): factor_c = (measured kernel seconds of c -
//     n_c x instruction_overhead_s) / (predicted seconds of c - n_c x instruction_overhead_s),
//     n_c the instructions of class c per step: the work part only, the fixed cost stays;
//   * dispatch_overhead_s = (measured wall time of a step - its measured kernel time) / the
//     instructions it executed: the executor's time per instruction between kernels.
// Each measured figure is the 10th percentile over the profiled steps, as lora-bench's kernel
// timings (another process's interruption of a step does not set a factor).
// No MPI (rank 0 runs it alone), no MLIR: the plan comes from lora-compile.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <map>
#include <string>

#include "passes/planner/device_profile.h"
#include "runtime/base/status.h"

namespace parallora::bench {

struct InStep {
  std::map<std::string, double> factor;       // "gemm", "attention", "memory"
  std::map<std::string, double> measured_s;   // per class, per step
  std::map<std::string, double> predicted_s;  // per class, per step (hot-loop rates)
  double dispatch_s = 0;
  double step_wall_s = 0;                     // wall time of one profiled step (median)
  int64_t instructions = 0;                   // per step
  std::string describe;                       // "plan.lp (1 rank, 2 micro-batches, 1234 instructions per step), 5 steps"
};

/// The op class a kernel's time is costed in ("gemm", "attention", "memory"; "" for collectives).
std::string op_class(const std::string &op);

/// Reads the plan at `plan_path` and checks that measure_in_step can run it (one rank, a vocabulary,
/// a batch): lora-bench calls it before its minutes of kernel timing.
Status check_step_plan(const std::string &plan_path);

/// Runs `steps` training steps of the single-rank plan at `plan_path` (after 2 warm-up steps) and
/// derives the corrections of `hot` (a profile without them). Errors name the plan.
StatusOr<InStep> measure_in_step(const std::string &plan_path, const planner::DeviceProfile &hot, int steps);

} // namespace parallora::bench
