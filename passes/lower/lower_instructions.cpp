//===- lower_instructions.cpp - one plan instruction per op ------------------===//
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
#include "passes/lower/lowering.h"
#include "passes/lower/flops.h"

namespace parallora::lowering {

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

/// LoRA dropout of a training program's lora_linear_fwd / lora_linear_bwd (runtime/lora_dropout.h):
/// p, the module (the mask's stream) and, for a row-parallel layer (lora_A sharded on its
/// in-features), the group whose shards hold consecutive feature blocks. Eval programs run
/// without dropout, as PEFT in eval mode, so they get none.
static void dropout_attrs(Instr &in, double p, StringRef module, Value lora_a, bool is_eval) {
  if (is_eval || p == 0.0) return;
  in.attrs["dropout"] = p;
  in.attrs["module"] = module.str();
  if (auto prm = lora_a.getDefiningOp<pl::ParamOp>())
    if (auto sh = prm->getAttrOfType<DictionaryAttr>(kShardAttr))
      if (auto dim = sh.getAs<IntegerAttr>("dim"); dim && dim.getInt() == 1) {
        auto group = sh.getAs<StringAttr>("group");
        in.attrs["dropout_feature_group"] = group ? group.str() : std::string("tp");
      }
}

LogicalResult Lowering::lower_function(func::FuncOp func, plan::Program &prog, bool is_eval) {
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
  weight_grad_.clear();
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
      in.op = "lora_linear_fwd";
      in.inputs = {operand(l.getInput()), operand(l.getWeight()), operand(l.getLoraA()), operand(l.getLoraB()), -1};
      in.outputs = {result(l.getResult(), is_eval && is_logits(l.getResult()) ? "logits" : "")};
      in.attrs["scaling"] = l.getScaling().convertToDouble();
      dropout_attrs(in, l.getDropout().convertToDouble(), l.getModule(), l.getLoraA(), is_eval);
    } else if (auto r = dyn_cast<pl::RopeOp>(op)) {
      in.op = "rope_fwd";
      in.inputs = {operand(r.getInput())};
      if (r.getPositions()) in.inputs.push_back(operand(r.getPositions()));  // packing
      in.outputs = {result(r.getResult())};
      rope_attrs(in, r.getTheta().convertToDouble(), r.getRopeScalingAttr());
    } else if (auto a = dyn_cast<pl::AttentionOp>(op)) {
      in.op = "attention_fwd";
      in.inputs = {operand(a.getQuery()), operand(a.getKey()), operand(a.getValue())};
      if (a.getSegmentIds()) in.inputs.push_back(operand(a.getSegmentIds()));  // packing
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
      dropout_attrs(in, g.getDropout().convertToDouble(), g.getModule(), g.getLoraA(), is_eval);
      // --split-weight-grad's halves (zb-h1): the kernel computes only that part; the unused
      // outputs keep their (never read) temporaries.
      if (auto part = g->getAttrOfType<StringAttr>(pl::kGradPartAttr)) in.attrs["part"] = part.str();
    } else if (auto g = dyn_cast<pl::RopeGradOp>(op)) {
      in.op = "rope_bwd";
      in.inputs = {operand(g.getGrad())};
      if (g.getPositions()) in.inputs.push_back(operand(g.getPositions()));
      in.outputs = {result(g.getResult())};
      rope_attrs(in, g.getTheta().convertToDouble(), g.getRopeScalingAttr());
    } else if (auto g = dyn_cast<pl::AttentionGradOp>(op)) {
      in.op = "attention_bwd";
      in.inputs = {operand(g.getGrad()), operand(g.getQuery()), operand(g.getKey()), operand(g.getValue())};
      if (g.getSegmentIds()) in.inputs.push_back(operand(g.getSegmentIds()));
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
    weight_grad_.push_back(op.hasAttr(kWeightGradAttr));
  }
  storage_types(prog);
  return place(prog);
}

pl::AccumulateGradOp Lowering::single_accumulate(Value v) {
  if (!v.hasOneUse()) return {};
  return dyn_cast<pl::AccumulateGradOp>(*v.getUsers().begin());
}

bool Lowering::is_logits(Value v) {
  return llvm::any_of(v.getUsers(), [](Operation *u) { return isa<pl::CrossEntropyOp>(u); });
}

/// A pipeline stage that holds no trainables (pipeline-split leaves its @optimizer_step_s<k>
/// empty but marks it with the norm group the other stages sum the clipping norm over) still
/// takes part in that all-reduce: an adamw_step over no trainables contributes 0 and reads
/// the global norm like every other rank (the runtime's step also records it).
void Lowering::add_norm_share(func::FuncOp optim, const plan::Hyperparams &hp, plan::Program &opt) {
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

void Lowering::rope_attrs(Instr &in, double theta, DictionaryAttr scaling) {
  in.attrs["theta"] = theta;
  if (!scaling) return;
  in.attrs["rope_type"] = std::string("llama3");
  for (const char *k : {"factor", "low_freq_factor", "high_freq_factor"}) in.attrs[k] = attr_f64(scaling.get(k));
  in.attrs["original_max_position_embeddings"] =
      static_cast<int64_t>(attr_f64(scaling.get("original_max_position_embeddings")));
}

} // namespace parallora::lowering
