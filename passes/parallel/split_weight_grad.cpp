//===- split_weight_grad.cpp - the backward's B and W parts (ZB-H1) ---------===//
//
// Zero-bubble pipelining (Qi et al. 2023) runs a stage's backward in two tasks: B, the input
// gradient the previous stage waits for, and W, the weight gradient nobody waits for, which the
// schedule defers into the bubbles. With LoRA the only weight gradients are the adapters' dA
// and dB, computed by pl.lora_linear_grad together with dx: this pass splits that op into its
// input part and its weight part and moves every weight part (and the accumulate_grad it
// feeds) after the rest of the function. The lowering then cuts the backward there
// (pl.weight_grad ops -> the "backward_weight" program); since the move happens in the IR,
// the memory plan's liveness already keeps x and dy alive until W.
//
//===----------------------------------------------------------------------===//
#include "passes/parallel/Passes.h"

#include "ir/Dialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace parallora {
#define GEN_PASS_DEF_SPLITWEIGHTGRAD
#include "passes/parallel/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

/// Splits the lora_linear_grads of `f` and moves the weight parts to the end. Returns the
/// number of ops split.
int split_function(func::FuncOp f) {
  Block &body = f.getBody().front();
  SmallVector<pl::LoraLinearGradOp> grads;
  for (Operation &op : body.without_terminator())
    if (auto g = dyn_cast<pl::LoraLinearGradOp>(op); g && !g->hasAttr(pl::kGradPartAttr))
      if (!g.getGradLoraA().use_empty() || !g.getGradLoraB().use_empty()) grads.push_back(g);

  OpBuilder b(f.getContext());
  for (pl::LoraLinearGradOp g : grads) {
    b.setInsertionPointAfter(g);
    if (g.getGradInput().use_empty()) {  // nothing needs its dx (below the first adapter): all W
      g->setAttr(pl::kGradPartAttr, b.getStringAttr("weight"));
      g->setAttr(kWeightGradAttr, b.getUnitAttr());
      for (Operation *u : g->getUsers())
        if (isa<pl::AccumulateGradOp>(u)) u->setAttr(kWeightGradAttr, b.getUnitAttr());
      continue;
    }
    auto w = cast<pl::LoraLinearGradOp>(b.clone(*g.getOperation()));
    w->setAttr(pl::kGradPartAttr, b.getStringAttr("weight"));
    w->setAttr(kWeightGradAttr, b.getUnitAttr());
    g.getGradLoraA().replaceAllUsesWith(w.getGradLoraA());
    g.getGradLoraB().replaceAllUsesWith(w.getGradLoraB());
    g->setAttr(pl::kGradPartAttr, b.getStringAttr("input"));
    // Its consumers: the accumulations into the gradient buffers (the usual case). Anything
    // else stays in B and keeps its position after W's op; the move below then skips W.
    for (Operation *u : w->getUsers())
      if (isa<pl::AccumulateGradOp>(u)) u->setAttr(kWeightGradAttr, b.getUnitAttr());
  }
  // Backward computations that only feed W (on the first stage: the gradient chain below the
  // lowest adapter, which no stage waits for) join W. Communication is never moved.
  for (Operation &op : llvm::reverse(body.without_terminator())) {
    if (op.hasAttr(kWeightGradAttr) || !op.hasAttr(kBackwardAttr) || op.getNumResults() == 0 ||
        !isMemoryEffectFree(&op))
      continue;
    bool only_w = llvm::all_of(op.getUsers(), [](Operation *u) { return u->hasAttr(kWeightGradAttr); });
    if (only_w && !op.use_empty()) op.setAttr(kWeightGradAttr, b.getUnitAttr());
  }
  // Move the marked ops after everything else, in order. A weight part whose result some
  // unmarked op reads stays where it is (moving it would break dominance).
  Operation *term = body.getTerminator();
  SmallVector<Operation *> marked;
  for (Operation &op : body.without_terminator())
    if (op.hasAttr(kWeightGradAttr)) marked.push_back(&op);
  for (Operation *op : marked) {
    bool movable = llvm::all_of(op->getUsers(), [](Operation *u) { return u->hasAttr(kWeightGradAttr); });
    if (!movable) {
      op->removeAttr(kWeightGradAttr);
      continue;
    }
    op->moveBefore(term);
  }
  return static_cast<int>(grads.size());
}

struct SplitWeightGradPass : impl::SplitWeightGradBase<SplitWeightGradPass> {
  void runOnOperation() override {
    ModuleOp m = getOperation();
    for (auto f : m.getOps<func::FuncOp>()) {
      StringRef name = f.getName();
      if (name != kTrainStep && !name.startswith((kTrainStep + "_s").str())) continue;
      split_function(f);
    }
  }
};

} // namespace
} // namespace parallora
