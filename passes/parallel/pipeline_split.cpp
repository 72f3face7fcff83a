//===- pipeline_split.cpp - stages balanced by FLOPs, send/recv at the cuts --===//
//
// Units: 0 = everything before the first decoder layer (embedding), 1..L = decoder layers,
// L+1 = everything after (final norm, LM head, loss, and their backward). Forward and
// backward ops of a unit carry the same pl.layer, so a stage owns both directions of its
// layers. Stages are the contiguous grouping of units that minimises the costliest stage.
//
//===----------------------------------------------------------------------===//
#include "passes/parallel/Passes.h"

#include <map>

#include "ir/Dialect.h"
#include "passes/lower/flops.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/DenseMap.h"

namespace parallora {
#define GEN_PASS_DEF_PIPELINESPLIT
#include "passes/parallel/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

using pl::layer_of;

/// Unit of every op of `f` (see the file comment); params follow their first user.
llvm::DenseMap<Operation *, int64_t> assign_units(func::FuncOp f, int64_t layers) {
  llvm::DenseMap<Operation *, int64_t> unit;
  bool seen_layer = false;
  for (Operation &op : f.getBody().front().without_terminator()) {
    int64_t l = layer_of(&op);
    if (l >= 0) seen_layer = true;
    unit[&op] = l >= 0 ? l + 1 : (seen_layer ? layers + 1 : 0);
  }
  for (Operation &op : f.getBody().front().without_terminator())
    if (isa<pl::ParamOp>(op)) {
      int64_t best = -1;
      for (Operation *u : op.getUsers())
        if (unit.count(u)) best = best < 0 ? unit[u] : std::min(best, unit[u]);
      if (best >= 0) unit[&op] = best;
    }
  return unit;
}

/// Contiguous split of `cost` into `parts` groups minimising the largest group (exact DP).
std::vector<int64_t> balance(const std::vector<double> &cost, int64_t parts) {
  const int64_t n = static_cast<int64_t>(cost.size());
  std::vector<double> prefix(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + cost[i];
  const double inf = 1e300;
  // best[k][i]: minimal max-cost splitting the first i units into k groups; cut[k][i]: last cut.
  std::vector<std::vector<double>> best(parts + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int64_t>> cut(parts + 1, std::vector<int64_t>(n + 1, 0));
  best[0][0] = 0;
  for (int64_t k = 1; k <= parts; ++k)
    for (int64_t i = k; i <= n; ++i)
      for (int64_t j = k - 1; j < i; ++j) {
        double v = std::max(best[k - 1][j], prefix[i] - prefix[j]);
        if (v < best[k][i]) best[k][i] = v, cut[k][i] = j;
      }
  std::vector<int64_t> stage_of(n);
  for (int64_t k = parts, i = n; k > 0; --k) {
    int64_t j = cut[k][i];
    for (int64_t u = j; u < i; ++u) stage_of[u] = k - 1;
    i = j;
  }
  return stage_of;
}

class Splitter {
public:
  Splitter(ModuleOp m, int64_t stages, const std::vector<int64_t> &unit_stage)
      : m_(m), stages_(stages), unit_stage_(unit_stage), b_(m.getContext()) {}

  /// Splits `f` into one function per stage; `unit` maps ops to units. Ops after the
  /// returned loss's producer are backward.
  LogicalResult split(func::FuncOp f, const llvm::DenseMap<Operation *, int64_t> &unit) {
    Block &body = f.getBody().front();
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    Operation *loss_op = ret.getNumOperands() ? ret.getOperand(0).getDefiningOp() : nullptr;
    // Stage functions with the same arguments; results only on the stage of the loss.
    int64_t loss_stage = loss_op ? unit_stage_[unit.lookup(loss_op)] : -1;
    std::vector<func::FuncOp> funcs(stages_);
    std::vector<IRMapping> maps(stages_);
    b_.setInsertionPoint(f);
    for (int64_t s = 0; s < stages_; ++s) {
      auto results = s == loss_stage ? TypeRange(ret.getOperandTypes()) : TypeRange();
      funcs[s] = b_.create<func::FuncOp>(f.getLoc(), stage_function(f.getName(), s),
                                         FunctionType::get(m_.getContext(), f.getArgumentTypes(), results));
      funcs[s]->setAttr(kStageAttr, b_.getI64IntegerAttr(s));
      if (auto args = f.getAllArgAttrs()) funcs[s].setAllArgAttrs(args);
      Block *blk = funcs[s].addEntryBlock();
      for (unsigned i = 0; i < body.getNumArguments(); ++i) maps[s].map(body.getArgument(i), blk->getArgument(i));
    }
    llvm::DenseMap<Operation *, int64_t> stage_of_op;
    bool backward = false;
    for (Operation &op : body.without_terminator()) {
      int64_t s = unit_stage_[unit.lookup(&op)];
      stage_of_op[&op] = s;
      OpBuilder at = OpBuilder::atBlockEnd(&funcs[s].getBody().front());
      // Operands produced on another stage arrive by recv (one per value and stage).
      for (Value v : op.getOperands()) {
        if (maps[s].contains(v)) continue;
        Operation *def = v.getDefiningOp();
        if (isa<pl::ParamOp>(def)) {  // a (frozen, tied) weight used on two stages: both hold it
          maps[s].map(v, at.clone(*def)->getResult(0));
          continue;
        }
        int64_t from = stage_of_op.lookup(def);
        int64_t tag = next_tag_++;
        auto recv = at.create<pl::RecvOp>(op.getLoc(), v.getType(), at.getI64IntegerAttr(from), at.getI64IntegerAttr(tag));
        recv->setAttr(pl::kLayerAttr, at.getI64IntegerAttr(layer_of(&op)));
        if (backward) recv->setAttr(kBackwardAttr, at.getUnitAttr());
        maps[s].map(v, recv.getResult());
        // The producer's stage sends it right after computing it.
        Operation *def_clone = maps[from].lookup(v).getDefiningOp();
        OpBuilder sb(def_clone->getContext());
        sb.setInsertionPointAfter(def_clone);
        auto send = sb.create<pl::SendOp>(op.getLoc(), maps[from].lookup(v), sb.getI64IntegerAttr(s), sb.getI64IntegerAttr(tag));
        send->setAttr(pl::kLayerAttr, sb.getI64IntegerAttr(layer_of(def)));
        if (def->hasAttr(kBackwardAttr)) send->setAttr(kBackwardAttr, sb.getUnitAttr());
      }
      Operation *c = at.clone(op, maps[s]);
      if (backward) {
        c->setAttr(kBackwardAttr, at.getUnitAttr());
        op.setAttr(kBackwardAttr, at.getUnitAttr());  // for sends placed after it later
      }
      if (&op == loss_op) backward = true;
    }
    for (int64_t s = 0; s < stages_; ++s) {
      OpBuilder at = OpBuilder::atBlockEnd(&funcs[s].getBody().front());
      SmallVector<Value> results;
      if (s == loss_stage)
        for (Value v : ret.getOperands()) {
          if (!maps[s].contains(v)) return f.emitError("pipeline-split: the loss is not computed on its stage");
          results.push_back(maps[s].lookup(v));
        }
      at.create<func::ReturnOp>(f.getLoc(), results);
    }
    f.erase();
    return success();
  }

  /// @optimizer_step per stage: each stage updates (and reduces) only its own trainables.
  /// A stage that holds none (only the embedding, or only the head) keeps no adamw_step, but
  /// the other stages sum the clipping norm over their norm group, which spans every stage:
  /// its @optimizer_step_s<k> carries that group (pl.norm_group) so the lowering gives it an
  /// adamw_step over no trainables that adds zero to the sum, and every rank of the group
  /// takes part in the all-reduce (without it the others wait for it until --comm-timeout).
  LogicalResult split_optimizer(func::FuncOp f, const llvm::StringMap<int64_t> &param_stage, int64_t ranks) {
    b_.setInsertionPoint(f);
    for (int64_t s = 0; s < ranks; ++s) {
      auto fs = b_.create<func::FuncOp>(f.getLoc(), stage_function(f.getName(), s), f.getFunctionType());
      fs->setAttr(kStageAttr, b_.getI64IntegerAttr(s));
      Block *blk = fs.addEntryBlock();
      OpBuilder at = OpBuilder::atBlockEnd(blk);
      StringAttr norm_group;  // of an adamw_step this stage dropped
      bool has_step = false;
      for (Operation &op : f.getBody().front().without_terminator()) {
        auto names = op.getAttrOfType<ArrayAttr>("params");
        if (!names) return op.emitError("pipeline-split: unexpected op in @optimizer_step");
        SmallVector<Attribute> keep;
        // Per-parameter integer lists filtered along with `params`.
        SmallVector<StringRef> lists = {kNormDivisorsAttr, kZeroOwnersAttr, "owners"};
        llvm::StringMap<SmallVector<int64_t>> kept;
        for (auto [i, a] : llvm::enumerate(names)) {
          auto it = param_stage.find(a.cast<StringAttr>().getValue());
          if (it == param_stage.end())
            return op.emitError("pipeline-split: '") << a << "' is not a parameter of @train_step";
          if (it->second != s) continue;
          keep.push_back(a);
          for (StringRef l : lists)
            if (auto v = op.getAttrOfType<DenseI64ArrayAttr>(l)) kept[l].push_back(v[i]);
        }
        if (keep.empty()) {  // a bucket or an optimizer with nothing on this stage
          if (isa<pl::AdamWStepOp>(op))
            if (auto g = op.getAttrOfType<StringAttr>(kNormGroupAttr)) norm_group = g;
          continue;
        }
        has_step |= isa<pl::AdamWStepOp>(op);
        Operation *c = at.clone(op);
        c->setAttr("params", at.getArrayAttr(keep));
        for (auto &e : kept) c->setAttr(e.getKey(), at.getDenseI64ArrayAttr(e.getValue()));
      }
      if (!has_step && norm_group) fs->setAttr(kNormGroupAttr, norm_group);
      at.create<func::ReturnOp>(f.getLoc());
    }
    f.erase();
    return success();
  }

private:
  ModuleOp m_;
  int64_t stages_;
  std::vector<int64_t> unit_stage_;
  OpBuilder b_;
  int64_t next_tag_ = 0;
};

struct PipelineSplitPass : impl::PipelineSplitBase<PipelineSplitPass> {
  using PipelineSplitBase::PipelineSplitBase;
  void runOnOperation() override {
    ModuleOp m = getOperation();
    Mesh3 mesh = read_mesh(m);
    if (schedule != "gpipe" && schedule != "1f1b" && schedule != "zb-h1" && schedule != "interleaved") {
      m.emitError("pipeline-split: unknown schedule '") << schedule << "' (choose gpipe, 1f1b, interleaved or zb-h1)";
      return signalPassFailure();
    }
    const int64_t v = virtualStages;
    if (v < 1 || (v > 1 && schedule != "interleaved")) {
      m.emitError("pipeline-split: virtual-stages ") << v << " needs schedule=interleaved (and must be >= 1)";
      return signalPassFailure();
    }
    if (mesh.pp <= 1) return;
    const int64_t chunks = mesh.pp * v;  // model chunks; chunk k runs on rank k % pp
    auto train = m.lookupSymbol<func::FuncOp>(kTrainStep);
    auto eval = m.lookupSymbol<func::FuncOp>(kEvalStep);
    auto optim = m.lookupSymbol<func::FuncOp>(kOptimizerStep);
    if (!train || !eval || !optim) {
      m.emitError("pipeline-split: needs @train_step, @eval_step and @optimizer_step (run the training passes first)");
      return signalPassFailure();
    }
    int64_t layers = 0;
    train.walk([&](Operation *op) { layers = std::max(layers, layer_of(op) + 1); });
    const int64_t units = layers + 2;
    if (chunks > units) {
      if (v > 1)
        m.emitError("pipeline-split: pp ") << mesh.pp << " x " << v << " virtual stages = " << chunks
                                           << " model chunks need at least " << chunks << " units, but the model has "
                                           << units << " (embedding, " << layers
                                           << " decoder layers, head); use fewer virtual stages";
      else
        m.emitError("pipeline-split: ") << mesh.pp << " stages need at least " << mesh.pp
                                        << " units, but the model has " << units << " (embedding, " << layers
                                        << " decoder layers, head); use at most pp " << units;
      return signalPassFailure();
    }
    auto train_units = assign_units(train, layers);
    std::vector<double> cost(units, 0);
    for (auto &[op, u] : train_units) cost[u] += op_flops(op);
    // Tiny units (an embedding lookup has no FLOPs) still cost something to run.
    double total = 0;
    for (double c : cost) total += c;
    for (double &c : cost) c += 1e-3 * total / static_cast<double>(units);
    std::vector<int64_t> unit_stage = balance(cost, chunks);

    llvm::StringMap<int64_t> param_rank;  // the pipeline rank that updates each adapter
    for (auto &[op, u] : train_units)
      if (auto p = dyn_cast<pl::ParamOp>(op); p && p.getTrainable()) param_rank[p.getName()] = unit_stage[u] % mesh.pp;

    Splitter sp(m, chunks, unit_stage);
    auto eval_units = assign_units(eval, layers);
    if (failed(sp.split(train, train_units)) || failed(sp.split(eval, eval_units)) ||
        failed(sp.split_optimizer(optim, param_rank, mesh.pp)))
      return signalPassFailure();
    OpBuilder b(m.getContext());
    SmallVector<Attribute> stage_units;
    for (int64_t u : unit_stage) stage_units.push_back(b.getI64IntegerAttr(u));
    SmallVector<NamedAttribute> pipe = {b.getNamedAttr("schedule", b.getStringAttr(schedule)),
                                        b.getNamedAttr("stages", b.getI64IntegerAttr(mesh.pp)),
                                        b.getNamedAttr("unit_stage", b.getArrayAttr(stage_units))};
    // unit_stage then holds model chunks (0 .. pp * v - 1).
    if (v > 1) pipe.push_back(b.getNamedAttr("virtual_stages", b.getI64IntegerAttr(v)));
    m->setAttr(kPipelineAttr, b.getDictionaryAttr(pipe));
  }
};

} // namespace
} // namespace parallora
