//===- partition.cpp - sharding propagation + collectives over a dp x tp mesh ---===//
//
// One generic pass: layouts are seeded on parameters (tensor-parallel rules by name) and on
// the inputs (batch over dp), propagated op by op in program order, and where an operand's
// layout is not the one its consumer accepts, a collective converts it:
//   partial (P) -> replicated (R)            pl.all_reduce after the producer
//   R entering a tp-sharded computation      pl.copy_to_group (gradient all-reduce)
// Finally every value gets its local type. See Passes.td for the rules.
//
//===----------------------------------------------------------------------===//
#include "passes/parallel/Passes.h"

#include <numeric>

#include "ir/Dialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"

namespace parallora {
#define GEN_PASS_DEF_PARTITION
#include "passes/parallel/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

struct Layout {
  enum Kind { R, S, P } kind = R;
  int dim = -1;  // S only
  bool operator==(const Layout &o) const { return kind == o.kind && dim == o.dim; }
  bool operator!=(const Layout &o) const { return !(*this == o); }
};
Layout rep() { return {}; }
Layout shard(int d) { return {Layout::S, d}; }
Layout partial() { return {Layout::P, -1}; }

std::string describe(Layout l) {
  switch (l.kind) {
  case Layout::R: return "replicated";
  case Layout::S: return "sharded on dim " + std::to_string(l.dim);
  case Layout::P: return "a partial sum";
  }
  return "?";
}

/// Megatron's placement of a parameter, from its HF / PEFT name.
Layout seed_layout(StringRef name) {
  auto has = [&](StringRef s) { return name.contains(s); };
  bool column = has(".q_proj.") || has(".k_proj.") || has(".v_proj.") || has(".gate_proj.") || has(".up_proj.");
  bool row = has(".o_proj.") || has(".down_proj.");
  bool lora_a = has(".lora_A."), lora_b = has(".lora_B.");
  if (column) return lora_a ? rep() : shard(0);   // W (N,K) and B (N,r) split N; A (r,K) whole
  if (row) return lora_b ? rep() : shard(1);      // W (N,K) and A (r,K) split K; B (N,r) whole
  if (name.startswith("model.embed_tokens.") || name.startswith("lm_head.")) return shard(0);
  return rep();
}

using pl::layer_of;

class Partitioner {
public:
  Partitioner(func::FuncOp f, int64_t dp, int64_t tp) : f_(f), dp_(dp), tp_(tp), b_(f.getContext()) {}

  LogicalResult run() {
    Block &body = f_.getBody().front();
    for (BlockArgument a : body.getArguments()) lay_[a] = rep();
    SmallVector<Operation *> ops;
    for (Operation &op : body) ops.push_back(&op);
    for (Operation *op : ops) {
      if (failed(visit(op))) return failure();
      visited_.insert(op);
    }
    if (tp_ > 1)
      for (Operation *op : ops)
        for (Value r : op->getResults())
          if (failed(localize(r, op))) return failure();
    if (dp_ > 1 && failed(split_batch())) return failure();
    // The function type follows the (possibly) new argument and result types.
    auto *term = body.getTerminator();
    f_.setType(FunctionType::get(f_.getContext(), body.getArgumentTypes(), term->getOperandTypes()));
    return success();
  }

private:
  Layout get(Value v) { return lay_.lookup(v); }

  InFlightDiagnostic error(Operation *op, const Twine &msg) {
    std::string mod;
    if (auto m = op->getAttrOfType<StringAttr>("module")) mod = " (" + m.str() + ")";
    return op->emitError("partition: ") << msg << mod;
  }

  void set_insertion_after(Value v) {
    if (auto *d = v.getDefiningOp()) b_.setInsertionPointAfter(d);
    else b_.setInsertionPointToStart(v.getParentBlock());
  }

  /// `v` as a replicated value: a partial sum gets one all-reduce (shared by all consumers).
  FailureOr<Value> need_rep(Operation *user, Value v) {
    Layout l = get(v);
    if (l.kind == Layout::R) return v;
    if (l.kind == Layout::S) {
      error(user, "operand is ") << describe(l) << " over tp but " << user->getName()
                                 << " needs the whole value; this op cannot be tensor-parallel";
      return failure();
    }
    auto it = reduced_.find(v);
    if (it != reduced_.end()) return it->second;
    set_insertion_after(v);
    auto ar = b_.create<pl::AllReduceOp>(v.getLoc(), v, b_.getStringAttr("tp"));
    ar->setAttr(pl::kLayerAttr, b_.getI64IntegerAttr(layer_of(v.getDefiningOp())));
    // Every consumer not yet visited reads the reduced value (visited ones chose their layout).
    v.replaceUsesWithIf(ar.getResult(), [&](OpOperand &o) {
      return o.getOwner() != ar.getOperation() && !visited_.contains(o.getOwner());
    });
    lay_[ar.getResult()] = rep();
    reduced_[v] = ar.getResult();
    return ar.getResult();
  }

