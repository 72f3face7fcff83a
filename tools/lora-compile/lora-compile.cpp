//===- lora-compile.cpp - LLaMA (+LoRA) graph -> `pl` IR -> training plan ---===//
//
//   lora-compile --onnx model.onnx | --hf-config config.json [--weights dir]
//                [--batch B --seq-len T] [--lora-rank 16 --lora-alpha 32 --lora-targets ...] [--packing]
//                [--micro-batches M --lr ... --warmup ... --lr-schedule ... --weight-decay ...]
//                [--strategy single|data|tensor|pipeline|hybrid --dp N --tp N --pp N --pipeline-schedule gpipe|1f1b|interleaved|zb-h1 --virtual-stages V]
//                [-o plan.lp] [--viz dir/] [--dump-ir out.mlir] [--dump-graph out.dot] [--dump-ir-after-all dir/]
//
// Failures print a diagnostic naming the file/node/flag; exit codes follow tools/common/cli.h:
// 1 for a bad model, file or compilation, 2 for a bad command line.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sys/resource.h>

#include <CLI/CLI.hpp>

#include "frontend/hf_config.h"
#include "frontend/onnx/onnx_importer.h"
#include "runtime/base/safetensors.h"
#include "ir/Dialect.h"
#include "models/llama_builder.h"
#include "passes/lora/Passes.h"
#include "passes/lower/lower_to_plan.h"
#include "passes/train/Passes.h"
#include "runtime/plan/plan_io.h"
#include "runtime/plan/plan_schedule.h"
#include "passes/parallel/Passes.h"
#include "tools/lora-compile/graph_dot.h"
#include "tools/lora-compile/prediction.h"
#include "tools/lora-compile/auto_strategy.h"
#include "tools/lora-compile/viz.h"
#include "tools/common/cli.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace parallora;

namespace {

struct Args {
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
};

/// The mesh a strategy asks for. Returns false after printing the error.
bool resolve_mesh(Args &a, std::string &strategy) {
  static const std::map<std::string, std::string> spelling = {
      {"single", "single"},     {"data", "data"},         {"tensor", "tensor"},
      {"pipeline", "pipeline"}, {"hybrid", "hybrid"},     {"data_parallel", "data"},
      {"tensor_parallel", "tensor"}, {"model_parallel", "tensor"}, {"pipeline_parallel", "pipeline"},
      {"hybrid_parallel", "hybrid"}};
  int64_t world = (a.nodes > 0 || a.gpus_per_node > 0) ? std::max<int64_t>(a.nodes, 1) * std::max<int64_t>(a.gpus_per_node, 1) : 0;
  if (a.gpus > 0) {  // the seed's --gpus N: the devices of the run
    if (world > 0 && world != a.gpus) {
      std::cerr << "error: --gpus " << a.gpus << " but --nodes x --gpus-per-node = " << world << "\n";
      return false;
    }
    world = a.gpus;
  }
  if (a.strategy.empty()) {  // inferred from the degrees given
    int axes = (a.dp > 1) + (a.tp > 1) + (a.pp > 1);
    strategy = axes > 1 ? "hybrid" : a.dp > 1 ? "data" : a.tp > 1 ? "tensor" : a.pp > 1 ? "pipeline" : "single";
    if (world > 1 && axes == 0) {
      std::cerr << "error: --nodes/--gpus-per-node give " << world << " ranks; also give --strategy (or --dp/--tp/--pp)\n";
      return false;
    }
  } else {
    auto it = spelling.find(a.strategy);
    if (it == spelling.end()) {
      std::cerr << "error: --strategy " << a.strategy << ": choose single, data, tensor, pipeline or hybrid "
                << "(or data_parallel, model_parallel / tensor_parallel, pipeline_parallel, hybrid_parallel)\n";
      return false;
    }
    strategy = it->second;
  }
  auto only = [&](const char *axis, int64_t &deg, const char *flag) {
    for (auto [name, v] : {std::pair<const char *, int64_t>{"dp", a.dp}, {"tp", a.tp}, {"pp", a.pp}})
      if (std::string(name) != axis && v > 1) {
        std::cerr << "error: --strategy " << a.strategy << " uses only " << axis << "; --" << name << " " << v
                  << " needs --strategy hybrid\n";
        return false;
      }
    if (deg <= 0) deg = world;
    if (deg <= 0) {
      std::cerr << "error: --strategy " << a.strategy << " needs " << flag << " N (or --gpus, or --nodes/--gpus-per-node)\n";
      return false;
    }
    if (world > 0 && deg != world) {
      std::cerr << "error: " << flag << " " << deg << " does not match --nodes x --gpus-per-node = " << world << "\n";
      return false;
    }
    return true;
  };
  if (strategy == "single") {
    if (a.dp > 1 || a.tp > 1 || a.pp > 1 || world > 1) {
      std::cerr << "error: --strategy single runs on one rank; drop --dp/--tp/--pp/--nodes or pick another strategy\n";
      return false;
    }
  } else if (strategy == "data") {
    if (!only("dp", a.dp, "--dp")) return false;
  } else if (strategy == "tensor") {
    if (!only("tp", a.tp, "--tp")) return false;
  } else if (strategy == "pipeline") {
    if (!only("pp", a.pp, "--pp (or --stages)")) return false;
  } else {  // hybrid: tensor parallel within a node, pipeline across nodes, unless given
    if (world > 0 && a.dp <= 0 && a.tp <= 0 && a.pp <= 0) {
      a.tp = std::max<int64_t>(a.gpus_per_node, 1);
      a.pp = std::max<int64_t>(a.nodes, 1);
    }
    int64_t given = std::max<int64_t>(a.dp, 1) * std::max<int64_t>(a.tp, 1) * std::max<int64_t>(a.pp, 1);
    if (world > 0 && given != world) {
      if (world % given != 0) {
        std::cerr << "error: dp x tp x pp = " << given << " does not divide --nodes x --gpus-per-node = " << world << "\n";
        return false;
      }
      if (a.dp <= 0) a.dp = world / given;  // the rest is data parallel
      else {
        std::cerr << "error: dp x tp x pp = " << given << " but --nodes x --gpus-per-node = " << world << "\n";
        return false;
      }
    }
  }
  a.dp = std::max<int64_t>(a.dp, 1);
  a.tp = std::max<int64_t>(a.tp, 1);
  a.pp = std::max<int64_t>(a.pp, 1);
  return true;
}

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / (1024.0 * 1024.0));
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) r += ',';
    r += s[i];
  }
  return r;
}

