//===- lower_to_plan.cpp - @train_step/@eval_step/@optimizer_step -> plan ---===//
//
// Each function becomes one program. Values map to buffers:
//   block arguments          -> Input buffers by their pl.name ("input_ids", "labels"), i32
//   pl.param                 -> Param / Trainable buffers, one per name (shared by programs)
//   the returned loss        -> the Output buffer "loss"
//   pl.reshape               -> a view: same bytes as its input (no instruction)
//   lora_linear_grad dA/dB   -> written straight into the Grad accumulators (accumulate = 1)
//                               when their only use is pl.accumulate_grad
//   everything else          -> an Activation buffer in the arena
// Temporaries that share bytes (views, in-place adds) form one storage group whose live
// interval is the union of its members'; groups are placed by plan_memory() per program, and
// the arena is the largest program's (programs never run at the same time).
//
//===----------------------------------------------------------------------===//
#include "passes/lower/lower_to_plan.h"

#include <map>
#include <numeric>

#include "ir/Dialect.h"
#include "passes/lower/flops.h"
#include "passes/lower/memory_plan.h"
#include "passes/parallel/Passes.h"
#include "passes/train/Passes.h"
#include "runtime/plan/collective_bytes.h"
#include "runtime/plan/schedule.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/StringMap.h"

#include <nlohmann/json.hpp>

using namespace mlir;

namespace parallora {
namespace {

using plan::Buffer;
using plan::BufferKind;
using plan::Instr;

std::string loc_path(Location loc) {
  if (auto n = loc.dyn_cast<NameLoc>()) return n.getName().str();
  if (auto f = loc.dyn_cast<FusedLoc>())
    for (Location l : f.getLocations()) {
      std::string s = loc_path(l);
      if (!s.empty()) return s;
    }
  return "";
}

double attr_f64(Attribute a) {
  if (auto f = a.dyn_cast_or_null<FloatAttr>()) return f.getValueAsDouble();
  if (auto i = a.dyn_cast_or_null<IntegerAttr>()) return static_cast<double>(i.getInt());
  return 0;
}

class Lowering {
public:
  Lowering(ModuleOp module, const LowerOptions &o) : module_(module), opts_(o) {}

  FailureOr<plan::Plan> run() {
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
    }
    if (failed(read_model(p)) || failed(read_hparams(p))) return failure();

    std::vector<plan::RankPlan> stages;
    for (int64_t s = 0; s < mesh.pp; ++s) {
      auto fn = [&](llvm::StringRef base) {
        return module_.lookupSymbol<func::FuncOp>(mesh.pp > 1 ? stage_function(base, s) : base.str());
      };
      auto train = fn(kTrainStep), eval = fn(kEvalStep), optim = fn(kOptimizerStep);
      if (!train || !eval || !optim) {
        module_.emitError("lower: the module needs @train_step, @eval_step and @optimizer_step (run the training "
                          "pipeline first)")
            << (mesh.pp > 1 ? " for every pipeline stage" : "");
        return failure();
      }
      if (s == 0) {
        auto ids = train.getFunctionType().getInput(0).cast<RankedTensorType>();
        p.seq_len = ids.getDimSize(1);
        if (ids.getDimSize(0) * opts_.micro_batches * mesh.dp != opts_.global_batch) {
          train.emitError("lower: micro-batch ") << ids.getDimSize(0) << " x " << opts_.micro_batches
                                                 << " micro-batches x dp " << mesh.dp << " != global batch "
                                                 << opts_.global_batch;
          return failure();
        }
      }
      train.walk([&](pl::CrossEntropyOp ce) { p.ignore_index = ce.getIgnoreIndexAttr().getInt(); });

      reset();
      rank_.pp_stage = static_cast<int32_t>(s);
      plan::Program micro, evalp, opt;
      micro.name = "micro_step";
      evalp.name = "eval_step";
      opt.name = "optimizer_step";
      if (failed(lower_function(train, micro, /*is_eval=*/false)))
        return failure();
      std::vector<bool> backward = backward_;
      if (failed(lower_function(eval, evalp, true)) || failed(lower_function(optim, opt, false)))
        return failure();
      add_norm_share(optim, p.hparams, opt);
      if (mesh.pp > 1) {  // one micro-batch's forward and backward, run separately by the schedule
        plan::Program fwd, bwd;
        fwd.name = "forward";
        bwd.name = "backward";
        for (size_t i = 0; i < micro.instrs.size(); ++i)
          (backward[i] ? bwd : fwd).instrs.push_back(std::move(micro.instrs[i]));
        rank_.programs = {std::move(fwd), std::move(bwd), std::move(opt), std::move(evalp)};
        rank_.slots = rt::pipeline_slots(p.pipeline_schedule, static_cast<int>(mesh.pp), static_cast<int>(s),
                                         static_cast<int>(opts_.micro_batches));
      } else {
        rank_.programs = {std::move(micro), std::move(opt), std::move(evalp)};
      }
      if (opts_.overlap_grad_sync) overlap_grad_sync();
      estimates(p, mesh);
      stages.push_back(std::move(rank_));
      stage_shards_.push_back(shard_dims_);
    }
    if (mesh.pp > 1) {
      std::vector<double> fwd, bwd;
      for (auto &st : stages) fwd.push_back(st.forward_flops), bwd.push_back(st.backward_flops);
      rt::Timeline tl = rt::simulate_pipeline(p.pipeline_schedule, static_cast<int>(opts_.micro_batches), fwd, bwd);
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
          in.attrs["peer"] = int64_t(plan::rank_of(p.mesh, c.dp, c.tp, static_cast<int32_t>(std::get<int64_t>(st->second))));
        }
      p.ranks.push_back(std::move(rp));
    }
    return p;
  }

private:
  // ------------------------------------------------------------------ buffers
  int32_t add_buffer(Buffer b) {
    b.id = static_cast<int32_t>(rank_.buffers.size());
    rank_.buffers.push_back(std::move(b));
    return rank_.buffers.back().id;
  }

