//===- lora-compile.cpp - LLaMA (+LoRA) graph -> `pl` IR -> training plan ---===//
//
//   lora-compile --onnx model.onnx | --hf-config config.json [--weights dir]
//                [--batch B --seq-len T] [--lora-rank 16 --lora-alpha 32 --lora-targets ...] [--packing]
//                [--micro-batches M --lr ... --warmup ... --lr-schedule ... --weight-decay ...]
//                [--strategy single|data|tensor|pipeline|hybrid --dp N --tp N --pp N --pipeline-schedule gpipe|1f1b|interleaved|zb-h1 --virtual-stages V]
//                [-o plan.lp] [--viz dir/] [--dump-ir out.mlir] [--dump-graph out.dot] [--dump-ir-after-all dir/]
//
// The flags and their checks are options.h; this file compiles. Failures print a diagnostic
// naming the file/node/flag; exit codes follow tools/common/cli.h: 1 for a bad model, file or
// compilation, 2 for a bad command line.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>
#include <sys/resource.h>

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
#include "tools/lora-compile/options.h"
#include "tools/lora-compile/viz.h"

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

void print_summary(ModuleOp module, const OnnxImportReport *rep, const CompileOptions &args) {
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
  CompileOptions a;
  if (int rc = parse_options(argc, argv, a); rc >= 0) return rc;
  const std::string &strategy = a.resolved_strategy;
  const bool parallel = a.parallel, build_train = a.build_train;
  const int64_t micro_batch = a.micro_batch;

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
      for (const std::string &name : a.lora_flags_given) flags += (flags.empty() ? "" : ", ") + name;
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
  bool inject = !a.no_lora && (!has_lora || a.lora_targets_given);
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
      if (a.device_profile_given) { llvm::errs() << "error: " << ps.message() << "\n"; return 2; }
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