int64_t numel(RankedTensorType t) {
  int64_t n = 1;
  for (int64_t d : t.getShape()) n *= d;
  return n;
}

/// Checks every parameter the IR names against the checkpoint: present, same shape, float.
bool check_weights(ModuleOp module, const WeightStore &store, const std::string &dir) {
  bool ok = true;
  module.walk([&](pl::ParamOp p) {
    if (p.getTrainable()) return; // adapters are created by us, not read from the base checkpoint
    std::string name = p.getName().str();
    const TensorView *t = store.find(name);
    if (!t) {
      llvm::errs() << "error: " << dir << ": checkpoint has no tensor '" << name << "' required by the model config\n";
      ok = false;
      return;
    }
    auto want = p.getType().cast<RankedTensorType>().getShape();
    if (std::vector<int64_t>(want.begin(), want.end()) != t->shape) {
      std::string got, exp;
      for (int64_t d : t->shape) got += (got.empty() ? "" : "x") + std::to_string(d);
      for (int64_t d : want) exp += (exp.empty() ? "" : "x") + std::to_string(d);
      llvm::errs() << "error: " << dir << ": tensor '" << name << "' has shape " << got << " but the config needs " << exp << "\n";
      ok = false;
    }
    if (t->dtype != DType::F32 && t->dtype != DType::BF16 && t->dtype != DType::F16) {
      llvm::errs() << "error: " << dir << ": tensor '" << name << "' has dtype " << dtype_name(t->dtype)
                   << "; expected float32, bfloat16 or float16\n";
      ok = false;
    }
  });
  return ok;
}

/// An --onnx model and the config.json given with it must describe the same model: the config
/// supplies rope scaling and max_position_embeddings, so another model's config would be used
/// silently. Compares every size the importer recovered from the graph; prints the first
/// difference naming both files and the key.
bool check_config_matches(ModuleOp module, const LlamaConfig &c, const std::string &onnx, const std::string &config_path) {
  auto cfg = module->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  if (!cfg) return true;
  const std::pair<const char *, int64_t> sizes[] = {
      {"vocab_size", c.vocab_size},           {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size}, {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads}, {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim}};
  for (auto [key, want] : sizes) {
    auto got = cfg.getAs<IntegerAttr>(key);
    if (got && got.getInt() != want) {
      llvm::errs() << "error: " << onnx << " and " << config_path << " describe different models: " << key << " is "
                   << got.getInt() << " in the ONNX graph but " << want << " in the config; give the exported model's own config.json\n";
      return false;
    }
  }
  auto tied = cfg.getAs<BoolAttr>("tie_word_embeddings");
  if (tied && tied.getValue() != c.tie_word_embeddings) {
    llvm::errs() << "error: " << onnx << " and " << config_path << " describe different models: tie_word_embeddings is "
                 << (tied.getValue() ? "true" : "false") << " in the ONNX graph but "
                 << (c.tie_word_embeddings ? "true" : "false") << " in the config; give the exported model's own config.json\n";
    return false;
  }
  return true;
}

void print_summary(ModuleOp module, const OnnxImportReport *rep, const Args &args) {
  int64_t total = 0, trainable = 0, layers = 0;
  std::map<std::string, int> op_counts, lora_targets;
  module.walk([&](Operation *op) {
    if (auto p = dyn_cast<pl::ParamOp>(op)) {
      int64_t n = numel(p.getType().cast<RankedTensorType>());
      total += n;
      if (p.getTrainable()) trainable += n;
      return;
    }
    if (isa<pl::AttentionOp>(op)) ++layers;
    if (auto l = dyn_cast<pl::LoraLinearOp>(op)) {
      std::string m = l.getModule().str();
      ++lora_targets[m.substr(m.rfind('.') + 1)];
    }
    if (op->getDialect() && op->getDialect()->getNamespace() == "pl") ++op_counts[op->getName().stripDialect().str()];
  });
  auto cfg = module->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  auto geti = [&](const char *k) -> std::string {
    if (!cfg) return "?";
    if (auto a = cfg.getAs<IntegerAttr>(k)) return std::to_string(a.getInt());
    return "?";
  };
  bool tied = cfg && cfg.getAs<BoolAttr>("tie_word_embeddings") && cfg.getAs<BoolAttr>("tie_word_embeddings").getValue();
  llvm::outs() << "  model: " << layers << " layers, hidden " << geti("hidden_size") << ", heads " << geti("num_attention_heads")
               << " (kv " << geti("num_key_value_heads") << "), head_dim " << geti("head_dim") << ", intermediate "
               << geti("intermediate_size") << ", vocab " << geti("vocab_size") << ", tied embeddings: " << (tied ? "yes" : "no") << "\n";
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.3f%%", total ? 100.0 * double(trainable) / double(total) : 0.0);
  llvm::outs() << "  parameters: " << with_commas(total) << " total, " << with_commas(trainable) << " trainable (" << pct << ")\n";
  if (lora_targets.empty()) {
    llvm::outs() << "  LoRA: none\n";
  } else {
    llvm::outs() << "  LoRA targets:";
    for (auto &[k, v] : lora_targets) llvm::outs() << " " << k << " x" << v;
    llvm::outs() << "\n";
  }
  llvm::outs() << "  ops:";
  for (auto &[k, v] : op_counts) llvm::outs() << " " << k << "=" << v;
  llvm::outs() << "\n";
  if (rep && !rep->generic_nodes.empty()) {
    llvm::outs() << "  warning: " << rep->generic_nodes.size() << " ONNX node(s) kept as pl.generic (not raised):";
    for (size_t i = 0; i < rep->generic_nodes.size() && i < 8; ++i) llvm::outs() << "\n    " << rep->generic_nodes[i];
    llvm::outs() << "\n";
  }
  if (args.packing)
    llvm::outs() << "  packing: inputs position_ids and segment_ids; " << op_counts["rope"] << " rope op(s) read the "
                 << "positions, " << op_counts["attention"] << " attention op(s) mask across segments\n";
}

