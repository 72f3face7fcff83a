//===- auto_strategy.h - lora-compile --strategy auto ----------------------===//
//
// Enumerates the strategies the compiler accepts for N devices (dp x tp x pp, micro-batches,
// pipeline schedule: gpipe, 1f1b, zb-h1, interleaved with V = 2 .. layers/pp; ZeRO-1, recompute,
// precision), estimates each (passes/planner/analytic.h),
// drops those over the memory limit, ranks the rest by estimated step time (ties: less memory,
// then the candidate's flags in lexical order, so the choice is deterministic), compiles the best
// few for real and costs their plans (passes/planner/cost_model.h), and returns the one with the
// shortest predicted step whose compiled plan fits. lora-compile then compiles it as usual.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace parallora {

struct AutoRequest {
  std::string hf_config;          // the model (required)
  int64_t batch = 0, seq_len = 0;
  int64_t lora_rank = 16;
  double lora_alpha = 32;
  std::string lora_targets = "q_proj,v_proj";
  int devices = 0;
  std::string device_profile;
  double memory_limit_gib = 0;    // 0: the profile's memory_gib
  bool explain = false;
  int top = 5;                    // candidates printed and compiled for the exact check
  double bucket_mb = 25;
  bool no_overlap = false;
  // Settings the user fixed on the command line (then not enumerated).
  std::optional<int64_t> micro_batches, virtual_stages;
  std::optional<std::string> schedule, precision, recompute;
  std::optional<bool> zero1;
};

struct AutoChoice {
  int dp = 1, tp = 1, pp = 1;
  int64_t micro_batches = 1;
  int64_t virtual_stages = 1;  // interleaved: model chunks per rank
  std::string schedule = "1f1b", precision = "fp32", recompute = "none";
  bool zero1 = false;
};

/// Prints the ranking (and with explain the rejections) to stdout and fills `choice`. Returns 0,
/// or an exit code after printing the error (2: bad request, 1: nothing fits / compile failed).
int choose_strategy(const AutoRequest &req, AutoChoice &choice);

} // namespace parallora