  /// `v` (replicated) entering a tp-sharded computation: one pl.copy_to_group per value.
  Value enter_group(Value v) {
    auto it = copied_.find(v);
    if (it != copied_.end()) return it->second;
    set_insertion_after(v);
    auto c = b_.create<pl::CopyToGroupOp>(v.getLoc(), v, b_.getStringAttr("tp"));
    c->setAttr(pl::kLayerAttr, b_.getI64IntegerAttr(layer_of(v.getDefiningOp())));
    lay_[c.getResult()] = rep();
    copied_[v] = c.getResult();
    return c.getResult();
  }

  LogicalResult visit(Operation *op) {
    if (tp_ == 1) {  // data parallel only: nothing is sharded but the batch
      for (Value r : op->getResults()) lay_[r] = rep();
      return success();
    }
    if (auto p = dyn_cast<pl::ParamOp>(op)) {
      Layout l = seed_layout(p.getName());
      lay_[p.getResult()] = l;
      return success();
    }
    if (auto e = dyn_cast<pl::EmbeddingOp>(op)) {
      Layout t = get(e.getTable());
      if (t.kind == Layout::S && t.dim == 0) {
        e->setAttr(kVocabGroupAttr, b_.getStringAttr("tp"));
        lay_[e.getResult()] = partial();
      } else {
        lay_[e.getResult()] = rep();
      }
      return success();
    }
    if (isa<pl::LinearOp, pl::LoraLinearOp>(op)) return visit_linear(op);
    if (auto r = dyn_cast<pl::ReshapeOp>(op)) return visit_reshape(r);
    if (auto t = dyn_cast<pl::TransposeOp>(op)) {
      Layout l = get(t.getInput());
      if (l.kind == Layout::S) {
        ArrayRef<int64_t> perm = t.getPerm();
        int moved = l.dim;
        for (size_t i = 0; i < perm.size(); ++i)
          if (perm[i] == l.dim) moved = static_cast<int>(i);
        l.dim = moved;
      }
      lay_[t.getResult()] = l;
      return success();
    }
    if (auto r = dyn_cast<pl::RopeOp>(op)) {
      Layout l = get(r.getInput());
      int last = static_cast<int>(r.getType().cast<RankedTensorType>().getRank()) - 1;
      if (l.kind == Layout::P) {
        auto v = need_rep(op, r.getInput());
        if (failed(v)) return failure();
        r->setOperand(0, *v);
        l = rep();
      } else if (l.kind == Layout::S && (l.dim == last || l.dim == last - 1)) {
        return error(op, "rope input is ") << describe(l) << "; only heads may be sharded";
      }
      lay_[r.getResult()] = l;
      return success();
    }
    if (auto a = dyn_cast<pl::AttentionOp>(op)) {
      Layout q = get(a.getQuery()), k = get(a.getKey()), v = get(a.getValue());
      if (q == shard(1) && k == shard(1) && v == shard(1)) {
        lay_[a.getResult()] = shard(1);
        return success();
      }
      if (q.kind == Layout::S || k.kind == Layout::S || v.kind == Layout::S)
        return error(op, "attention operands have different layouts (query ")
               << describe(q) << ", key " << describe(k) << ", value " << describe(v) << ")";
      return all_rep(op);
    }
    if (auto ce = dyn_cast<pl::CrossEntropyOp>(op)) {
      Layout l = get(ce.getLogits());
      int last = static_cast<int>(ce.getLogits().getType().cast<RankedTensorType>().getRank()) - 1;
      if (l.kind == Layout::S && l.dim == last) {
        ce->setAttr(kVocabGroupAttr, b_.getStringAttr("tp"));
        lay_[ce.getLoss()] = rep();
        return success();
      }
      return all_rep(op);
    }
    if (isa<pl::AddOp, pl::MulOp, pl::SwigluOp, pl::SiluOp>(op)) return visit_elementwise(op);
    return all_rep(op);  // rms_norm, return, anything else: whole values in, whole values out
  }

