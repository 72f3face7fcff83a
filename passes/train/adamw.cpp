//===- adamw.cpp - --adamw: the optimizer step over every trainable --------===//
//
// Adds  func @optimizer_step() { pl.adamw_step {params = [...], ...}; return }
// with the trainables in @train_step order (the order of their gradient accumulators, which
// is also the order the runtime saves them in), and records the hyperparameters and the LR
// schedule in the module attribute pl.train.
//
//===----------------------------------------------------------------------===//
#include "ir/Dialect.h"
#include "passes/train/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace parallora {
#define GEN_PASS_DEF_ADAMW
#include "passes/train/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

class AdamW : public impl::AdamWBase<AdamW> {
public:
  using AdamWBase::AdamWBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto train = module.lookupSymbol<func::FuncOp>(kTrainStep);
    if (!train) {
      module.emitError("adamw: no func @train_step; run --append-loss and --autodiff first");
      return signalPassFailure();
    }
    if (!(lr > 0)) return fail(train, "lr must be > 0");
    if (schedule != "constant" && schedule != "cosine" && schedule != "linear")
      return fail(train, "schedule '" + schedule + "' is not one of constant, cosine, linear");
    if (warmupSteps < 0 || totalSteps < 0) return fail(train, "warmup-steps and total-steps must be >= 0");
    if (minLrRatio < 0 || minLrRatio > 1) return fail(train, "min-lr-ratio must be in [0, 1]");

    SmallVector<Attribute> params;
    train.walk([&](pl::AccumulateGradOp acc) { params.push_back(acc.getParamAttr()); });
    if (params.empty()) return fail(train, "@train_step accumulates no gradients; run --autodiff first");

    OpBuilder b(module.getContext());
    b.setInsertionPointToEnd(module.getBody());
    Location loc = NameLoc::get(b.getStringAttr("optimizer"));
    auto func = b.create<func::FuncOp>(loc, kOptimizerStep, b.getFunctionType({}, {}));
    b.setInsertionPointToStart(func.addEntryBlock());
    auto step = b.create<pl::AdamWStepOp>(loc, b.getArrayAttr(params), b.getF64FloatAttr(beta1),
                                          b.getF64FloatAttr(beta2), b.getF64FloatAttr(eps),
                                          b.getF64FloatAttr(weightDecay), b.getF64FloatAttr(maxGradNorm));
    if (failed(step.verify())) return signalPassFailure();
    b.create<func::ReturnOp>(loc);

    NamedAttrList hp;
    hp.set("lr", b.getF64FloatAttr(lr));
    hp.set("schedule", b.getStringAttr(schedule));
    hp.set("warmup_steps", b.getI64IntegerAttr(warmupSteps));
    hp.set("min_lr_ratio", b.getF64FloatAttr(minLrRatio));
    hp.set("total_steps", b.getI64IntegerAttr(totalSteps));
    hp.set("weight_decay", b.getF64FloatAttr(weightDecay));
    hp.set("beta1", b.getF64FloatAttr(beta1));
    hp.set("beta2", b.getF64FloatAttr(beta2));
    hp.set("eps", b.getF64FloatAttr(eps));
    hp.set("max_grad_norm", b.getF64FloatAttr(maxGradNorm));
    module->setAttr(kTrainAttr, hp.getDictionary(module.getContext()));
  }

private:
  void fail(Operation *at, const std::string &msg) {
    at->emitError("adamw: ") << msg;
    signalPassFailure();
  }
};

} // namespace
} // namespace parallora
