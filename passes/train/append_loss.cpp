//===- append_loss.cpp - --append-loss: logits -> HF causal-LM loss ---------===//
//
// Rewrites  func @forward(%ids: BxT) -> BxTxV            (return %logits)
// into      func @train_step(%ids: BxT, %labels: BxT) -> f32
// (further named inputs of @forward, e.g. --pack-sequences' position_ids and segment_ids,
// are kept between them: @train_step(%ids, %position_ids, %segment_ids, %labels))
//             %loss = pl.cross_entropy %logits, %labels {shift_labels, ignore_index}
//           func @eval_step = a clone of @train_step (validation; never differentiated)
//
//===----------------------------------------------------------------------===//
#include "ir/Dialect.h"
#include "passes/train/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace parallora {
#define GEN_PASS_DEF_APPENDLOSS
#include "passes/train/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

class AppendLoss : public impl::AppendLossBase<AppendLoss> {
public:
  using AppendLossBase::AppendLossBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward) {
      module.emitError("append-loss: the module has no func @forward (the model's forward pass)");
      return signalPassFailure();
    }
    FunctionType type = forward.getFunctionType();
    auto ids = type.getNumInputs() >= 1 ? type.getInput(0).dyn_cast<RankedTensorType>() : nullptr;
    auto logits = type.getNumResults() == 1 ? type.getResult(0).dyn_cast<RankedTensorType>() : nullptr;
    if (!ids || !logits || ids.getRank() != 2 || logits.getRank() != 3) {
      forward.emitError("append-loss: @forward must map input_ids (B, T) to logits (B, T, V), got ") << type;
      return signalPassFailure();
    }
    if (!ids.hasStaticShape()) {
      forward.emitError("append-loss: input_ids has dynamic dims ")
          << ids << "; fix the batch and sequence length first (lora-compile --batch/--seq-len)";
      return signalPassFailure();
    }

    // Inputs after input_ids: only the packing inputs --pack-sequences adds (fed by name).
    for (unsigned i = 1; i < type.getNumInputs(); ++i) {
      auto name = forward.getArgAttrOfType<StringAttr>(i, "pl.name");
      if (!name || (name.getValue() != "position_ids" && name.getValue() != "segment_ids")) {
        forward.emitError("append-loss: @forward must map input_ids (B, T) to logits (B, T, V), got ")
            << type << "; argument #" << i << (name ? " '" + name.getValue().str() + "'" : std::string())
            << " is not an input the runtime feeds (only --pack-sequences' position_ids and segment_ids are)";
        return signalPassFailure();
      }
    }
    // The argument attributes (an importer may have set some) are kept; the attribute array
    // must then be resized for the new labels argument.
    SmallVector<DictionaryAttr> arg_attrs;
    for (unsigned i = 0; i < type.getNumInputs(); ++i) {
      DictionaryAttr d = forward.getArgAttrDict(i);
      arg_attrs.push_back(d ? d : DictionaryAttr::get(&getContext()));
    }
    Block &body = forward.getBody().front();
    Value labels = body.addArgument(ids, forward.getLoc());
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    OpBuilder b(ret);
    auto loss_type = RankedTensorType::get({}, b.getF32Type());
    auto ce = b.create<pl::CrossEntropyOp>(NameLoc::get(b.getStringAttr("loss")), loss_type, ret.getOperand(0), labels,
                                           b.getI64IntegerAttr(ignoreIndex), b.getUnitAttr());
    ce->setAttr(pl::kLayerAttr, b.getI64IntegerAttr(-1));
    ret->setOperands(ce.getResult());
    SmallVector<Type> inputs(type.getInputs().begin(), type.getInputs().end());
    inputs.push_back(ids);
    arg_attrs.push_back(b.getDictionaryAttr({}));
    forward.setFunctionType(b.getFunctionType(inputs, {loss_type}));
    forward.setAllArgAttrs(arg_attrs);
    forward.setName(kTrainStep);
    // HF's argument names, for readable IR and plan buffer names.
    forward.setArgAttr(0, "pl.name", b.getStringAttr("input_ids"));
    forward.setArgAttr(labels.cast<BlockArgument>().getArgNumber(), "pl.name", b.getStringAttr("labels"));

    auto eval = forward.clone();
    eval.setName(kEvalStep);
    module.push_back(eval);
  }
};

} // namespace
} // namespace parallora