  /// Every operand replicated (partial sums reduced); results replicated.
  LogicalResult all_rep(Operation *op) {
    for (OpOperand &o : op->getOpOperands()) {
      auto v = need_rep(op, o.get());
      if (failed(v)) return failure();
      o.set(*v);
    }
    for (Value r : op->getResults()) lay_[r] = rep();
    return success();
  }

  LogicalResult visit_elementwise(Operation *op) {
    bool all_partial = isa<pl::AddOp>(op) &&
                       llvm::all_of(op->getOperands(), [&](Value v) { return get(v).kind == Layout::P; });
    if (all_partial) {  // (a_r + b_r) summed = a + b: stay partial
      lay_[op->getResult(0)] = partial();
      return success();
    }
    Layout common = rep();
    for (OpOperand &o : op->getOpOperands()) {
      if (get(o.get()).kind == Layout::P) {
        auto v = need_rep(op, o.get());
        if (failed(v)) return failure();
        o.set(*v);
      }
      Layout l = get(o.get());
      if (o.getOperandNumber() == 0) common = l;
      else if (l != common)
        return error(op, "operands have different layouts (") << describe(common) << " and " << describe(l) << ")";
    }
    lay_[op->getResult(0)] = common;
    return success();
  }

  void mark_grad_partial(Value param) {
    if (auto p = param.getDefiningOp<pl::ParamOp>(); p && p.getTrainable() && get(param).kind == Layout::R)
      p->setAttr(kGradPartialAttr, b_.getStringAttr("tp"));
  }

  LogicalResult visit_linear(Operation *op) {
    Value x = op->getOperand(0), w = op->getOperand(1);
    auto lora = dyn_cast<pl::LoraLinearOp>(op);
    Layout lw = get(w);
    int last = static_cast<int>(op->getResult(0).getType().cast<RankedTensorType>().getRank()) - 1;
    if (lw.kind == Layout::S && lw.dim == 0) {  // column parallel
      auto xr = need_rep(op, x);
      if (failed(xr)) return failure();
      op->setOperand(0, enter_group(*xr));
      if (lora) {
        if (get(lora.getLoraA()).kind != Layout::R || get(lora.getLoraB()) != shard(0))
          return error(op, "LoRA of a column-parallel layer needs lora_A replicated and lora_B sharded on dim 0");
        mark_grad_partial(lora.getLoraA());
      }
      lay_[op->getResult(0)] = shard(last);
      return success();
    }
    if (lw.kind == Layout::S && lw.dim == 1) {  // row parallel
      if (get(x) != shard(last))
        return error(op, "row-parallel input must be sharded on its last dim, but it is ") << describe(get(x));
      if (lora) {
        if (get(lora.getLoraA()) != shard(1) || get(lora.getLoraB()).kind != Layout::R)
          return error(op, "LoRA of a row-parallel layer needs lora_A sharded on dim 1 and lora_B replicated");
        mark_grad_partial(lora.getLoraB());
      }
      lay_[op->getResult(0)] = partial();
      return success();
    }
    return all_rep(op);
  }

  LogicalResult visit_reshape(pl::ReshapeOp r) {
    Layout l = get(r.getInput());
    if (l.kind != Layout::S) {
      lay_[r.getResult()] = l;
      return success();
    }
    auto in = r.getInput().getType().cast<RankedTensorType>().getShape();
    auto out = r.getType().cast<RankedTensorType>().getShape();
    // The sharded dim keeps its position if some result dim starts at the same element
    // stride (the shard is the outer factor of a split or merge, e.g. heads of heads*head_dim).
    int64_t prefix = 1;
    for (int i = 0; i < l.dim; ++i) prefix *= in[i];
    int64_t p2 = 1;
    for (int e = 0; e < static_cast<int>(out.size()); ++e) {
      if (p2 == prefix && out[e] % tp_ == 0) {
        lay_[r.getResult()] = shard(e);
        return success();
      }
      p2 *= out[e];
    }
    return error(r, "cannot carry a shard of dim ") << l.dim << " through this reshape";
  }

  /// The local type of a value of layout S(d): dim d divided by tp.
  LogicalResult localize(Value v, Operation *op) {
    Layout l = get(v);
    if (l.kind != Layout::S) return success();
    auto t = v.getType().cast<RankedTensorType>();
    SmallVector<int64_t> shape(t.getShape().begin(), t.getShape().end());
    if (shape[l.dim] % tp_ != 0)
      return error(op, "dim ") << l.dim << " of size " << shape[l.dim] << " is not divisible by tp " << tp_;
    shape[l.dim] /= tp_;
    v.setType(RankedTensorType::get(shape, t.getElementType()));
    if (auto p = dyn_cast<pl::ParamOp>(op))
      p->setAttr(kShardAttr, b_.getDictionaryAttr({b_.getNamedAttr("dim", b_.getI64IntegerAttr(l.dim)),
                                                    b_.getNamedAttr("parts", b_.getI64IntegerAttr(tp_)),
                                                    b_.getNamedAttr("group", b_.getStringAttr("tp"))}));
    return success();
  }

