//===- options.cpp - lora-compile's command line ---------------------------===//
#include "tools/lora-compile/options.h"

#include <algorithm>
#include <iostream>
#include <map>
#include <utility>

#include <CLI/CLI.hpp>

#include "tools/common/cli.h"

namespace parallora {
namespace {

/// The mesh a strategy asks for. Returns false after printing the error.
bool resolve_mesh(CompileOptions &a, std::string &strategy) {
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

} // namespace

int parse_options(int argc, char **argv, CompileOptions &a) {
  CLI::App app{"lora-compile: compile a LLaMA model with LoRA adapters into Parallora IR.\n"
               "Input is an ONNX export of Hugging Face LlamaForCausalLM (with or without PEFT LoRA) or an HF config.json."};
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
  for (auto [opt, name] : {std::pair<CLI::Option *, const char *>{rank_opt, "--lora-rank"}, {alpha_opt, "--lora-alpha"},
                           {targets_opt, "--lora-targets"}, {dropout_opt, "--lora-dropout"}, {rslora_opt, "--use-rslora"}})
    if (opt->count()) a.lora_flags_given.push_back(name);
  a.lora_targets_given = targets_opt->count() > 0;
  a.device_profile_given = app.get_option("--device-profile")->count() > 0;
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
  if (!resolve_mesh(a, a.resolved_strategy)) return 2;
  if (a.pipe_schedule == "interleaved" && a.pp > 1 && a.micro_batches % a.pp != 0)
    return usage("--pipeline-schedule interleaved runs micro-batches in groups of --pp: --micro-batches " +
                 std::to_string(a.micro_batches) + " is not a multiple of --pp " + std::to_string(a.pp));
  const bool parallel = a.dp * a.tp * a.pp > 1;
  a.parallel = parallel;
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
  a.build_train = !a.output.empty() || a.train_ir || parallel;
  if (a.onnx.empty() && a.hf_config.empty()) {
    std::cerr << "error: give the model with --onnx model.onnx or --hf-config config.json (see --help)\n";
    return 2;
  }
  // --batch is the global batch; the graph is built for one micro-batch of batch / micro-batches.
  a.micro_batch = a.batch;
  if (a.batch > 0) {
    if (a.batch % (a.micro_batches * a.dp) != 0) {
      std::cerr << "error: --batch " << a.batch << " must be a multiple of --micro-batches " << a.micro_batches
                << " x --dp " << a.dp << " (every data-parallel rank runs the same number of equal micro-batches)\n";
      return 2;
    }
    a.micro_batch = a.batch / a.micro_batches;  // partition divides it by dp
  }
  if (a.build_train && a.onnx.empty() && (a.batch <= 0 || a.seq_len <= 0)) {
    std::cerr << "error: a training plan has fixed shapes: give --batch and --seq-len\n";
    return 2;
  }

  return -1;
}

} // namespace parallora
