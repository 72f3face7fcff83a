//===- analytic.h - a candidate strategy's cost from the model's sizes -----===//
//
// lora-compile --strategy auto ranks thousands of candidate strategies (dp x tp x pp, micro-
// batches, schedule, ZeRO-1, recompute, precision); compiling each would take minutes for the
// 1B model on 64 devices, so candidates are first estimated from the model's sizes with the
// same device profile and the same per-kernel costs as the plan cost model (cost_model.h):
// each decoder layer's GEMMs, attention, memory-bound kernels and Megatron all-reduces, the
// head and embedding units, stages balanced as pipeline-split balances them, the pipeline
// simulated, the data-parallel gradient sync partly hidden behind the last backward. The best
// few are then compiled and costed exactly (tools/lora-compile/auto_strategy.cpp).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "passes/planner/device_profile.h"

namespace parallora::planner {

struct ModelDims {
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  bool tied = false;
  int64_t lora_rank = 16;
  std::vector<std::string> lora_targets;  // q_proj, k_proj, ... (all-linear expanded)
  int64_t batch = 1, seq_len = 1;          // global batch in sequences
};

struct Candidate {
  int dp = 1, tp = 1, pp = 1;
  int micro_batches = 1;
  std::string schedule = "none";  // "gpipe" | "1f1b" | "interleaved" | "zb-h1" when pp > 1
  int virtual_stages = 1;         // interleaved: model chunks per rank (>= 2)
  bool zero1 = false;
  bool recompute = false;
  std::string precision = "fp32";
  std::string describe() const;   // "dp 2 x tp 4 x pp 1, M 2, 1f1b, zero1, recompute, bf16" ("interleaved v2")
  std::string flags() const;      // the lora-compile flags that compile it
};

struct Estimate {
  double step_s = 0;
  double compute_s = 0, comm_s = 0, bubble_s = 0;  // of the slowest stage
  int64_t peak_bytes = 0;                          // the largest rank's
  int64_t bytes_sent = 0;                          // per step, the largest rank's (all kinds)
  double flops_per_step = 0;                       // model FLOPs of the step, all ranks
};

/// Why the compiler would refuse `c` for `m` on `devices` ranks ("" = it accepts it).
std::string reject_reason(const ModelDims &m, const Candidate &c, int devices);

/// The candidate's estimated step, memory and traffic on `dev`.
Estimate estimate(const ModelDims &m, const Candidate &c, const DeviceProfile &dev);

/// Contiguous split of `cost` into `parts` groups minimising the largest (pipeline-split's rule).
std::vector<int> balance_units(const std::vector<double> &cost, int parts);

} // namespace parallora::planner