  /// Data parallel: every value computed from the inputs loses dp-fold of its batch dim.
  LogicalResult split_batch() {
    Block &body = f_.getBody().front();
    llvm::DenseSet<Value> from_inputs;
    auto shrink = [&](Value v, Operation *at) -> LogicalResult {
      auto t = v.getType().cast<RankedTensorType>();
      if (t.getRank() == 0) return success();
      SmallVector<int64_t> shape(t.getShape().begin(), t.getShape().end());
      if (shape[0] % dp_ != 0) {
        InFlightDiagnostic d = at ? at->emitError("partition: ") : f_.emitError("partition: ");
        return d << "the micro-batch of " << shape[0] << " sequences is not divisible by dp " << dp_;
      }
      shape[0] /= dp_;
      v.setType(RankedTensorType::get(shape, t.getElementType()));
      return success();
    };
    for (BlockArgument a : body.getArguments()) {
      from_inputs.insert(a);
      if (failed(shrink(a, nullptr))) return failure();
    }
    for (Operation &op : body) {
      if (!llvm::any_of(op.getOperands(), [&](Value v) { return from_inputs.contains(v); })) continue;
      for (Value r : op.getResults()) {
        from_inputs.insert(r);
        if (failed(shrink(r, &op))) return failure();
      }
    }
    return success();
  }

  func::FuncOp f_;
  int64_t dp_, tp_;
  OpBuilder b_;
  llvm::DenseMap<Value, Layout> lay_;
  llvm::DenseMap<Value, Value> reduced_, copied_;
  llvm::DenseSet<Operation *> visited_;
};

/// tp must split heads (GQA: key/value heads too), the MLP and the vocabulary evenly.
LogicalResult check_tp(ModuleOp m, int64_t tp) {
  auto cfg = m->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  if (!cfg || tp == 1) return success();
  struct Dim {
    const char *key;
    int64_t v;
  };
  SmallVector<Dim> dims;
  for (const char *k : {"num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"})
    if (auto a = cfg.getAs<IntegerAttr>(k)) dims.push_back({k, a.getInt()});
  int64_t g = 0;
  for (Dim &d : dims) g = std::gcd(g, d.v);
  for (Dim &d : dims)
    if (d.v % tp != 0) {
      std::string ok;
      for (int64_t t = 1; t <= g; ++t)
        if (g % t == 0) ok += (ok.empty() ? "" : ", ") + std::to_string(t);
      return m.emitError("partition: tp ") << tp << " does not divide " << d.key << " = " << d.v
                                           << " of the model; tensor-parallel degrees that work: " << ok;
    }
  return success();
}

struct PartitionPass : impl::PartitionBase<PartitionPass> {
  using PartitionBase::PartitionBase;
  void runOnOperation() override {
    ModuleOp m = getOperation();
    if (dp < 1 || tp < 1 || pp < 1) {
      m.emitError("partition: dp, tp and pp must be >= 1 (got dp ") << dp << ", tp " << tp << ", pp " << pp << ")";
      return signalPassFailure();
    }
    OpBuilder b(m.getContext());
    m->setAttr(kMeshAttr, b.getDictionaryAttr({b.getNamedAttr("dp", b.getI64IntegerAttr(dp)),
                                               b.getNamedAttr("tp", b.getI64IntegerAttr(tp)),
                                               b.getNamedAttr("pp", b.getI64IntegerAttr(pp))}));
    if (failed(check_tp(m, tp))) return signalPassFailure();
    for (auto f : llvm::make_early_inc_range(m.getOps<func::FuncOp>())) {
      if (f.isExternal() || f.getName() == kOptimizerStep) continue;
      if (llvm::any_of(f.getBody().front(), [](Operation &op) { return isa<pl::AccumulateGradOp>(op); })) {
        f.emitError("partition: @") << f.getName() << " already has gradients; run partition before autodiff";
        return signalPassFailure();
      }
      if (failed(Partitioner(f, dp, tp).run())) return signalPassFailure();
    }
  }
};

} // namespace
} // namespace parallora
