//===- recompute.cpp - --recompute-layers: activation recomputation per layer ===//
//
// See Passes.td. @train_step after autodiff: forward ops first, the loss (pl.cross_entropy),
// then the backward. Per decoder layer L:
//   in_layer    forward ops with pl.layer == L (pl.param ops are never cloned: weights stay put)
//   checkpoint  a value of in_layer read by a forward op outside in_layer (kept from the forward)
//   needed      non-checkpoint values of in_layer read by a backward op
//   slice       the in_layer ops needed values depend on, stopping at checkpoints and at values
//               defined outside the layer (params, the layer's input)
// The slice is cloned, in its original order, before the first backward op reading a needed
// value, and every backward use of a slice value is redirected to its clone.
//
//===----------------------------------------------------------------------===//
#include "ir/Dialect.h"
#include "passes/train/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"

#include <map>

namespace parallora {
#define GEN_PASS_DEF_RECOMPUTELAYERS
#include "passes/train/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

using pl::layer_of;

struct RecomputeLayersPass : impl::RecomputeLayersBase<RecomputeLayersPass> {
  void runOnOperation() override {
    ModuleOp m = getOperation();
    auto func = m.lookupSymbol<func::FuncOp>(kTrainStep);
    if (!func) {
      m.emitError("recompute-layers: no func @train_step; run --append-loss and --autodiff first");
      return signalPassFailure();
    }
    Block &body = func.getBody().front();
    llvm::DenseMap<Operation *, int64_t> order;
    Operation *loss = nullptr;
    int64_t i = 0;
    for (Operation &op : body) {
      order[&op] = i++;
      if (!loss && isa<pl::CrossEntropyOp>(op)) loss = &op;
    }
    if (!loss || !llvm::any_of(body.without_terminator(), [&](Operation &op) { return order[&op] > order[loss]; })) {
      func.emitError("recompute-layers: @train_step has no backward after its loss; run --autodiff first");
      return signalPassFailure();
    }
    const int64_t loss_at = order[loss];
    auto is_backward = [&](Operation *op) {
      auto it = order.find(op);
      return it != order.end() && it->second > loss_at;
    };

    std::map<int64_t, llvm::SmallVector<Operation *>> layers;
    for (Operation &op : body) {
      if (order[&op] >= loss_at) break;
      if (!isa<pl::ParamOp>(op) && layer_of(&op) >= 0) layers[layer_of(&op)].push_back(&op);
    }
    mlir::Builder attrs(m.getContext());
    for (auto &[layer, ops] : layers) {
      llvm::DenseSet<Operation *> in_layer(ops.begin(), ops.end());
      auto is_checkpoint = [&](Value v) {
        return llvm::any_of(v.getUsers(), [&](Operation *u) { return !is_backward(u) && !in_layer.count(u); });
      };
      // Needed values, and the first backward op reading one.
      llvm::DenseSet<Operation *> slice;
      llvm::SmallVector<Operation *> work;
      Operation *first_use = nullptr;
      for (Operation *op : ops)
        for (Value r : op->getResults()) {
          if (is_checkpoint(r)) continue;
          for (Operation *u : r.getUsers()) {
            if (!is_backward(u)) continue;
            if (!first_use || order[u] < order[first_use]) first_use = u;
            if (slice.insert(op).second) work.push_back(op);
          }
        }
      if (!first_use) continue;
      while (!work.empty()) {
        Operation *op = work.pop_back_val();
        for (Value v : op->getOperands()) {
          Operation *def = v.getDefiningOp();
          if (def && in_layer.count(def) && !is_checkpoint(v) && slice.insert(def).second) work.push_back(def);
        }
      }
      OpBuilder b(first_use);
      IRMapping map;
      for (Operation *op : ops) {  // original order
        if (!slice.count(op)) continue;
        Operation *c = b.clone(*op, map);
        c->setAttr(pl::kRecomputeAttr, attrs.getUnitAttr());
        order[c] = loss_at + 1;  // part of the backward from now on
      }
      for (Operation *op : ops) {
        if (!slice.count(op)) continue;
        for (Value r : op->getResults())
          r.replaceUsesWithIf(map.lookup(r), [&](OpOperand &use) { return is_backward(use.getOwner()); });
      }
    }
  }
};

} // namespace
} // namespace parallora
