//===- autodiff.cpp - --autodiff: reverse-mode gradients for the adapters ---===//
//
// Invariants after this pass, in @train_step:
//  * the forward ops are unchanged and come first; the backward ops follow in reverse order
//    of their forward ops, before the return (so a plan runs forward, then backward);
//  * every trainable pl.param has exactly one pl.accumulate_grad of d(loss * seed)/d(param);
//  * no gradient is computed for a value that does not depend on a trainable param.
//
//===----------------------------------------------------------------------===//
#include "ir/Dialect.h"
#include "passes/train/Passes.h"
#include "passes/train/grad_rules.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"

namespace parallora {
#define GEN_PASS_DEF_AUTODIFF
#include "passes/train/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

std::string param_name(Value v) {
  if (auto p = v.getDefiningOp<pl::ParamOp>()) return p.getName().str();
  return "";
}

class Autodiff : public impl::AutodiffBase<Autodiff> {
public:
  using AutodiffBase::AutodiffBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto func = module.lookupSymbol<func::FuncOp>(kTrainStep);
    if (!func) {
      module.emitError("autodiff: no func @train_step; run --append-loss first");
      return signalPassFailure();
    }
    if (microBatches < 1) {
      func.emitError("autodiff: micro-batches = ") << int64_t(microBatches) << " must be >= 1";
      return signalPassFailure();
    }
    Block &body = func.getBody().front();
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    Value loss = ret.getNumOperands() == 1 ? ret.getOperand(0) : Value();
    if (!loss || !loss.getDefiningOp<pl::CrossEntropyOp>()) {
      func.emitError("autodiff: @train_step must return the result of pl.cross_entropy");
      return signalPassFailure();
    }

    // Activity analysis: a value is active when it depends on a trainable param.
    SmallVector<Operation *> forward;
    for (Operation &op : body.without_terminator()) forward.push_back(&op);
    llvm::DenseSet<Value> active;
    SmallVector<pl::ParamOp> trainables;
    for (Operation *op : forward) {
      if (auto p = dyn_cast<pl::ParamOp>(op)) {
        if (p.getTrainable()) {
          active.insert(p.getResult());
          trainables.push_back(p);
        }
        continue;
      }
      if (llvm::any_of(op->getOperands(), [&](Value v) { return active.contains(v); }))
        for (Value r : op->getResults()) active.insert(r);
      for (unsigned idx : weight_operands_without_grad(op))
        if (idx < op->getNumOperands() && active.contains(op->getOperand(idx))) {
          std::string name = param_name(op->getOperand(idx));
          op->emitError("autodiff: trainable value ")
              << (name.empty() ? std::string("(computed)") : "'" + name + "'") << " is operand #" << idx << " of "
              << op->getName() << ", a frozen weight slot; only LoRA adapters can train (full fine-tuning is not "
              << "supported)";
          return signalPassFailure();
        }
    }
    if (trainables.empty()) {
      func.emitError("autodiff: @train_step has no trainable param (inject LoRA adapters first)");
      return signalPassFailure();
    }
    if (!active.contains(loss)) {
      func.emitError("autodiff: the loss does not depend on any trainable param");
      return signalPassFailure();
    }

    GradContext ctx;
    ctx.loss_seed = 1.0 / static_cast<double>(microBatches);
    llvm::DenseMap<Value, Value> grad;
    OpBuilder b(ret);
    auto add_grad = [&](Operation *fwd, Value v, Value g) {
      auto it = grad.find(v);
      if (it == grad.end()) {
        grad[v] = g;
        return;
      }
      // A value with several users: the gradient is the sum over its users.
      auto sum = b.create<pl::AddOp>(fwd->getLoc(), it->second, g);
      if (Attribute layer = fwd->getAttr(pl::kLayerAttr)) sum->setAttr(pl::kLayerAttr, layer);
      it->second = sum;
    };

    for (Operation *op : llvm::reverse(forward)) {
      if (isa<pl::ParamOp, pl::ConstantOp>(op)) continue;
      if (llvm::none_of(op->getResults(), [&](Value r) { return active.contains(r); })) continue;
      SmallVector<Value> result_grads;
      for (Value r : op->getResults()) result_grads.push_back(grad.lookup(r));
      bool is_loss = isa<pl::CrossEntropyOp>(op) && op->getResult(0) == loss;
      if (!is_loss && llvm::all_of(result_grads, [](Value g) { return !g; })) continue;  // does not reach the loss
      SmallVector<bool> needs;
      for (Value v : op->getOperands()) needs.push_back(active.contains(v));
      GradRule rule = lookup_grad_rule(op);
      if (!rule) {
        op->emitError("autodiff: no gradient rule for ")
            << op->getName() << "; it lies between a trainable param and the loss";
        return signalPassFailure();
      }
      SmallVector<Value> operand_grads(op->getNumOperands());
      if (failed(rule(op, result_grads, needs, b, ctx, operand_grads))) return signalPassFailure();
      for (unsigned i = 0; i < op->getNumOperands(); ++i)
        if (operand_grads[i]) add_grad(op, op->getOperand(i), operand_grads[i]);
    }

    for (pl::ParamOp p : trainables) {
      Value g = grad.lookup(p.getResult());
      if (!g) {
        p.emitError("autodiff: trainable param '") << p.getName() << "' does not influence the loss";
        return signalPassFailure();
      }
      auto acc = b.create<pl::AccumulateGradOp>(p.getLoc(), g, p.getNameAttr());
      if (Attribute layer = p->getAttr(pl::kLayerAttr)) acc->setAttr(pl::kLayerAttr, layer);
    }
  }
};

} // namespace
} // namespace parallora
