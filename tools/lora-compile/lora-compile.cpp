//===- lora-compile.cpp - LLaMA (+LoRA) graph -> `pl` IR (and, later, plans) ===//
//
//   lora-compile --onnx model.onnx | --hf-config config.json [--weights dir]
//                [--batch B --seq-len T] [--lora-rank 16 --lora-alpha 32 --lora-targets ...]
//                [--dump-ir out.mlir] [--dump-graph out.dot] [--dump-ir-after-all dir/]
//
// Failures print a diagnostic naming the file/node/flag and exit non-zero.
//
//===----------------------------------------------------------------------===//
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sys/resource.h>

#include <CLI/CLI.hpp>

#include "frontend/hf_config.h"
#include "frontend/onnx/onnx_importer.h"
#include "frontend/safetensors.h"
#include "ir/Dialect.h"
#include "models/llama_builder.h"
#include "passes/lora/Passes.h"
#include "tools/lora-compile/graph_dot.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "llvm/Support/FileSystem.h"
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
  std::string dump_ir, dump_graph, dump_after_all;
};

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
  (void)args;
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
  app.add_option("--batch", a.batch, "global batch in sequences (fixes a symbolic batch dim)")->check(CLI::PositiveNumber);
  app.add_option("--seq-len", a.seq_len, "sequence length (fixes a symbolic sequence dim)")->check(CLI::PositiveNumber);
  app.add_option("--lora-rank", a.lora_rank, "LoRA rank r")->check(CLI::PositiveNumber);
  app.add_option("--lora-alpha", a.lora_alpha, "LoRA alpha (scaling = alpha / r)");
  app.add_option("--lora-dropout", a.lora_dropout, "LoRA dropout probability")->check(CLI::Range(0.0, 0.999));
  auto *targets_opt = app.add_option("--lora-targets", a.lora_targets, "comma-separated PEFT module names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear");
  app.add_flag("--use-rslora", a.use_rslora, "rank-stabilised LoRA: scaling = alpha / sqrt(r)");
  app.add_flag("--no-lora", a.no_lora, "do not inject LoRA adapters");
  app.add_option("--dump-ir", a.dump_ir, "write the final IR (MLIR text) to this file ('-' for stdout)");
  app.add_option("--dump-graph", a.dump_graph, "write the graph as Graphviz DOT (render: dot -Tsvg out.dot -o out.svg)");
  app.add_option("--dump-ir-after-all", a.dump_after_all, "write the IR after import and after every pass into this folder");
  CLI11_PARSE(app, argc, argv);
  if (a.onnx.empty() && a.hf_config.empty()) {
    std::cerr << "error: give the model with --onnx model.onnx or --hf-config config.json (see --help)\n";
    return 2;
  }

  MLIRContext ctx;
  ctx.loadDialect<pl::PlDialect, func::FuncDialect>();
  SourceMgrDiagnosticHandler diag(*new llvm::SourceMgr(), &ctx, llvm::errs());
  auto t0 = std::chrono::steady_clock::now();

  std::optional<LlamaConfig> config;
  if (!a.hf_config.empty()) {
    auto c = load_llama_config(a.hf_config);
    if (!c) { llvm::errs() << "error: " << c.message() << "\n"; return 1; }
    config = *c;
  }
  OwningOpRef<ModuleOp> module;
  OnnxImportReport report;
  if (!a.onnx.empty()) {
    OnnxImportOptions io;
    io.batch = a.batch;
    io.seq_len = a.seq_len;
    // An HF config.json next to the ONNX file supplies rope scaling (not recoverable from tables).
    std::string dir = a.onnx.substr(0, a.onnx.rfind('/') + 1);
    if (config) {
      io.config = config;
    } else if (llvm::sys::fs::exists(dir + "config.json")) {
      auto c = load_llama_config(dir + "config.json");
      if (c) io.config = *c;
    }
    auto m = import_onnx(ctx, a.onnx, io, &report);
    if (failed(m)) return 1;
    module = std::move(*m);
    llvm::outs() << "lora-compile: imported " << a.onnx << " (" << report.onnx_nodes << " ONNX nodes, " << report.folded_nodes
                 << " folded) in " << llvm::format("%.2f", seconds_since(t0)) << " s\n";
  } else {
    module = build_llama_module(ctx, *config, a.batch > 0 ? a.batch : ShapedType::kDynamic,
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
    buildLoraPipeline(pm, lo);
  } else {
    pm.addPass(createFreezeBase());
  }
  if (!a.dump_after_all.empty()) {
    ctx.disableMultithreading();
    std::string dir = a.dump_after_all;
    pm.enableIRPrinting([](Pass *, Operation *) { return false; }, [](Pass *, Operation *) { return true; },
                        /*printModuleScope=*/true, /*printAfterOnlyOnChange=*/false, /*printAfterOnlyOnFailure=*/false,
                        *new llvm::raw_fd_ostream(dir + "/passes.mlir", *new std::error_code()));
  }
  if (failed(pm.run(*module))) return 1;

  print_summary(*module, a.onnx.empty() ? nullptr : &report, a);
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
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  llvm::outs() << "  done in " << llvm::format("%.2f", seconds_since(t0)) << " s, peak RSS " << ru.ru_maxrss / 1024 << " MiB\n";
  return 0;
}