  int32_t named(BufferKind kind, const std::string &name, plan::ElemType dtype, std::vector<int64_t> shape,
                const std::string &param = "") {
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

  FailureOr<int32_t> param_buffer(pl::ParamOp p) {
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
  int32_t activation(Value v, const std::string &name) {
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

  int32_t root(int32_t id) {
    while (group_[id] != id) id = group_[id] = group_[group_[id]];
    return id;
  }
  bool is_temp(int32_t id) const { return id >= 0 && rank_.buffers[id].kind == BufferKind::Activation; }

  // ------------------------------------------------------------------ functions
  LogicalResult lower_function(func::FuncOp func, plan::Program &prog, bool is_eval) {
    llvm::DenseMap<Value, int32_t> buf;
    Block &body = func.getBody().front();
    for (BlockArgument arg : body.getArguments()) {
      auto name = func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), "pl.name");
      if (!name) return func.emitError("lower: argument #") << arg.getArgNumber() << " has no pl.name", failure();
      auto type = arg.getType().cast<RankedTensorType>();
      buf[arg] = named(BufferKind::Input, name.str(), plan::ElemType::I32,
                       std::vector<int64_t>(type.getShape().begin(), type.getShape().end()));
    }
    Value returned;
    if (auto ret = dyn_cast<func::ReturnOp>(body.getTerminator()); ret && ret.getNumOperands() == 1)
      returned = ret.getOperand(0);

    // Accumulations folded into lora_linear_bwd, and their values.
    llvm::DenseSet<Operation *> fused;
    backward_.clear();
    first_buffer_ = static_cast<int32_t>(rank_.buffers.size());

    for (Operation &op : body.without_terminator()) {
      Instr in;
      in.loc = loc_path(op.getLoc());
      in.flops = op_flops(&op);
      if (auto l = op.getAttrOfType<IntegerAttr>(pl::kLayerAttr)) in.layer = static_cast<int32_t>(l.getInt());
      auto operand = [&](Value v) -> int32_t { return v ? buf.lookup(v) : -1; };
      auto result = [&](Value v, const std::string &hint = "") -> int32_t {
        int32_t id;
        if (v == returned) id = named(BufferKind::Output, "loss", plan::ElemType::F32, {});
        else id = activation(v, hint.empty() ? "%" + std::to_string(rank_.buffers.size()) + " " + in.loc : hint);
        buf[v] = id;
        return id;
      };

      if (auto p = dyn_cast<pl::ParamOp>(op)) {
        auto id = param_buffer(p);
        if (failed(id)) return failure();
        buf[p.getResult()] = *id;
        continue;
      }
      if (isa<pl::ReshapeOp, pl::CopyToGroupOp>(op)) {
        // copy_to_group is the identity forward (its gradient all-reduce is a separate op).
        Value input = op.getOperand(0), res = op.getResult(0);
        int32_t src = buf.lookup(input);
        if (is_temp(src)) {  // a view: join the input's storage group
          int32_t id = activation(res, "%" + std::to_string(rank_.buffers.size()) + " " + in.loc);
          group_[id] = root(src);
          buf[res] = id;
          continue;
        }
        in.op = "copy";
        in.inputs = {src};
        in.outputs = {result(res)};
      } else if (auto ar = dyn_cast<pl::AllReduceOp>(op)) {
        in.op = "all_reduce";
        in.inputs = {operand(ar.getInput())};
        in.outputs = {result(ar.getResult())};
        in.attrs["group"] = ar.getGroup().str();
      } else if (auto snd = dyn_cast<pl::SendOp>(op)) {
        in.op = "send";
        in.inputs = {operand(snd.getInput())};
        in.attrs["stage"] = static_cast<int64_t>(snd.getStage());
        in.attrs["tag"] = static_cast<int64_t>(snd.getTag());
      } else if (auto rcv = dyn_cast<pl::RecvOp>(op)) {
        in.op = "recv";
        in.outputs = {result(rcv.getResult())};
        in.attrs["stage"] = static_cast<int64_t>(rcv.getStage());
        in.attrs["tag"] = static_cast<int64_t>(rcv.getTag());
      } else if (auto gar = dyn_cast<pl::GradAllReduceOp>(op)) {
        in.op = "all_reduce";
        for (Attribute a : gar.getParams()) {
          std::string g = "grad." + a.cast<StringAttr>().str();
          if (!by_name_.count(g))
            return gar.emitError("lower: grad_all_reduce names '") << a << "', which @train_step does not train", failure();
          in.inputs.push_back(by_name_.lookup(g));
        }
        in.outputs = in.inputs;  // in place
        in.attrs["group"] = gar.getGroup().str();
        in.attrs["scale"] = gar.getScale().convertToDouble();
        in.attrs["bucket"] = static_cast<int64_t>(buckets_++);
      } else if (auto e = dyn_cast<pl::EmbeddingOp>(op)) {
        in.op = "embedding_fwd";
        in.inputs = {operand(e.getIds()), operand(e.getTable())};
        in.outputs = {result(e.getResult())};
      } else if (auto n = dyn_cast<pl::RMSNormOp>(op)) {
        in.op = "rms_norm_fwd";
        in.inputs = {operand(n.getInput()), operand(n.getWeight())};
        in.outputs = {result(n.getResult())};
        in.attrs["eps"] = n.getEps().convertToDouble();
      } else if (auto l = dyn_cast<pl::LinearOp>(op)) {
        in.op = "linear_fwd";
        in.inputs = {operand(l.getInput()), operand(l.getWeight()), operand(l.getBias())};
        in.outputs = {result(l.getResult(), is_eval && is_logits(l.getResult()) ? "logits" : "")};
      } else if (auto l = dyn_cast<pl::LoraLinearOp>(op)) {
        if (l.getDropout().convertToDouble() != 0.0)
          return l.emitError("lower: LoRA dropout is not supported by the runtime yet"), failure();
        in.op = "lora_linear_fwd";
        in.inputs = {operand(l.getInput()), operand(l.getWeight()), operand(l.getLoraA()), operand(l.getLoraB()), -1};
        in.outputs = {result(l.getResult(), is_eval && is_logits(l.getResult()) ? "logits" : "")};
        in.attrs["scaling"] = l.getScaling().convertToDouble();
      } else if (auto r = dyn_cast<pl::RopeOp>(op)) {
        in.op = "rope_fwd";
        in.inputs = {operand(r.getInput())};
        in.outputs = {result(r.getResult())};
        rope_attrs(in, r.getTheta().convertToDouble(), r.getRopeScalingAttr());
      } else if (auto a = dyn_cast<pl::AttentionOp>(op)) {
        in.op = "attention_fwd";
        in.inputs = {operand(a.getQuery()), operand(a.getKey()), operand(a.getValue())};
        in.outputs = {result(a.getResult())};
        in.attrs["scale"] = a.getScale().convertToDouble();
        in.attrs["causal"] = int64_t(a.getCausal() ? 1 : 0);
      } else if (auto s = dyn_cast<pl::SwigluOp>(op)) {
        in.op = "swiglu_fwd";
        in.inputs = {operand(s.getGate()), operand(s.getUp())};
        in.outputs = {result(s.getResult())};
      } else if (auto a = dyn_cast<pl::AddOp>(op)) {
        in.op = "add";
        in.inputs = {operand(a.getLhs()), operand(a.getRhs())};
        in.outputs = {result(a.getResult())};
      } else if (auto t = dyn_cast<pl::TransposeOp>(op)) {
        in.op = "transpose";
        in.inputs = {operand(t.getInput())};
        in.outputs = {result(t.getResult())};
        in.attrs["perm"] = std::vector<int64_t>(t.getPerm().begin(), t.getPerm().end());
      } else if (auto ce = dyn_cast<pl::CrossEntropyOp>(op)) {
        in.op = "cross_entropy_fwd";
        in.inputs = {operand(ce.getLogits()), operand(ce.getLabels())};
        in.outputs = {result(ce.getLoss())};
        in.attrs["ignore_index"] = ce.getIgnoreIndexAttr().getInt();
        in.attrs["shift"] = int64_t(ce.getShiftLabels() ? 1 : 0);
      } else if (auto g = dyn_cast<pl::CrossEntropyGradOp>(op)) {
        in.op = "cross_entropy_bwd";
        in.inputs = {operand(g.getLogits()), operand(g.getLabels())};
        in.outputs = {result(g.getResult())};
        in.attrs["ignore_index"] = g.getIgnoreIndexAttr().getInt();
        in.attrs["shift"] = int64_t(g.getShiftLabels() ? 1 : 0);
        in.attrs["grad_scale"] = g.getGradScale().convertToDouble();
      } else if (auto g = dyn_cast<pl::RMSNormGradOp>(op)) {
        in.op = "rms_norm_bwd";
        in.inputs = {operand(g.getGrad()), operand(g.getInput()), operand(g.getWeight())};
        in.outputs = {result(g.getResult())};
        in.attrs["eps"] = g.getEps().convertToDouble();
      } else if (auto g = dyn_cast<pl::LinearGradInputOp>(op)) {
        in.op = "linear_bwd_input";
        in.inputs = {operand(g.getGrad()), operand(g.getWeight())};
        in.outputs = {result(g.getResult())};
      } else if (auto g = dyn_cast<pl::LoraLinearGradOp>(op)) {
        in.op = "lora_linear_bwd";
        in.inputs = {operand(g.getGrad()), operand(g.getInput()), operand(g.getWeight()), operand(g.getLoraA()),
                     operand(g.getLoraB())};
        auto acc_a = single_accumulate(g.getGradLoraA()), acc_b = single_accumulate(g.getGradLoraB());
        int32_t dx = result(g.getGradInput());
        if (acc_a && acc_b) {
          in.outputs = {dx, by_name_.lookup(("grad." + acc_a.getParam()).str()),
                        by_name_.lookup(("grad." + acc_b.getParam()).str())};
          in.attrs["accumulate"] = int64_t(1);
          fused.insert(acc_a);
          fused.insert(acc_b);
        } else {
          in.outputs = {dx, result(g.getGradLoraA()), result(g.getGradLoraB())};
          in.attrs["accumulate"] = int64_t(0);
        }
        in.attrs["scaling"] = g.getScaling().convertToDouble();
      } else if (auto g = dyn_cast<pl::RopeGradOp>(op)) {
        in.op = "rope_bwd";
        in.inputs = {operand(g.getGrad())};
        in.outputs = {result(g.getResult())};
        rope_attrs(in, g.getTheta().convertToDouble(), g.getRopeScalingAttr());
      } else if (auto g = dyn_cast<pl::AttentionGradOp>(op)) {
        in.op = "attention_bwd";
        in.inputs = {operand(g.getGrad()), operand(g.getQuery()), operand(g.getKey()), operand(g.getValue())};
        in.outputs = {result(g.getGradQuery()), result(g.getGradKey()), result(g.getGradValue())};
        in.attrs["scale"] = g.getScale().convertToDouble();
        in.attrs["causal"] = int64_t(g.getCausal() ? 1 : 0);
      } else if (auto g = dyn_cast<pl::SwigluGradOp>(op)) {
        in.op = "swiglu_bwd";
        in.inputs = {operand(g.getGrad()), operand(g.getGate()), operand(g.getUp())};
        in.outputs = {result(g.getGradGate()), result(g.getGradUp())};
      } else if (auto acc = dyn_cast<pl::AccumulateGradOp>(op)) {
        if (fused.contains(acc)) continue;
        int32_t target = by_name_.lookup(("grad." + acc.getParam()).str());
        in.op = "accumulate";
        in.inputs = {operand(acc.getGrad())};
        in.outputs = {target};
      } else if (auto step = dyn_cast<pl::AdamWStepOp>(op)) {
        in.op = "adamw_step";
        std::vector<int32_t> p, g, m, v;
        for (Attribute a : step.getParams()) {
          std::string name = a.cast<StringAttr>().str();
          if (!by_name_.count(name))
            return step.emitError("lower: adamw_step names '") << name << "', which @train_step does not use", failure();
          p.push_back(by_name_.lookup(name));
          g.push_back(by_name_.lookup("grad." + name));
          m.push_back(by_name_.lookup(name + ".exp_avg"));
          v.push_back(by_name_.lookup(name + ".exp_avg_sq"));
        }
        for (auto *list : {&p, &g, &m, &v}) in.inputs.insert(in.inputs.end(), list->begin(), list->end());
        in.attrs["n"] = int64_t(p.size());
        in.attrs["beta1"] = step.getBeta1().convertToDouble();
        in.attrs["beta2"] = step.getBeta2().convertToDouble();
        in.attrs["eps"] = step.getEps().convertToDouble();
        in.attrs["weight_decay"] = step.getWeightDecay().convertToDouble();
        in.attrs["max_grad_norm"] = step.getMaxGradNorm().convertToDouble();
        in.attrs["zero_grads"] = int64_t(1);
        if (auto g = step->getAttrOfType<StringAttr>(kNormGroupAttr)) in.attrs["norm_group"] = g.str();
        if (auto d = step->getAttrOfType<DenseI64ArrayAttr>(kNormDivisorsAttr))
          in.attrs["norm_divisors"] = std::vector<int64_t>(d.asArrayRef().begin(), d.asArrayRef().end());
        if (auto z = step->getAttrOfType<DenseI64ArrayAttr>(kZeroOwnersAttr))
          in.attrs["zero_owners"] = std::vector<int64_t>(z.asArrayRef().begin(), z.asArrayRef().end());
      } else if (auto bc = dyn_cast<pl::ParamBroadcastOp>(op)) {
        in.op = "broadcast";
        for (Attribute a : bc.getParams()) {
          std::string name = a.cast<StringAttr>().str();
          if (!by_name_.count(name))
            return bc.emitError("lower: param_broadcast names '") << name << "', which @train_step does not use", failure();
          in.inputs.push_back(by_name_.lookup(name));
        }
        in.outputs = in.inputs;  // in place
        in.attrs["group"] = bc.getGroup().str();
        in.attrs["roots"] = std::vector<int64_t>(bc.getOwners().begin(), bc.getOwners().end());
      } else {
        return op.emitError("lower: ") << op.getName() << " has no runtime kernel (at " << in.loc << ")", failure();
      }

      if (auto vg = op.getAttrOfType<StringAttr>(kVocabGroupAttr)) in.attrs["vocab_group"] = vg.str();
      // In-place residual add: write over the left input when it dies here.
      if (in.op == "add" && opts_.inplace_add && is_temp(in.inputs[0]) && is_temp(in.outputs[0]) &&
          last_use_in(op, cast<pl::AddOp>(op).getLhs(), buf)) {
        group_[in.outputs[0]] = root(in.inputs[0]);
      }
      // The logits' gradient overwrites the logits when they die there (the usual case): the
      // largest activation pair of an LLM step (B x T x vocab) is held once. The kernels read a
      // row's values before writing its gradient (runtime/cpu/kernels.h: in place allowed).
      if (in.op == "cross_entropy_bwd" && opts_.inplace_add && is_temp(in.inputs[0]) && is_temp(in.outputs[0]) &&
          last_use_in(op, cast<pl::CrossEntropyGradOp>(op).getLogits(), buf)) {
        group_[in.outputs[0]] = root(in.inputs[0]);
      }
      prog.instrs.push_back(std::move(in));
      backward_.push_back(op.hasAttr(kBackwardAttr));
    }
    storage_types(prog);
    return place(prog);
  }

  /// The precision policy (LowerOptions::precision), applied to this program's activations
  /// before they are placed: with "bf16" every float activation is stored as bf16, except the
  /// ones that hold an adapter gradient on its way into its accumulator (the input of an
  /// accumulate / copy / add writing a Grad buffer: gradients are fp32 master state; the usual
  /// case, lora_linear_bwd accumulating dA/dB straight into the Grad buffers, has none). Views
  /// share their input's bytes, so a storage group takes one type: f32 if any member must be.
  void storage_types(const plan::Program &prog) {
    if (opts_.precision != "bf16") return;
    const int32_t n = static_cast<int32_t>(rank_.buffers.size());
    llvm::DenseSet<int32_t> keep_f32;  // storage groups
    for (const Instr &in : prog.instrs) {
      if (in.op != "accumulate" && in.op != "copy" && in.op != "add") continue;
      bool writes_grad = llvm::any_of(in.outputs, [&](int32_t id) {
        return id >= 0 && rank_.buffers[id].kind == BufferKind::Grad;
      });
      if (!writes_grad) continue;
      for (int32_t id : in.inputs)
        if (is_temp(id)) keep_f32.insert(root(id));
    }
    for (int32_t id = first_buffer_; id < n; ++id) {
      Buffer &b = rank_.buffers[id];
      if (is_temp(id) && b.dtype == plan::ElemType::F32 && !keep_f32.count(root(id))) b.dtype = plan::ElemType::BF16;
    }
  }

  /// True when no op after `op` reads `v` or any value sharing its storage.
  bool last_use_in(Operation &op, Value v, const llvm::DenseMap<Value, int32_t> &buf) {
    int32_t g = root(buf.lookup(v));
    for (Operation *cur = op.getNextNode(); cur; cur = cur->getNextNode())
      for (Value o : cur->getOperands()) {
        auto it = buf.find(o);
        if (it != buf.end() && is_temp(it->second) && root(it->second) == g) return false;
        // Values defined later are not in `buf` yet; a view of `v` defined later would be.
        if (it == buf.end())
          if (auto r = o.getDefiningOp<pl::ReshapeOp>(); r && buf.count(r.getInput()) &&
                                                        root(buf.lookup(r.getInput())) == g)
            return false;
      }
    return true;
  }

  static pl::AccumulateGradOp single_accumulate(Value v) {
    if (!v.hasOneUse()) return {};
    return dyn_cast<pl::AccumulateGradOp>(*v.getUsers().begin());
  }

  bool is_logits(Value v) {
    return llvm::any_of(v.getUsers(), [](Operation *u) { return isa<pl::CrossEntropyOp>(u); });
  }

  /// A pipeline stage that holds no trainables (pipeline-split leaves its @optimizer_step_s<k>
  /// empty but marks it with the norm group the other stages sum the clipping norm over) still
  /// takes part in that all-reduce: an adamw_step over no trainables contributes 0 and reads
  /// the global norm like every other rank (the runtime's step also records it).
  static void add_norm_share(func::FuncOp optim, const plan::Hyperparams &hp, plan::Program &opt) {
    auto group = optim->getAttrOfType<StringAttr>(kNormGroupAttr);
    if (!group || llvm::any_of(opt.instrs, [](const Instr &in) { return in.op == "adamw_step"; })) return;
    Instr in;
    in.op = "adamw_step";
    in.loc = loc_path(optim.getLoc());
    in.attrs["n"] = int64_t(0);
    in.attrs["beta1"] = hp.beta1;
    in.attrs["beta2"] = hp.beta2;
    in.attrs["eps"] = hp.eps;
    in.attrs["weight_decay"] = hp.weight_decay;
    in.attrs["max_grad_norm"] = hp.max_grad_norm;
    in.attrs["zero_grads"] = int64_t(1);
    in.attrs["norm_group"] = group.str();
    opt.instrs.push_back(std::move(in));
  }

  /// Live intervals of this program's storage groups -> arena offsets.
  LogicalResult place(plan::Program &prog) {
    llvm::DenseMap<int32_t, std::pair<int64_t, int64_t>> span;  // group -> [first, last]
    for (int64_t i = 0; i < static_cast<int64_t>(prog.instrs.size()); ++i) {
      const Instr &in = prog.instrs[i];
      for (const auto *list : {&in.inputs, &in.outputs})
        for (int32_t id : *list) {
          if (!is_temp(id)) continue;
          int32_t g = root(id);
          auto it = span.find(g);
          if (it == span.end()) span[g] = {i, i};
          else it->second = {std::min(it->second.first, i), std::max(it->second.second, i)};
        }
    }
    std::vector<int32_t> groups;
    std::vector<LiveInterval> intervals;
    for (auto &[g, s] : span) {
      int64_t bytes = 0;
      for (int32_t id = first_buffer_; id < static_cast<int32_t>(rank_.buffers.size()); ++id)
        if (is_temp(id) && root(id) == g) bytes = std::max(bytes, rank_.buffers[id].nbytes());
      groups.push_back(g);
      intervals.push_back({bytes, s.first, s.second});
    }
    MemoryPlan mp = plan_memory(intervals);
    llvm::DenseMap<int32_t, int64_t> offset;
    for (size_t i = 0; i < groups.size(); ++i) offset[groups[i]] = mp.offsets[i];
    for (int32_t id = first_buffer_; id < static_cast<int32_t>(rank_.buffers.size()); ++id)
      if (is_temp(id)) {
        auto it = offset.find(root(id));
        rank_.buffers[id].offset = it == offset.end() ? 0 : it->second;  // unused views: harmless
      }
    rank_.arena_bytes = std::max(rank_.arena_bytes, mp.arena_bytes);
    return success();
  }

  // ------------------------------------------------------------------ attributes, costs
  static void rope_attrs(Instr &in, double theta, DictionaryAttr scaling) {
    in.attrs["theta"] = theta;
    if (!scaling) return;
    in.attrs["rope_type"] = std::string("llama3");
    for (const char *k : {"factor", "low_freq_factor", "high_freq_factor"}) in.attrs[k] = attr_f64(scaling.get(k));
    in.attrs["original_max_position_embeddings"] =
        static_cast<int64_t>(attr_f64(scaling.get("original_max_position_embeddings")));
  }

  /// ZeRO-1 on this rank: its AdamW step keeps only the trainables it owns (attr zero_owners ==
  /// its dp index), the moments of the others are dropped from the buffer table, and the
  /// broadcast of the updated trainables is counted (the owner sends to dp - 1 replicas).
  LogicalResult shard_optimizer(plan::RankPlan &rp, const Mesh3 &mesh) {
    for (plan::Program &prog : rp.programs)
      for (Instr &in : prog.instrs) {
        if (in.op == "broadcast") {
          const auto &roots = std::get<std::vector<int64_t>>(in.attrs.at("roots"));
          int64_t owned = 0;
          for (size_t i = 0; i < roots.size(); ++i)
            if (roots[i] == rp.dp_rank) owned += rp.buffers[in.inputs[i]].nbytes();
          if (owned > 0) rp.bytes_sent["broadcast"] += (mesh.dp - 1) * owned;
        }
        auto z = in.attrs.find("zero_owners");
        if (in.op != "adamw_step" || z == in.attrs.end()) continue;
        const auto owners = std::get<std::vector<int64_t>>(z->second);
        const size_t n = owners.size();
        if (in.inputs.size() != 4 * n) return module_.emitError("lower: adamw_step operands do not match zero_owners"), failure();
        std::vector<int32_t> inputs[4], others_grads;
        std::vector<int64_t> divisors, kept;
        auto div = in.attrs.find("norm_divisors");
        for (size_t i = 0; i < n; ++i) {
          if (owners[i] != rp.dp_rank) {
            others_grads.push_back(in.inputs[n + i]);  // their owner updates them; still zero them here
            continue;
          }
          for (int k = 0; k < 4; ++k) inputs[k].push_back(in.inputs[k * n + i]);
          if (div != in.attrs.end()) divisors.push_back(std::get<std::vector<int64_t>>(div->second)[i]);
          kept.push_back(owners[i]);
        }
        in.inputs.clear();
        for (auto &l : inputs) in.inputs.insert(in.inputs.end(), l.begin(), l.end());
        in.attrs["n"] = int64_t(kept.size());
        if (div != in.attrs.end()) div->second = divisors;
        in.attrs["zero_owners"] = kept;
        if (!others_grads.empty()) zero_after_ = {&prog, others_grads};
      }
    // The gradients this rank does not update are zeroed right after its AdamW step (the
    // next step's all-reduce must not add them twice).
    if (zero_after_.first) {
      plan::Program &prog = *zero_after_.first;
      for (size_t i = 0; i < prog.instrs.size(); ++i)
        if (prog.instrs[i].op == "adamw_step") {
          Instr z;
          z.op = "fill_zero";
          z.outputs = zero_after_.second;
          z.loc = prog.instrs[i].loc;
          prog.instrs.insert(prog.instrs.begin() + static_cast<std::ptrdiff_t>(i) + 1, std::move(z));
          break;
        }
      zero_after_ = {};
    }
    // Drop the moments no instruction refers to any more; renumber the buffers.
    std::vector<char> used(rp.buffers.size(), 0);
    for (const plan::Program &prog : rp.programs)
      for (const Instr &in : prog.instrs) {
        for (int32_t id : in.inputs)
          if (id >= 0) used[id] = 1;
        for (int32_t id : in.outputs)
          if (id >= 0) used[id] = 1;
      }
    std::vector<int32_t> remap(rp.buffers.size(), -1);
    std::vector<Buffer> kept_buffers;
    for (size_t i = 0; i < rp.buffers.size(); ++i) {
      if (rp.buffers[i].kind == BufferKind::OptState && !used[i]) {
        rp.optimizer_bytes -= rp.buffers[i].nbytes();
        rp.peak_bytes -= rp.buffers[i].nbytes();
        continue;
      }
      remap[i] = static_cast<int32_t>(kept_buffers.size());
      kept_buffers.push_back(std::move(rp.buffers[i]));
      kept_buffers.back().id = remap[i];
    }
    if (kept_buffers.size() == rp.buffers.size()) {
      rp.buffers = std::move(kept_buffers);
      return success();
    }
    rp.buffers = std::move(kept_buffers);
    for (plan::Program &prog : rp.programs)
      for (Instr &in : prog.instrs) {
        for (int32_t &id : in.inputs)
          if (id >= 0) id = remap[id];
        for (int32_t &id : in.outputs)
          if (id >= 0) id = remap[id];
      }
    return success();  // (the tp slices were set before: buffers keep them when renumbered)
  }

  /// Ranks in a collective group of the mesh ("dp,tp" -> dp * tp).
  static int group_ranks(const std::string &group, const Mesh3 &m) {
    int g = 1;
    llvm::SmallVector<llvm::StringRef> axes;
    llvm::StringRef(group).split(axes, ',', -1, false);
    for (llvm::StringRef a : axes) g *= static_cast<int>(a == "dp" ? m.dp : a == "tp" ? m.tp : a == "pp" ? m.pp : 1);
    return g;
  }

  /// Bytes one execution of `in` sends (runtime/plan/collective_bytes.h's convention, per call).
  void bytes_sent(const Instr &in, const Mesh3 &m, std::map<std::string, int64_t> &by_kind, int64_t times) {
    auto group_of = [&](const char *key) {
      auto it = in.attrs.find(key);
      return it == in.attrs.end() ? std::string() : std::get<std::string>(it->second);
    };
    auto all_reduce = [&](int64_t bytes, const std::string &group) {
      by_kind["all_reduce"] += times * rt::all_reduce_bytes_sent(bytes, group_ranks(group, m));
    };
    if (in.op == "all_reduce_wait") return;  // counted at its all_reduce_start
    if (in.op == "all_reduce_start") times = 1;  // starts on the step's last micro-batch only
    if (in.op == "all_reduce" || in.op == "all_reduce_start") {
      int64_t n = 0;
      for (int32_t id : in.inputs) n += rank_.buffers[id].nbytes();
      all_reduce(n, group_of("group"));
    } else if (in.op == "send") {
      by_kind["send"] += times * rank_.buffers[in.inputs[0]].nbytes();
    } else if ((in.op == "cross_entropy_fwd" || in.op == "cross_entropy_bwd") && in.attrs.count("vocab_group")) {
      const Buffer &logits = rank_.buffers[in.inputs[0]];
      int64_t rows = logits.numel() / logits.shape.back();
      std::string g = group_of("vocab_group");
      all_reduce(rows * 4, g);                                          // row maxima
      all_reduce((in.op == "cross_entropy_fwd" ? 2 : 1) * rows * 4, g);  // sums of exp (+ target logits)
    } else if (in.op == "adamw_step" && !group_of("norm_group").empty()) {
      all_reduce(4, group_of("norm_group"));
    }
  }

  void estimates(plan::Plan &p, const Mesh3 &mesh) {
    for (const Buffer &b : rank_.buffers) {
      switch (b.kind) {
      case BufferKind::Param:
      case BufferKind::Trainable: rank_.param_bytes += b.nbytes(); break;
      case BufferKind::Grad: rank_.grad_bytes += b.nbytes(); break;
      case BufferKind::OptState: rank_.optimizer_bytes += b.nbytes(); break;
      case BufferKind::Input:
      case BufferKind::Output: io_bytes_ += b.nbytes(); break;
      default: break;
      }
    }
    rank_.peak_bytes =
        rank_.param_bytes + rank_.grad_bytes + rank_.optimizer_bytes + (io_bytes_ + rank_.arena_bytes) * rank_.slots;
    double opt = 0;
    for (const plan::Program &prog : rank_.programs) {
      double f = 0, through_loss = 0;  // all, and up to the loss (a micro_step's forward)
      bool past_loss = false;
      for (const Instr &in : prog.instrs) {
        f += in.flops;
        if (!past_loss) through_loss += in.flops;
        past_loss |= in.op == "cross_entropy_fwd";
      }
      if (prog.name == "micro_step") rank_.forward_flops = through_loss, rank_.backward_flops = f - through_loss;
      if (prog.name == "forward") rank_.forward_flops = f;
      if (prog.name == "backward") rank_.backward_flops = f;
      if (prog.name == "optimizer_step") opt = f;
      int64_t times = prog.name == "optimizer_step" ? 1 : prog.name == "eval_step" ? 0 : p.micro_batches;
      for (const Instr &in : prog.instrs) bytes_sent(in, mesh, rank_.bytes_sent, times);
    }
    rank_.flops_per_step = (rank_.forward_flops + rank_.backward_flops) * p.micro_batches + opt;
  }

  LogicalResult read_model(plan::Plan &p) {
    auto model = module_->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
    if (!model) return module_.emitError("lower: module has no pl.model attribute"), failure();
    nlohmann::json j;
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    for (NamedAttribute a : model) {
      std::string k = a.getName().str();
      if (auto i = a.getValue().dyn_cast<IntegerAttr>()) {
        if (i.getType().isInteger(1)) j[k] = i.getValue().getBoolValue();
        else j[k] = i.getInt();
      } else if (auto f = a.getValue().dyn_cast<FloatAttr>()) j[k] = f.getValueAsDouble();
      else if (auto b = a.getValue().dyn_cast<BoolAttr>()) j[k] = b.getValue();
      else if (auto s = a.getValue().dyn_cast<StringAttr>()) j[k] = s.str();
    }
    if (j.contains("vocab_size")) p.vocab_size = j["vocab_size"].get<int64_t>();
    p.model_config_json = j.dump(2);
    return success();
  }

  LogicalResult read_hparams(plan::Plan &p) {
    auto hp = module_->getAttrOfType<DictionaryAttr>(kTrainAttr);
    if (!hp) return module_.emitError("lower: module has no pl.train attribute (run --adamw)"), failure();
    auto f = [&](const char *k, double d) { return hp.get(k) ? attr_f64(hp.get(k)) : d; };
    p.hparams.lr = f("lr", p.hparams.lr);
    p.hparams.warmup_steps = static_cast<int64_t>(f("warmup_steps", 0));
    p.hparams.min_lr_ratio = f("min_lr_ratio", 0);
    p.hparams.total_steps = static_cast<int64_t>(f("total_steps", 0));
    p.hparams.weight_decay = f("weight_decay", 0);
    p.hparams.beta1 = f("beta1", 0.9);
    p.hparams.beta2 = f("beta2", 0.999);
    p.hparams.eps = f("eps", 1e-8);
    p.hparams.max_grad_norm = f("max_grad_norm", 1.0);
    if (auto s = hp.getAs<StringAttr>("schedule")) p.hparams.schedule = s.str();
    return success();
  }

  /// Overlap of the gradient sync with the backward: every gradient bucket's all_reduce in
  /// optimizer_step becomes an all_reduce_start in the backward (micro_step, or the pipeline
  /// stage's backward) right after the instruction that writes the bucket's last gradient, and
  /// an all_reduce_wait where the all_reduce was. The runtime starts it only on the step's last
  /// micro-batch (StepState::last_micro), so the rest of that backward runs while the bucket
  /// travels; the wait completes it before the optimizer. Buckets are ordered last layer first,
  /// so the starts come out in bucket order, the same on every rank of a group.
  void overlap_grad_sync() {
    plan::Program *bwd = nullptr, *opt = nullptr;
    for (plan::Program &prog : rank_.programs) {
      if (prog.name == "micro_step" || prog.name == "backward") bwd = &prog;
      if (prog.name == "optimizer_step") opt = &prog;
    }
    if (!bwd || !opt) return;
    std::vector<std::pair<size_t, Instr>> starts;  // (after backward instruction #, start)
    for (Instr &in : opt->instrs) {
      if (in.op != "all_reduce" || !in.attrs.count("bucket")) continue;
      llvm::DenseSet<int32_t> grads(in.inputs.begin(), in.inputs.end());
      int64_t last = -1;
      for (size_t i = 0; i < bwd->instrs.size(); ++i)
        for (int32_t id : bwd->instrs[i].outputs)
          if (grads.count(id)) last = static_cast<int64_t>(i);
      if (last < 0) continue;  // not produced by this backward: stays a blocking all_reduce
      Instr st;
      st.op = "all_reduce_start";
      st.inputs = in.inputs;
      st.attrs = in.attrs;
      st.loc = in.loc;
      starts.emplace_back(static_cast<size_t>(last), std::move(st));
      in.op = "all_reduce_wait";
    }
    if (starts.empty()) return;
    std::stable_sort(starts.begin(), starts.end(),
                     [](const auto &a, const auto &b) { return a.first < b.first; });
    std::vector<Instr> out;
    out.reserve(bwd->instrs.size() + starts.size());
    size_t k = 0;
    for (size_t i = 0; i < bwd->instrs.size(); ++i) {
      out.push_back(std::move(bwd->instrs[i]));
      for (; k < starts.size() && starts[k].first == i; ++k) out.push_back(std::move(starts[k].second));
    }
    bwd->instrs = std::move(out);
  }

  void reset() {
    buckets_ = 0;
    rank_ = plan::RankPlan();
    by_name_.clear();
    group_.clear();
    shard_dims_.clear();
    first_buffer_ = 0;
    io_bytes_ = 0;
  }

  ModuleOp module_;
  const LowerOptions &opts_;
  plan::RankPlan rank_;
  int64_t buckets_ = 0;                        // gradient buckets of this stage (attr bucket)
  std::vector<bool> backward_;                  // per instruction of the last lowered function
  std::pair<plan::Program *, std::vector<int32_t>> zero_after_;  // shard_optimizer's pending fill_zero
  std::map<int32_t, int64_t> shard_dims_;       // tp-sharded param buffer -> its sharded dim
  std::vector<std::map<int32_t, int64_t>> stage_shards_;
  llvm::StringMap<int32_t> by_name_;
  llvm::DenseMap<int32_t, int32_t> group_;    // union-find over temporary buffers
  int32_t first_buffer_ = 0;
  int64_t io_bytes_ = 0;
};

} // namespace

FailureOr<plan::Plan> lower_to_plan(ModuleOp module, const LowerOptions &options) {
  return Lowering(module, options).run();
}

} // namespace parallora
