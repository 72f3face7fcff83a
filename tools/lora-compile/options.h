//===- options.h - lora-compile's command line -----------------------------===//
//
// lora-compile's flags (CLI11, tools/common/cli.h) and their checks: the mesh a strategy asks
// for, --strategy auto's choice (auto_strategy.h), the aliases (--schedule, --model-size) and
// the combinations refused before any compiling starts.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/lora-compile/auto_strategy.h"

namespace parallora {

struct CompileOptions {
  std::string onnx, hf_config, weights;
  int64_t batch = -1, seq_len = -1;
  int64_t lora_rank = 16;
  double lora_alpha = 32, lora_dropout = 0;
  std::string lora_targets = "q_proj,v_proj";
  bool use_rslora = false, no_lora = false;
  bool packing = false;  // --packing: position_ids and segment_ids inputs (pack_sequences.cpp)
  std::string dump_ir, dump_graph, dump_after_all;
  // Training step and plan.
  std::string output;
  int64_t micro_batches = 1;
  double lr = 1e-4, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8, max_grad_norm = 1.0;
  double min_lr_ratio = 0.0;
  int64_t warmup = 0, total_steps = 0;
  std::string schedule;                  // --schedule: alias of --pipeline-schedule (or of --lr-schedule)
  std::string lr_schedule = "constant";
  std::string pipe_schedule = "1f1b";
  int64_t virtual_stages = 0;            // --virtual-stages (interleaved; 0 = default 2)
  bool train_ir = false;
  // Parallelism.
  std::string strategy, model_size, viz;
  std::string viz_trace;     // --viz-trace: a lora-run --trace file drawn beside the prediction
  int64_t viz_step = -1;     // --viz-step
  int64_t dp = 0, tp = 0, pp = 0, nodes = 0, gpus_per_node = 0, gpus = 0;
  double bucket_mb = 25;
  bool zero1 = false;
  std::string precision = "fp32";
  bool no_overlap = false;
  std::string recompute = "none";
  std::string device_profile = "cpu-local";  // cost model (docs/planner.md)
  bool cost_breakdown = false;
  AutoRequest auto_req;                      // --strategy auto (tools/lora-compile/auto_strategy.h)

  // Which flags the command line gave (the compile reads them after the parser is gone).
  std::vector<std::string> lora_flags_given;  // of --lora-rank, --lora-alpha, --lora-targets, --lora-dropout, --use-rslora
  bool lora_targets_given = false;
  bool device_profile_given = false;

  // Derived by parse_options once the flags check out.
  std::string resolved_strategy;  // single, data, tensor, pipeline or hybrid
  bool parallel = false;          // dp x tp x pp > 1
  bool build_train = false;       // run the training passes (-o, --train-ir or a parallel plan)
  int64_t micro_batch = -1;       // --batch / --micro-batches: the batch the graph is built for
};

/// Parses and checks lora-compile's command line into `a`. Returns -1 to go on compiling, else
/// the exit code: 0 after --help, 2 for a usage error (printed), or --strategy auto's failure.
int parse_options(int argc, char **argv, CompileOptions &a);

} // namespace parallora
