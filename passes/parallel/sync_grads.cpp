//===- sync_grads.cpp - bucketed gradient all-reduce + global-norm groups ---===//
#include "passes/parallel/Passes.h"

#include "ir/Dialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace parallora {
#define GEN_PASS_DEF_SYNCGRADS
#include "passes/parallel/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

struct Trainable {
  std::string name;
  int64_t bytes = 0;
  bool grad_partial = false;  // a partial sum over tp until reduced
  bool sharded = false;       // pl.shard: each tp rank holds a different slice
};

struct SyncGradsPass : impl::SyncGradsBase<SyncGradsPass> {
  using SyncGradsBase::SyncGradsBase;
  void runOnOperation() override {
    ModuleOp m = getOperation();
    Mesh3 mesh = read_mesh(m);
    auto train = m.lookupSymbol<func::FuncOp>(kTrainStep);
    auto optim = m.lookupSymbol<func::FuncOp>(kOptimizerStep);
    if (!train || !optim) {
      m.emitError("sync-grads: needs @train_step and @optimizer_step (run autodiff and adamw first)");
      return signalPassFailure();
    }
    pl::AdamWStepOp step;
    optim.walk([&](pl::AdamWStepOp s) { step = s; });
    if (!step) {
      optim.emitError("sync-grads: @optimizer_step has no pl.adamw_step");
      return signalPassFailure();
    }
    llvm::StringMap<Trainable> by_name;
    std::vector<std::string> order;  // definition order in @train_step
    train.walk([&](pl::ParamOp p) {
      if (!p.getTrainable()) return;
      Trainable t;
      t.name = p.getName().str();
      auto type = p.getType().cast<RankedTensorType>();
      t.bytes = type.getNumElements() * 4;
      t.grad_partial = p->hasAttr(kGradPartialAttr);
      t.sharded = p->hasAttr(kShardAttr);
      by_name[t.name] = t;
      order.push_back(t.name);
    });

    OpBuilder b(step);
    // Buckets: last layer first, one group per kind of gradient, at most bucket-mb each.
    auto group_of = [&](const Trainable &t) {
      std::string g;
      if (mesh.dp > 1) g = "dp";
      if (mesh.tp > 1 && t.grad_partial) g += g.empty() ? "tp" : ",tp";
      return g;
    };
    const int64_t cap = static_cast<int64_t>(bucketMb * 1024 * 1024);
    llvm::StringMap<std::pair<SmallVector<Attribute>, int64_t>> open;  // group -> (names, bytes)
    std::vector<std::string> group_order;
    auto flush = [&](const std::string &g) {
      auto &bucket = open[g];
      if (bucket.first.empty()) return;
      b.create<pl::GradAllReduceOp>(step.getLoc(), b.getArrayAttr(bucket.first), b.getStringAttr(g),
                                    b.getF64FloatAttr(1.0 / static_cast<double>(mesh.dp)));
      bucket = {};
    };
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      const Trainable &t = by_name[*it];
      std::string g = group_of(t);
      if (g.empty()) continue;
      auto &bucket = open[g];
      if (!bucket.first.empty() && bucket.second + t.bytes > cap) flush(g);
      open[g].first.push_back(b.getStringAttr(t.name));
      open[g].second += t.bytes;
      if (std::find(group_order.begin(), group_order.end(), g) == group_order.end()) group_order.push_back(g);
    }
    for (const std::string &g : group_order) flush(g);

    // ZeRO-1: each trainable's AdamW moments live on one dp rank (its owner), balanced by bytes
    // in the optimizer's order; the owners broadcast the updated values after the step.
    const bool sharded_optimizer = zero1 && mesh.dp > 1;
    SmallVector<int64_t> owners;
    if (sharded_optimizer) {
      std::vector<int64_t> load(mesh.dp, 0);
      for (Attribute a : step.getParams()) {
        auto it = by_name.find(a.cast<StringAttr>().getValue());
        if (it == by_name.end()) {
          step.emitError("sync-grads: adamw_step names '") << a << "', which @train_step does not define";
          return signalPassFailure();
        }
        int64_t best = std::min_element(load.begin(), load.end()) - load.begin();
        load[best] += it->second.bytes;
        owners.push_back(best);
      }
      step->setAttr(kZeroOwnersAttr, b.getDenseI64ArrayAttr(owners));
      OpBuilder after(step->getContext());
      after.setInsertionPointAfter(step);
      after.create<pl::ParamBroadcastOp>(step.getLoc(), step.getParamsAttr(), after.getStringAttr("dp"),
                                         after.getDenseI64ArrayAttr(owners));
    }

    // Global gradient norm: gradients live on different tp ranks (shards) and stages, and with
    // ZeRO-1 each dp rank sums only the gradients it owns.
    std::string norm_group;
    if (sharded_optimizer) norm_group = "dp";
    if (mesh.tp > 1) norm_group += norm_group.empty() ? "tp" : ",tp";
    if (mesh.pp > 1) norm_group += norm_group.empty() ? "pp" : ",pp";
    if (norm_group.empty()) return;
    SmallVector<int64_t> divisors;
    for (Attribute a : step.getParams()) {
      auto it = by_name.find(a.cast<StringAttr>().getValue());
      if (it == by_name.end()) {
        step.emitError("sync-grads: adamw_step names '") << a << "', which @train_step does not define";
        return signalPassFailure();
      }
      divisors.push_back(mesh.tp > 1 && !it->second.sharded ? mesh.tp : 1);
    }
    step->setAttr(kNormGroupAttr, b.getStringAttr(norm_group));
    step->setAttr(kNormDivisorsAttr, b.getDenseI64ArrayAttr(divisors));
  }
};

} // namespace
} // namespace parallora
