//===- lower_to_plan.cpp - @train_step/@eval_step/@optimizer_step -> plan ---===//
//
// The driver of the lowering (the class is in lowering.h, the work split by concern across
// the lower_*.cpp files): each stage's functions are lowered once and copied to its ranks.
//
// Each function becomes one program. Values map to buffers:
//   block arguments          -> Input buffers by their pl.name ("input_ids", "labels"), i32
//   pl.param                 -> Param / Trainable buffers, one per name (shared by programs)
//   the returned loss        -> the Output buffer "loss"
//   pl.reshape               -> a view: same bytes as its input (no instruction)
//   lora_linear_grad dA/dB   -> written straight into the Grad accumulators (accumulate = 1)
//                               when their only use is pl.accumulate_grad
//   everything else          -> an Activation buffer in the arena
//
//===----------------------------------------------------------------------===//
#include "passes/lower/lower_to_plan.h"

#include "passes/lower/lowering.h"
#include "runtime/plan/plan_schedule.h"
#include "runtime/plan/schedule.h"

namespace parallora {
namespace lowering {

FailureOr<plan::Plan> Lowering::run() {
  Mesh3 mesh = read_mesh(module_);
  plan::Plan p;
  p.producer = opts_.producer;
  p.base_weights = opts_.base_weights;
  p.lora = opts_.lora;
  p.global_batch = opts_.global_batch;
  p.micro_batches = opts_.micro_batches;
  p.mesh = plan::Mesh{static_cast<int32_t>(mesh.dp), static_cast<int32_t>(mesh.tp), static_cast<int32_t>(mesh.pp)};
  p.world_size = p.mesh.size();
  p.strategy = opts_.strategy;
  if (opts_.precision != "fp32" && opts_.precision != "bf16")
    return module_.emitError("lower: unknown precision '") << opts_.precision << "' (expected fp32 or bf16)",
           failure();
  p.precision = opts_.precision;
  if (mesh.pp > 1) {
    auto pipe = module_->getAttrOfType<DictionaryAttr>(kPipelineAttr);
    if (!pipe) return module_.emitError("lower: pp > 1 but the module has no pl.pipeline (run pipeline-split)"), failure();
    p.pipeline_schedule = pipe.getAs<StringAttr>("schedule").str();
    if (auto v = pipe.getAs<IntegerAttr>("virtual_stages")) p.virtual_stages = static_cast<int32_t>(v.getInt());
  }
  const int64_t v = p.virtual_stages;  // interleaved: rank s runs model chunks s, pp + s, ...
  if (failed(read_model(p)) || failed(read_hparams(p))) return failure();

  std::vector<plan::RankPlan> stages;
  for (int64_t s = 0; s < mesh.pp; ++s) {
    // Model chunk k's functions (k = c * pp + s for the rank's chunk c); the optimizer is per rank.
    auto fn = [&](llvm::StringRef base, int64_t k) {
      return module_.lookupSymbol<func::FuncOp>(mesh.pp > 1 ? stage_function(base, k) : base.str());
    };
    auto optim = fn(kOptimizerStep, s);
    for (int64_t c = 0; c < v; ++c)
      if (!fn(kTrainStep, c * mesh.pp + s) || !fn(kEvalStep, c * mesh.pp + s)) optim = nullptr;
    if (!optim) {
      module_.emitError("lower: the module needs @train_step, @eval_step and @optimizer_step (run the training "
                        "pipeline first)")
          << (mesh.pp > 1 ? " for every pipeline stage" : "");
      return failure();
    }
    if (s == 0) {
      auto ids = fn(kTrainStep, 0).getFunctionType().getInput(0).cast<RankedTensorType>();
      p.seq_len = ids.getDimSize(1);
      if (ids.getDimSize(0) * opts_.micro_batches * mesh.dp != opts_.global_batch) {
        fn(kTrainStep, 0).emitError("lower: micro-batch ")
            << ids.getDimSize(0) << " x " << opts_.micro_batches << " micro-batches x dp " << mesh.dp
            << " != global batch " << opts_.global_batch;
        return failure();
      }
    }

    reset();
    rank_.pp_stage = static_cast<int32_t>(s);
    plan::Program evalp, opt;
    evalp.name = "eval_step";
    opt.name = "optimizer_step";
    std::vector<plan::Program> chunk_programs;
    for (int64_t c = 0; c < v; ++c) {
      func::FuncOp train = fn(kTrainStep, c * mesh.pp + s), eval = fn(kEvalStep, c * mesh.pp + s);
      train.walk([&](pl::CrossEntropyOp ce) { p.ignore_index = ce.getIgnoreIndexAttr().getInt(); });
      plan::Program micro, ev;
      micro.name = "micro_step";
      if (failed(lower_function(train, micro, /*is_eval=*/false))) return failure();
      std::vector<bool> backward = backward_, weight_grad = weight_grad_;
      // Evaluation runs the rank's chunks one after the other in one program (each chunk's
      // temporaries are placed on their own: they are dead before the next chunk starts).
      if (failed(lower_function(eval, ev, true))) return failure();
      for (Instr &in : ev.instrs) evalp.instrs.push_back(std::move(in));
      if (mesh.pp <= 1) {
        chunk_programs.push_back(std::move(micro));
        continue;
      }
      // One micro-batch's forward and backward, run separately by the schedule.
      const int ci = static_cast<int>(c);
      plan::Program fwd, bwd, wgt;
      fwd.name = rt::pipeline_program(rt::Phase::Forward, ci);
      bwd.name = rt::pipeline_program(rt::Phase::Backward, ci);
      wgt.name = rt::pipeline_program(rt::Phase::Weight, ci);  // zb-h1 (--split-weight-grad)
      for (size_t i = 0; i < micro.instrs.size(); ++i)
        (weight_grad[i] ? wgt : backward[i] ? bwd : fwd).instrs.push_back(std::move(micro.instrs[i]));
      chunk_programs.push_back(std::move(fwd));
      chunk_programs.push_back(std::move(bwd));
      if (rt::schedule_splits_weight_grad(p.pipeline_schedule)) chunk_programs.push_back(std::move(wgt));
    }
    if (failed(lower_function(optim, opt, false))) return failure();
    add_norm_share(optim, p.hparams, opt);
    // Program order: micro_step | forward, backward; optimizer_step; eval_step; then
    // backward_weight and the other chunks' programs.
    const size_t head = mesh.pp > 1 ? 2 : 1;
    rank_.programs.assign(std::make_move_iterator(chunk_programs.begin()),
                          std::make_move_iterator(chunk_programs.begin() + head));
    rank_.programs.push_back(std::move(opt));
    rank_.programs.push_back(std::move(evalp));
    for (size_t i = head; i < chunk_programs.size(); ++i) rank_.programs.push_back(std::move(chunk_programs[i]));
    if (mesh.pp > 1)
      rank_.slots = rt::pipeline_slots(p.pipeline_schedule, static_cast<int>(mesh.pp), static_cast<int>(s),
                                       static_cast<int>(opts_.micro_batches), static_cast<int>(v));
    if (opts_.overlap_grad_sync) overlap_grad_sync();
    estimates(p, mesh);
    stages.push_back(std::move(rank_));
    stage_shards_.push_back(shard_dims_);
  }
  if (mesh.pp > 1) {
    std::vector<const plan::RankPlan *> per_stage;
    for (auto &st : stages) per_stage.push_back(&st);
    rt::Timeline tl = rt::simulate_pipeline(p.pipeline_schedule, static_cast<int>(opts_.micro_batches),
                                            rt::stage_pipeline_costs(per_stage, static_cast<int>(v)), static_cast<int>(v));
    for (size_t s = 0; s < stages.size(); ++s) stages[s].bubble_fraction = tl.bubble[s];
  }
  // Every rank: its stage's program with its tensor-parallel slices and its peers.
  for (int32_t r = 0; r < p.world_size; ++r) {
    plan::MeshCoord c = plan::coord_of(p.mesh, r);
    plan::RankPlan rp = stages[c.pp];
    rp.rank = r;
    rp.dp_rank = c.dp;
    rp.tp_rank = c.tp;
    rp.pp_stage = c.pp;
    for (auto &[id, dim] : stage_shards_[c.pp]) {
      Buffer &b = rp.buffers[id];
      b.full_shape = b.shape;
      b.full_shape[dim] *= p.mesh.tp;
      b.slice.clear();
      for (size_t d = 0; d < b.shape.size(); ++d)
        b.slice.push_back({static_cast<int64_t>(d) == dim ? c.tp * b.shape[d] : 0, b.shape[d]});
    }
    if (failed(shard_optimizer(rp, mesh))) return failure();
    for (plan::Program &prog : rp.programs)
      for (Instr &in : prog.instrs) {
        auto st = in.attrs.find("stage");
        if (st == in.attrs.end() || (in.op != "send" && in.op != "recv")) continue;
        // `stage` names a model chunk (interleaved: pp x v of them); chunk k lives on pp rank k % pp.
        const auto chunk = static_cast<int32_t>(std::get<int64_t>(st->second));
        in.attrs["peer"] = int64_t(plan::rank_of(p.mesh, c.dp, c.tp, chunk % p.mesh.pp));
      }
    p.ranks.push_back(std::move(rp));
  }
  return p;
}

int32_t Lowering::add_buffer(Buffer b) {
  b.id = static_cast<int32_t>(rank_.buffers.size());
  rank_.buffers.push_back(std::move(b));
  return rank_.buffers.back().id;
}

int32_t Lowering::named(BufferKind kind, const std::string &name, plan::ElemType dtype,
                        std::vector<int64_t> shape, const std::string &param) {
  auto it = by_name_.find(name);
  if (it != by_name_.end()) return it->second;
  Buffer b;
  b.name = name;
  b.kind = kind;
  b.dtype = dtype;
  b.shape = std::move(shape);
  b.param = param;
  int32_t id = add_buffer(std::move(b));
  by_name_[name] = id;
  return id;
}

FailureOr<int32_t> Lowering::param_buffer(pl::ParamOp p) {
  std::string name = p.getName().str();
  auto it = by_name_.find(name);
  if (it != by_name_.end()) return it->second;
  auto type = p.getType().cast<RankedTensorType>();
  std::vector<int64_t> shape(type.getShape().begin(), type.getShape().end());
  bool trainable = p.getTrainable();
  // Frozen weights follow the precision policy; adapters are the fp32 master copies.
  const plan::ElemType dtype =
      !trainable && opts_.precision == "bf16" ? plan::ElemType::BF16 : plan::ElemType::F32;
  int32_t id = named(trainable ? BufferKind::Trainable : BufferKind::Param, name, dtype, shape);
  Buffer &b = rank_.buffers[id];
  std::string init = p.getInit() ? p.getInit()->str() : "";
  // Frozen weights come from the base checkpoint when there is one; adapters from their init
  // spec (or --init-adapter / --resume at run time).
  b.init = (!trainable && (!opts_.base_weights.empty() || init.empty())) ? "checkpoint" : init;
  if (auto sh = p->getAttrOfType<DictionaryAttr>(kShardAttr))
    shard_dims_[id] = sh.getAs<IntegerAttr>("dim").getInt();
  if (trainable) {
    named(BufferKind::Grad, "grad." + name, plan::ElemType::F32, shape, name);
    named(BufferKind::OptState, name + ".exp_avg", plan::ElemType::F32, shape, name);
    named(BufferKind::OptState, name + ".exp_avg_sq", plan::ElemType::F32, shape, name);
  }
  return id;
}

/// A new temporary buffer for `v` in the current program.
int32_t Lowering::activation(Value v, const std::string &name) {
  auto type = v.getType().cast<RankedTensorType>();
  Buffer b;
  b.name = name;
  b.kind = BufferKind::Activation;
  b.dtype = type.getElementType().isa<FloatType>() ? plan::ElemType::F32 : plan::ElemType::I32;
  b.shape.assign(type.getShape().begin(), type.getShape().end());
  int32_t id = add_buffer(std::move(b));
  group_[id] = id;
  return id;
}

int32_t Lowering::root(int32_t id) {
  while (group_[id] != id) id = group_[id] = group_[group_[id]];
  return id;
}

void Lowering::reset() {
  buckets_ = 0;
  rank_ = plan::RankPlan();
  by_name_.clear();
  group_.clear();
  shard_dims_.clear();
  first_buffer_ = 0;
  io_bytes_ = 0;
}

} // namespace lowering

mlir::FailureOr<plan::Plan> lower_to_plan(mlir::ModuleOp module, const LowerOptions &options) {
  return lowering::Lowering(module, options).run();
}

} // namespace parallora
