//===- freeze_base.cpp - --freeze-base: only LoRA adapters train -----------===//
//
// Invariant after this pass: a pl.param is `trainable` iff it feeds the lora_a or lora_b
// operand of a pl.lora_linear. Graphs imported from PEFT exports carry no trainability, and
// hand-written ones may mark base weights trainable; both end in the same state.
//
//===----------------------------------------------------------------------===//
#include "ir/Dialect.h"
#include "passes/lora/Passes.h"

#include "mlir/IR/Builders.h"

namespace parallora {
#define GEN_PASS_DEF_FREEZEBASE
#include "passes/lora/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {

void freeze_base_params(ModuleOp module) {
  llvm::DenseSet<Operation *> adapters;
  module.walk([&](pl::LoraLinearOp l) {
    for (Value v : {l.getLoraA(), l.getLoraB()})
      if (Operation *p = v.getDefiningOp<pl::ParamOp>()) adapters.insert(p);
  });
  UnitAttr unit = UnitAttr::get(module.getContext());
  module.walk([&](pl::ParamOp p) {
    if (adapters.contains(p)) p.setTrainableAttr(unit);
    else p.removeTrainableAttr();
  });
}

namespace {
class FreezeBase : public impl::FreezeBaseBase<FreezeBase> {
public:
  void runOnOperation() override { freeze_base_params(getOperation()); }
};
} // namespace

} // namespace parallora