/// Bytes in the largest binary unit that keeps the number >= 1 (B, KiB, MiB, GiB).
std::string human_bytes(int64_t bytes) {
  const char *unit[] = {"B", "KiB", "MiB", "GiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 3) v /= 1024.0, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
  return buf;
}

/// The compiler's per-rank predictions: memory, FLOPs, bytes sent by collective, bubble.
void print_plan_report(const plan::Plan &p, int64_t global_batch) {
  const plan::RankPlan &r = p.ranks[0];
  size_t instrs = 0;
  for (auto &prog : r.programs) instrs += prog.instrs.size();
  llvm::outs() << "  plan: " << p.strategy << " on " << p.world_size << " rank(s) (dp " << p.mesh.dp << " x tp "
               << p.mesh.tp << " x pp " << p.mesh.pp << ")";
  if (p.mesh.pp > 1) llvm::outs() << ", " << p.pipeline_schedule << " schedule";
  llvm::outs() << "; rank 0 has " << instrs << " instructions in " << r.programs.size() << " programs, "
               << r.buffers.size() << " buffers\n";
  if (p.world_size == 1) {
    llvm::outs() << "  memory (predicted peak " << mib(r.peak_bytes) << "): parameters " << mib(r.param_bytes)
                 << ", gradients " << mib(r.grad_bytes) << ", AdamW moments " << mib(r.optimizer_bytes)
                 << ", activation arena " << mib(r.arena_bytes) << "\n";
  } else {
    bool zero = false;
    for (const plan::RankPlan &q : p.ranks) zero |= q.bytes_sent.count("broadcast") > 0;
    llvm::outs() << "  rank  dp tp pp  slots  peak memory  params+grads+AdamW  arena x slots  GFLOP/step  all_reduce/step  send/step  bubble"
                 << (zero ? "  broadcast/step (ZeRO-1)" : "") << "\n";
    for (const plan::RankPlan &q : p.ranks) {
      auto sent = [&](const char *k) { auto it = q.bytes_sent.find(k); return it == q.bytes_sent.end() ? int64_t(0) : it->second; };
      llvm::outs() << llvm::format("  %4d  %2d %2d %2d  %5d  %11s  %18s  %13s  %10.3f  %15s  %9s  %5.1f%%", q.rank, q.dp_rank,
                                   q.tp_rank, q.pp_stage, q.slots, human_bytes(q.peak_bytes).c_str(),
                                   human_bytes(q.param_bytes + q.grad_bytes + q.optimizer_bytes).c_str(),
                                   human_bytes(q.arena_bytes * q.slots).c_str(), q.flops_per_step / 1e9,
                                   human_bytes(sent("all_reduce")).c_str(), human_bytes(sent("send")).c_str(),
                                   100.0 * q.bubble_fraction);
      if (zero) llvm::outs() << "  " << human_bytes(sent("broadcast"));
      llvm::outs() << "\n";
    }
  }
  double total = 0;
  for (const plan::RankPlan &q : p.ranks) total += q.flops_per_step;
  llvm::outs() << "  compute: " << llvm::format("%.3f", total / 1e9) << " GFLOP per optimizer step over all ranks ("
               << llvm::format("%.0f", total / double(global_batch * p.seq_len)) << " FLOP per token)\n";
  if (p.mesh.pp > 1) llvm::outs() << "  " << rt::bubble_report(p) << "\n";
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"lora-compile: compile a LLaMA model with LoRA adapters into Parallora IR.\n"
               "Input is an ONNX export of Hugging Face LlamaForCausalLM (with or without PEFT LoRA) or an HF config.json."};
  Args a;
  auto *onnx_opt = app.add_option("--onnx", a.onnx, "ONNX model exported by torch.onnx.export (external data next to it)")->check(CLI::ExistingFile);
  app.add_option("--hf-config", a.hf_config, "Hugging Face config.json of a LLaMA model (with --onnx: the exported model's config, for rope scaling)")->check(CLI::ExistingFile);
  (void)onnx_opt;
  app.add_option("--weights", a.weights, "HF checkpoint: directory with model.safetensors or model.safetensors.index.json, or one .safetensors file")->check(CLI::ExistingPath);
  app.add_option("--batch", a.batch, "global batch in sequences (fixes a symbolic batch dim)")->check(cli::at_least(1));
  app.add_option("--seq-len", a.seq_len, "sequence length in tokens, at least 2 (the next-token loss needs a next token); "
                                         "fixes a symbolic sequence dim")->check(cli::at_least(2, "the next-token loss needs at least 2 tokens per sequence"));
  auto *rank_opt = app.add_option("--lora-rank", a.lora_rank, "LoRA rank r")->check(cli::at_least(1));
  auto *alpha_opt = app.add_option("--lora-alpha", a.lora_alpha, "LoRA alpha (scaling = alpha / r)")->check(cli::positive_number());
  auto *dropout_opt = app.add_option("--lora-dropout", a.lora_dropout, "LoRA dropout on the adapter input, in [0, 0.999] (training only; the mask is Philox of lora-run --seed, docs/training.md)")->check(cli::number_range(0.0, 0.999));
  auto *targets_opt = app.add_option("--lora-targets", a.lora_targets, "comma-separated PEFT module names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear");
  auto *rslora_opt = app.add_flag("--use-rslora", a.use_rslora, "rank-stabilised LoRA: scaling = alpha / sqrt(r)");
  app.add_flag("--no-lora", a.no_lora, "do not inject LoRA adapters");
  app.add_flag("--packing", a.packing,
               "sequence packing: the plan takes position_ids and segment_ids inputs (B x T, like input_ids); positions "
               "restart at 0 for each example packed into a row (RoPE) and attention never crosses into another "
               "example (block-diagonal causal mask), as transformers does with position_ids");
  app.add_option("--dump-ir", a.dump_ir, "write the final IR (MLIR text) to this file ('-' for stdout)");
  app.add_option("--dump-graph", a.dump_graph, "write the graph as Graphviz DOT (render: dot -Tsvg out.dot -o out.svg)");
  app.add_option("--dump-ir-after-all", a.dump_after_all, "write the IR after import and after every pass into this folder");
  // Training step (the plan).
  app.add_option("-o,--output", a.output, "write the training plan (lora-run's input) to this file, e.g. plan.lp; needs --batch and --seq-len");
  app.add_flag("--train-ir", a.train_ir, "run the training passes (loss, autodiff, AdamW) even without -o, e.g. to --dump-ir them");
  app.add_option("--micro-batches", a.micro_batches, "gradient accumulation: micro-batches per optimizer step (must divide --batch)")->check(cli::at_least(1));
  app.add_option("--lr", a.lr, "peak learning rate")->check(cli::positive_number());
  app.add_option("--warmup", a.warmup, "linear warmup steps")->check(cli::at_least(0));
  auto *lr_sched_opt = app.add_option("--lr-schedule", a.lr_schedule, "LR after warmup: constant, cosine or linear")->check(CLI::IsMember({"constant", "cosine", "linear"}));
  auto *pipe_opt = app.add_option("--pipeline-schedule", a.pipe_schedule,
                                  "pipeline-parallel schedule of the micro-batches: gpipe, 1f1b, interleaved "
                                  "(Megatron's virtual pipeline: --virtual-stages chunks of layers per rank; "
                                  "--micro-batches a multiple of --pp) or zb-h1 (zero bubble: the backward's "
                                  "weight-gradient part deferred into the bubbles) (default 1f1b; plans with --pp 2 "
                                  "or more)")
                       ->check(CLI::IsMember({"gpipe", "1f1b", "interleaved", "zb-h1"}));
  auto *vstages_opt = app.add_option("--virtual-stages", a.virtual_stages,
                                     "interleaved: model chunks per rank (default 2); rank s holds chunks s, pp + s, ...")
                          ->check(cli::at_least(1));
  app.add_option("--schedule", a.schedule, "alias of --pipeline-schedule (gpipe, 1f1b, interleaved, zb-h1), kept for "
                                           "old command lines; constant/cosine/linear are taken as --lr-schedule")
      ->check(CLI::IsMember({"gpipe", "1f1b", "interleaved", "zb-h1", "constant", "cosine", "linear"}));
  // Parallelism.
  app.add_option("--strategy", a.strategy, "single, data, tensor, pipeline or hybrid (also the seed's data_parallel, model_parallel / tensor_parallel, "
                                           "pipeline_parallel, hybrid_parallel); default: from --dp/--tp/--pp. auto: enumerate the "
                                           "strategies for --devices N on --device-profile, rank them by predicted step time and "
                                           "compile the fastest that fits --memory-limit (docs/planner.md)");
  app.add_option("--dp", a.dp, "data-parallel degree (the global --batch is split over dp ranks)")->check(cli::at_least(1));
  app.add_option("--tp", a.tp, "tensor-parallel degree (Megatron: heads, MLP and vocabulary split)")->check(cli::at_least(1));
  app.add_option("--pp,--stages", a.pp, "pipeline stages (contiguous layers, balanced by FLOPs)")->check(cli::at_least(1));
  app.add_option("--gpus", a.gpus, "devices of a data_parallel / model_parallel run (the seed's spelling of --dp / --tp)")
      ->check(cli::at_least(1));
  app.add_option("--nodes", a.nodes, "nodes of the run (with --gpus-per-node: the world size)")->check(cli::at_least(1));
  app.add_option("--gpus-per-node,--gpus_per_node", a.gpus_per_node, "ranks per node (hybrid: tensor parallel within a node, pipeline across nodes)")->check(cli::at_least(1));
  app.add_option("--model-size,--model_size", a.model_size, "built-in model config instead of --hf-config: 1B (Llama-3.2-1B), 1.1B (TinyLlama), tiny");
  app.add_option("--bucket-mb", a.bucket_mb, "data-parallel gradient bucket size in MiB")->check(cli::positive_number());
  app.add_flag("--zero1", a.zero1, "ZeRO-1: shard the AdamW moments over the data-parallel ranks");
  app.add_option("--precision", a.precision, "storage precision: fp32, or bf16 = frozen weights and activations in bf16 "
                                             "(adapters, gradients, AdamW moments stay fp32; math in fp32)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--recompute", a.recompute,
                 "activation recomputation: none, or layers = keep only each decoder layer's output and recompute "
                 "the layer's forward in the backward (less memory, about one more forward)")
      ->check(CLI::IsMember({"none", "layers"}));
  app.add_flag("--no-overlap-grad-sync", a.no_overlap,
               "reduce all gradient buckets before the optimizer instead of starting each in the backward as soon as "
               "its last gradient is written");
  app.add_option("--device-profile", a.device_profile,
                 "cost model's device: a name in models/devices (cpu-local, h100-sxm-nvlink, h100-pcie) or a profile "
                 "file; the predicted step time is stored in the plan and printed (docs/planner.md)");
  app.add_flag("--cost-breakdown", a.cost_breakdown, "also print rank 0's predicted time per kernel and step (compare: lora-run --profile)");
  app.add_option("--devices", a.auto_req.devices, "--strategy auto: the number of devices (ranks) to plan for")->check(cli::at_least(1));
  app.add_option("--memory-limit", a.auto_req.memory_limit_gib,
                 "--strategy auto: per-device memory in GiB that a plan's predicted peak must fit (default: the device profile's memory_gib)")
      ->check(cli::positive_number());
  app.add_flag("--explain", a.auto_req.explain, "--strategy auto: also print every rejected mesh (and interleaved virtual-stage count) with its reason and the candidates over the memory limit");
  app.add_option("--top", a.auto_req.top, "--strategy auto: candidates printed, compiled and costed exactly before the choice (default 5)")
      ->check(cli::at_least(1));
  app.add_option("--viz", a.viz, "write pictures of the plan into this folder: per-rank graphs (DOT/SVG), pipeline timeline, index.html");
  app.add_option("--viz-trace", a.viz_trace, "--viz: also draw one step of this lora-run --trace file (a run of the same plan) "
                                             "beside the predicted timeline, with the measured bubble per rank")
      ->check(CLI::ExistingFile);
  app.add_option("--viz-step", a.viz_step, "--viz-trace: the step drawn (default: the median step, the first excluded)")
      ->check(cli::at_least(1));
  app.add_option("--min-lr-ratio", a.min_lr_ratio, "floor of the cosine/linear decay, as a fraction of --lr")->check(cli::number_range(0.0, 1.0));
  app.add_option("--total-steps", a.total_steps, "decay horizon of the schedule (default: lora-run's --steps)")->check(cli::at_least(0));
  app.add_option("--weight-decay", a.weight_decay, "AdamW decoupled weight decay")->check(cli::non_negative_number());
  app.add_option("--beta1", a.beta1, "AdamW beta1")->check(cli::number_range(0.0, 0.999999));
  app.add_option("--beta2", a.beta2, "AdamW beta2")->check(cli::number_range(0.0, 0.999999));
  app.add_option("--adam-eps", a.adam_eps, "AdamW epsilon")->check(cli::positive_number());
  app.add_option("--max-grad-norm", a.max_grad_norm, "global gradient-norm clipping (0 = off)")->check(cli::non_negative_number());
  app.footer("Examples:\n"
             "  lora-compile --hf-config models/configs/tiny-llama.json --batch 8 --seq-len 64 --micro-batches 2 \\\n"
             "      --lora-rank 8 --lora-alpha 16 --lora-targets all-linear --lr 1e-3 --warmup 10 --lr-schedule cosine -o plan.lp\n"
             "  lora-compile --onnx model.onnx --weights hf_dir/ --batch 4 --seq-len 128 -o plan.lp\n"
             "  lora-compile --hf-config models/configs/tiny-llama.json --batch 8 --seq-len 64 --micro-batches 4 \\\n"
             "      --strategy hybrid --dp 2 --tp 2 --pp 2 --pipeline-schedule 1f1b -o plan.lp --viz plan_viz/   # 8 ranks\n"
             "  lora-compile --strategy data_parallel --model-size 1B --nodes 2 --gpus-per-node 4 --batch 16 --seq-len 2048 -o plan.lp\n"
             "  lora-compile --hf-config config.json --dump-ir model.mlir --dump-graph model.dot\n"
             "  lora-compile --model-size 1B --batch 64 --seq-len 2048 --strategy auto --devices 64 --device-profile h100-sxm-nvlink \\\n"
             "      --memory-limit 80 --explain -o plan.lp");
  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
  auto usage = [](const std::string &msg) {
    std::cerr << "error: " << msg << " (see lora-compile --help)\n";
    return cli::kExitUsageError;
  };
  if (!a.schedule.empty()) {
    if (a.schedule == "gpipe" || a.schedule == "1f1b" || a.schedule == "interleaved" || a.schedule == "zb-h1") {
      if (pipe_opt->count() && a.pipe_schedule != a.schedule)
        return usage("--schedule " + a.schedule + " and --pipeline-schedule " + a.pipe_schedule +
                     " disagree; --schedule is an alias of --pipeline-schedule, give one");
      a.pipe_schedule = a.schedule;
    } else {
      if (lr_sched_opt->count() && a.lr_schedule != a.schedule)
        return usage("--schedule " + a.schedule + " and --lr-schedule " + a.lr_schedule + " disagree; give one");
      a.lr_schedule = a.schedule;
    }
  }
  bool pipe_given = pipe_opt->count() > 0 || a.schedule == "gpipe" || a.schedule == "1f1b" ||
                          a.schedule == "interleaved" || a.schedule == "zb-h1";
  if (vstages_opt->count() && a.pipe_schedule != "interleaved")
    return usage("--virtual-stages " + std::to_string(a.virtual_stages) +
                 " needs --pipeline-schedule interleaved (not " + a.pipe_schedule + ")");
  if (a.pipe_schedule == "interleaved" && a.virtual_stages == 0) a.virtual_stages = 2;
  if (!a.model_size.empty()) {
    static const std::map<std::string, std::string> sizes = {
        {"1B", "llama-3.2-1b.json"}, {"1b", "llama-3.2-1b.json"}, {"1.1B", "tinyllama-1.1b.json"},
        {"1.1b", "tinyllama-1.1b.json"}, {"tiny", "tiny-llama.json"}};
    auto it = sizes.find(a.model_size);
    if (it == sizes.end()) {
      std::cerr << "error: --model-size " << a.model_size << ": choose 1B, 1.1B or tiny\n";
      return 2;
    }
    if (!a.hf_config.empty() || !a.onnx.empty()) {
      std::cerr << "error: give either --model-size or --hf-config/--onnx\n";
      return 2;
    }
    a.hf_config = std::string(PARALLORA_MODELS_DIR) + "/" + it->second;
  }
  if (a.strategy == "auto") {  // choose dp x tp x pp and the rest, then compile as usual
    if (a.dp || a.tp || a.pp || a.gpus || a.nodes) return usage("--strategy auto chooses the mesh itself: give --devices N, not --dp/--tp/--pp/--gpus/--nodes");
    AutoRequest &r = a.auto_req;
    r.hf_config = a.hf_config, r.batch = a.batch, r.seq_len = a.seq_len, r.lora_rank = a.lora_rank, r.lora_alpha = a.lora_alpha;
    r.lora_targets = a.lora_targets, r.device_profile = a.device_profile, r.bucket_mb = a.bucket_mb, r.no_overlap = a.no_overlap;
    if (app.get_option("--micro-batches")->count()) r.micro_batches = a.micro_batches;
    if (pipe_given) r.schedule = a.pipe_schedule;
    if (vstages_opt->count()) r.virtual_stages = a.virtual_stages;
    if (app.get_option("--precision")->count()) r.precision = a.precision;
    if (app.get_option("--recompute")->count()) r.recompute = a.recompute;
    if (a.zero1) r.zero1 = true;
    AutoChoice c;
    if (int rc = choose_strategy(r, c)) return rc;
    pipe_given = pipe_given && c.pp > 1;  // auto chose no pipeline: the schedule given does not apply, no warning
    a.strategy = "hybrid", a.dp = c.dp, a.tp = c.tp, a.pp = c.pp, a.micro_batches = c.micro_batches;
    a.pipe_schedule = c.schedule, a.virtual_stages = c.virtual_stages, a.precision = c.precision, a.recompute = c.recompute, a.zero1 = c.zero1;
  } else if (a.auto_req.devices || a.auto_req.explain || a.auto_req.memory_limit_gib > 0) {
    return usage("--devices, --memory-limit and --explain go with --strategy auto");
  }
  std::string strategy;
  if (!resolve_mesh(a, strategy)) return 2;
  if (a.pipe_schedule == "interleaved" && a.pp > 1 && a.micro_batches % a.pp != 0)
    return usage("--pipeline-schedule interleaved runs micro-batches in groups of --pp: --micro-batches " +
                 std::to_string(a.micro_batches) + " is not a multiple of --pp " + std::to_string(a.pp));
  const bool parallel = a.dp * a.tp * a.pp > 1;
  if (pipe_given && a.pp < 2)
    std::cerr << "lora-compile: warning: --pipeline-schedule " << a.pipe_schedule
              << " only applies to pipeline plans (--pp 2 or more)\n";
  if (a.zero1 && a.dp < 2) {
    std::cerr << "error: --zero1 shards the optimizer over data-parallel ranks; it needs --dp 2 or more\n";
    return 2;
  }
  if (!a.viz.empty() && a.output.empty()) {
    std::cerr << "error: --viz draws the plan; give -o plan.lp too\n";
    return 2;
  }
  if (!a.viz_trace.empty() && a.viz.empty()) return usage("--viz-trace draws into the viewer; give --viz dir/ too");
  if (a.viz_step >= 0 && a.viz_trace.empty()) return usage("--viz-step picks a step of --viz-trace; give --viz-trace too");
  bool build_train = !a.output.empty() || a.train_ir || parallel;
  if (a.onnx.empty() && a.hf_config.empty()) {
    std::cerr << "error: give the model with --onnx model.onnx or --hf-config config.json (see --help)\n";
    return 2;
  }
  // --batch is the global batch; the graph is built for one micro-batch of batch / micro-batches.
  int64_t micro_batch = a.batch;
  if (a.batch > 0) {
    if (a.batch % (a.micro_batches * a.dp) != 0) {
      std::cerr << "error: --batch " << a.batch << " must be a multiple of --micro-batches " << a.micro_batches
                << " x --dp " << a.dp << " (every data-parallel rank runs the same number of equal micro-batches)\n";
      return 2;
    }
    micro_batch = a.batch / a.micro_batches;  // partition divides it by dp
  }
  if (build_train && a.onnx.empty() && (a.batch <= 0 || a.seq_len <= 0)) {
    std::cerr << "error: a training plan has fixed shapes: give --batch and --seq-len\n";
    return 2;
  }

  MLIRContext ctx;
  ctx.loadDialect<pl::PlDialect, func::FuncDialect>();
  ctx.printOpOnDiagnostic(false);  // errors name the op and its module path; a dump of the IR would bury them
  llvm::SourceMgr source_mgr;  // outlives the handler (declared first, destroyed last)
  SourceMgrDiagnosticHandler diag(source_mgr, &ctx, llvm::errs());
  auto t0 = std::chrono::steady_clock::now();

  std::optional<LlamaConfig> config;
  std::string config_path = a.hf_config;
  if (!a.hf_config.empty()) {
    auto c = load_llama_config(a.hf_config);
    if (!c) { llvm::errs() << "error: " << c.message() << "\n"; return 1; }
    config = *c;
  }
  OwningOpRef<ModuleOp> module;
  OnnxImportReport report;
  OnnxImportOptions io;
  if (!a.onnx.empty()) {
    io.batch = micro_batch;
    io.seq_len = a.seq_len;
    io.micro_batches = a.micro_batches;
    // An HF config.json next to the ONNX file supplies rope scaling (not recoverable from tables).
    std::string dir = a.onnx.substr(0, a.onnx.rfind('/') + 1);
    if (config) {
      io.config = config;
    } else if (llvm::sys::fs::exists(dir + "config.json")) {
      auto c = load_llama_config(dir + "config.json");
      if (c) {
        io.config = *c;
        config_path = dir + "config.json";
        config = *c;
      }
    }
    auto m = import_onnx(ctx, a.onnx, io, &report);
    if (failed(m)) return 1;
    module = std::move(*m);
    if (config && !check_config_matches(*module, *config, a.onnx, config_path)) return 1;
    // A PEFT export's adapters are the ones trained; adding --lora-* adapters beside them would
    // give a model of mixed ranks that one adapter_config.json (one r, one alpha) cannot describe.
    if (!report.lora_modules.empty() && !a.no_lora) {
      std::string flags;
      for (auto [opt, name] : {std::pair<CLI::Option *, const char *>{rank_opt, "--lora-rank"}, {alpha_opt, "--lora-alpha"},
                               {targets_opt, "--lora-targets"}, {dropout_opt, "--lora-dropout"}, {rslora_opt, "--use-rslora"}})
        if (opt->count()) flags += (flags.empty() ? "" : ", ") + std::string(name);
      if (!flags.empty()) {
        std::cerr << "error: " << a.onnx << " is a PEFT export: it already carries LoRA adapters on "
                  << report.lora_modules.size() << " module(s); " << flags
                  << " would add adapters of another rank beside them, which the saved adapter_config.json cannot "
                     "describe. Drop " << flags << " to train the export's adapters, or export the model without PEFT\n";
        return 2;
      }
    }
    llvm::outs() << "lora-compile: imported " << a.onnx << " (" << report.onnx_nodes << " ONNX nodes, " << report.folded_nodes
                 << " folded) in " << llvm::format("%.2f", seconds_since(t0)) << " s\n";
  } else {
    module = build_llama_module(ctx, *config, micro_batch > 0 ? micro_batch : ShapedType::kDynamic,
                                a.seq_len > 0 ? a.seq_len : ShapedType::kDynamic);
    if (!module) return 1;
    llvm::outs() << "lora-compile: built " << a.hf_config << " in " << llvm::format("%.2f", seconds_since(t0)) << " s\n";
  }
  if (!a.weights.empty()) {
    auto store = WeightStore::open(a.weights);
    if (!store) { llvm::errs() << "error: " << store.message() << "\n"; return 1; }
    if (!check_weights(*module, *store, a.weights)) return 1;
    llvm::outs() << "  weights: " << a.weights << " matches every base parameter\n";
  }

  // Positions beyond max_position_embeddings: rope extrapolates, the model never saw them.
  // transformers only warns, and so do we (a longer context may be the point of the fine-tune).
  if (auto fwd = module->lookupSymbol<func::FuncOp>("forward"); fwd && config && fwd.getNumArguments() > 0)
    if (auto ids = fwd.getFunctionType().getInput(0).dyn_cast<RankedTensorType>();
        ids && ids.getRank() == 2 && !ids.isDynamicDim(1) && ids.getDimSize(1) > config->max_position_embeddings)
      std::cerr << "lora-compile: warning: sequence length " << ids.getDimSize(1) << " exceeds max_position_embeddings "
                << config->max_position_embeddings << " of " << config_path
                << "; the model was not trained on positions beyond it (transformers warns likewise)\n";

  if (!a.dump_after_all.empty()) {
    llvm::sys::fs::create_directories(a.dump_after_all);
    std::error_code ec;
    llvm::raw_fd_ostream os(a.dump_after_all + "/00-import.mlir", ec);
    module->print(os);
  }

  // Passes: LoRA injection unless the imported graph already carries PEFT adapters.
  bool has_lora = false;
  module->walk([&](pl::LoraLinearOp) { has_lora = true; });
  bool inject = !a.no_lora && (!has_lora || targets_opt->count() > 0);
  PassManager pm(&ctx);
  if (inject) {
    InjectLoraOptions lo;
    lo.rank = a.lora_rank;
    lo.alpha = a.lora_alpha;
    lo.dropout = a.lora_dropout;
    lo.targets = a.lora_targets;
    lo.useRslora = a.use_rslora;
    buildLoraPassPipeline(pm, lo);
  } else {
    pm.addPass(createFreezeBase());
  }
  if (a.packing) pm.addPass(createPackSequences());
  if (!a.dump_after_all.empty()) {
    ctx.disableMultithreading();
    std::string dir = a.dump_after_all;
    pm.enableIRPrinting([](Pass *, Operation *) { return false; }, [](Pass *, Operation *) { return true; },
                        /*printModuleScope=*/true, /*printAfterOnlyOnChange=*/false, /*printAfterOnlyOnFailure=*/false,
                        *new llvm::raw_fd_ostream(dir + "/passes.mlir", *new std::error_code()));
  }
  if (failed(pm.run(*module))) return 1;

  print_summary(*module, a.onnx.empty() ? nullptr : &report, a);

  // An ONNX file carries its model: its initializers (inline or external data) are the base
  // weights unless --weights overrides them, and a PEFT export's adapter values are the
  // adapters' init. The runtime reads no ONNX (layering), so lora-compile -o writes the values
  // once to "<plan>.weights.safetensors" (f32, memory-mapped by lora-run) and the plan records it.
  std::string onnx_weights_file;
  bool onnx_base_written = false, onnx_adapters_written = false;
  if (!a.onnx.empty() && !a.output.empty() && (a.weights.empty() || !report.lora_modules.empty())) {
    std::set<std::string> trainable;
    module->walk([&](pl::ParamOp p) { if (p.getTrainable()) trainable.insert(p.getName().str()); });
    std::vector<OnnxParamValues> values;
    Status st = read_onnx_parameters(*module, a.onnx, io, [&](OnnxParamValues &v) {
      v.trainable = trainable.count(v.name) > 0;
      if (v.trainable || a.weights.empty()) values.push_back(std::move(v));
      return Status::ok();
    });
    if (!st) { llvm::errs() << "error: " << st.message() << "\n"; return 1; }
    if (!values.empty()) {
      std::vector<TensorToWrite> tensors;
      int64_t base = 0, adapters = 0, bytes = 0;
      for (const OnnxParamValues &v : values) {
        tensors.push_back({v.name, DType::F32, v.shape, v.values.data()});
        (v.trainable ? adapters : base) += 1;
        bytes += int64_t(v.values.size()) * 4;
      }
      llvm::StringRef parent = llvm::sys::path::parent_path(a.output);
      if (!parent.empty()) llvm::sys::fs::create_directories(parent);
      llvm::SmallString<256> abs(a.output + ".weights.safetensors");
      llvm::sys::fs::make_absolute(abs);
      onnx_weights_file = abs.str().str();
      st = write_safetensors(onnx_weights_file, tensors, {{"format", "pt"}, {"source", a.onnx}});
      if (!st) { llvm::errs() << "error: " << st.message() << "\n"; return 1; }
      onnx_base_written = base > 0;
      onnx_adapters_written = adapters > 0;
      llvm::outs() << "  weights: " << base << " base tensor(s)" << (a.weights.empty() ? "" : " (none: --weights overrides)")
                   << " and " << adapters << " PEFT adapter tensor(s) from the ONNX initializers -> "
                   << onnx_weights_file << " (" << mib(bytes) << ")\n";
    }
  }

  // Training phase: loss, gradients of the adapters, AdamW.
  int64_t global_batch = 0;
  if (build_train) {
    auto fwd = module->lookupSymbol<func::FuncOp>("forward");
    auto ids = fwd ? fwd.getFunctionType().getInput(0).dyn_cast<RankedTensorType>() : nullptr;
    if (!ids || !ids.hasStaticShape()) {
      llvm::errs() << "error: the model's input_ids shape is not fixed; give --batch and --seq-len\n";
      return 2;
    }
    if (ids.getDimSize(1) < 2) {
      llvm::errs() << "error: " << a.onnx << ": the export's input_ids have a fixed sequence length of "
                   << ids.getDimSize(1) << "; the next-token loss needs at least 2 tokens per sequence: re-export with "
                   << "a longer or dynamic sequence dim (then pass --seq-len)\n";
      return 2;
    }
    global_batch = ids.getDimSize(0) * a.micro_batches;  // before partitioning: the whole micro-batch
    TrainPassPipelineOptions to;
    to.autodiff.microBatches = a.micro_batches;
    to.adamw.lr = a.lr;
    to.adamw.beta1 = a.beta1;
    to.adamw.beta2 = a.beta2;
    to.adamw.eps = a.adam_eps;
    to.adamw.weightDecay = a.weight_decay;
    to.adamw.maxGradNorm = a.max_grad_norm;
    to.adamw.schedule = a.lr_schedule;
    to.adamw.warmupSteps = a.warmup;
    to.adamw.minLrRatio = a.min_lr_ratio;
    to.adamw.totalSteps = a.total_steps;
    to.recompute_layers = a.recompute == "layers";
    PassManager tpm(&ctx);
    if (parallel) {
      ParallelPassPipelineOptions po;
      po.partition.dp = a.dp;
      po.partition.tp = a.tp;
      po.partition.pp = a.pp;
      po.sync.bucketMb = a.bucket_mb;
      po.sync.zero1 = a.zero1;
      po.pipeline.schedule = a.pipe_schedule;
      po.pipeline.virtualStages = std::max<int64_t>(1, a.virtual_stages);
      buildParallelTrainPassPipeline(tpm, to, po);
    } else {
      buildTrainPassPipeline(tpm, to);
    }
    if (!a.dump_after_all.empty()) {
      ctx.disableMultithreading();
      tpm.enableIRPrinting([](Pass *, Operation *) { return false; }, [](Pass *, Operation *) { return true; },
                           true, false, false, *new llvm::raw_fd_ostream(a.dump_after_all + "/train-passes.mlir", *new std::error_code()));
    }
    if (failed(tpm.run(*module))) return 1;
    int64_t grads = 0, bwd = 0;
    module->walk([&](pl::AccumulateGradOp) { ++grads; });
    module->walk([&](Operation *op) {
      if (isa<pl::CrossEntropyGradOp, pl::RMSNormGradOp, pl::LinearGradInputOp, pl::LoraLinearGradOp, pl::RopeGradOp,
              pl::AttentionGradOp, pl::SwigluGradOp>(op)) ++bwd;
    });
    llvm::outs() << "  training step: global batch " << global_batch << " x " << ids.getDimSize(1) << " tokens in "
                 << a.micro_batches << " micro-batch(es) of " << ids.getDimSize(0) << "; " << bwd << " gradient ops, "
                 << grads << " adapter gradients; AdamW lr " << llvm::format("%g", a.lr) << " (" << a.lr_schedule << ", warmup "
                 << a.warmup << "), weight decay " << llvm::format("%g", a.weight_decay) << ", clip "
                 << llvm::format("%g", a.max_grad_norm) << "\n";
  }
  if (!a.dump_ir.empty()) {
    std::error_code ec;
    llvm::raw_fd_ostream os(a.dump_ir, ec);
    if (ec) { llvm::errs() << "error: --dump-ir " << a.dump_ir << ": " << ec.message() << "\n"; return 1; }
    module->print(os, OpPrintingFlags().useLocalScope());
    llvm::outs() << "  IR written to " << a.dump_ir << "\n";
  }
  if (!a.dump_graph.empty()) {
    std::ofstream os(a.dump_graph);
    if (!os) { llvm::errs() << "error: --dump-graph " << a.dump_graph << ": cannot write\n"; return 1; }
    write_graph_dot(*module, os);
    llvm::outs() << "  graph written to " << a.dump_graph << " (render: dot -Tsvg " << a.dump_graph << " -o graph.svg)\n";
  }
  if (!a.output.empty()) {
    LowerOptions lo;
    lo.global_batch = global_batch;
    lo.micro_batches = a.micro_batches;
    if (!a.weights.empty()) {
      llvm::SmallString<256> abs(a.weights);
      llvm::sys::fs::make_absolute(abs);
      lo.base_weights = abs.str().str();
    } else if (onnx_base_written) {
      lo.base_weights = onnx_weights_file;
    }
    lo.producer = "lora-compile 0.1.0";
    lo.strategy = strategy;
    lo.precision = a.precision;
    lo.overlap_grad_sync = !a.no_overlap;
    module->walk([&](pl::LoraLinearOp l) {
      lo.lora.rank = l.getRank();
      lo.lora.alpha = l.getAlpha().convertToDouble();
      lo.lora.dropout = l.getDropout().convertToDouble();
      std::string m = l.getModule().str();
      std::string t = m.substr(m.rfind('.') + 1);
      if (std::find(lo.lora.target_modules.begin(), lo.lora.target_modules.end(), t) == lo.lora.target_modules.end())
        lo.lora.target_modules.push_back(t);
    });
    std::sort(lo.lora.target_modules.begin(), lo.lora.target_modules.end());
    lo.lora.use_rslora = a.use_rslora;
    auto p = lower_to_plan(*module, lo);
    if (failed(p)) return 1;
    if (onnx_adapters_written) p->adapter_weights = onnx_weights_file;
    std::string prediction;
    if (Status ps = predict_plan(*p, a.device_profile, prediction, a.cost_breakdown); !ps) {
      if (app.get_option("--device-profile")->count()) { llvm::errs() << "error: " << ps.message() << "\n"; return 2; }
      // The default profile (the source tree's cpu-local.json) may be absent from an installed
      // lora-compile: the plan is still written, without a prediction.
      prediction = "  no prediction: " + ps.message() + " (give --device-profile)\n";
    }
    llvm::StringRef parent = llvm::sys::path::parent_path(a.output);
    if (!parent.empty()) llvm::sys::fs::create_directories(parent);
    Status st = plan::write_plan(a.output, *p);
    if (!st) { llvm::errs() << "error: " << st.message() << "\n"; return 1; }
    print_plan_report(*p, global_batch);
    llvm::outs() << prediction;
    if (!a.viz.empty()) {
      Status vs = write_plan_viz(*p, a.viz, std::cout, VizOptions{a.viz_trace, a.viz_step});
      if (!vs) { llvm::errs() << "error: --viz " << a.viz << ": " << vs.message() << "\n"; return 1; }
      std::cout.flush();
      llvm::outs() << "  pictures written to " << a.viz << "/index.html\n";
    }
    llvm::outs() << "  plan written to " << a.output << " (inspect: lora-run --describe " << a.output << ")\n";
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  llvm::outs() << "  done in " << llvm::format("%.2f", seconds_since(t0)) << " s, peak RSS " << ru.ru_maxrss / 1024 << " MiB\n";
  return 0;
}
