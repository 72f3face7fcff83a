//===- pack_sequences.cpp - --pack-sequences: position_ids and segment_ids inputs ---===//
//
// Sequence packing puts several examples into one row of T tokens. Two inputs of @forward,
// with the shape and type of input_ids, describe a packed row:
//   position_ids (B, T)  the position of each token inside its own example (0, 1, .. restart)
//   segment_ids  (B, T)  which example of the row the token belongs to
// and every op that sees positions takes them into account:
//   pl.rope %x                       -> pl.rope %x positions(%position_ids : ...)
//   pl.attention %q, %k, %v {causal} -> pl.attention %q, %k, %v segments %segment_ids {causal}
// so a packed row computes what its examples computed one by one (Hugging Face: position_ids
// plus a block-diagonal causal mask). Runs on @forward, before --append-loss.
//
//===----------------------------------------------------------------------===//
#include "ir/Dialect.h"
#include "passes/train/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace parallora {
#define GEN_PASS_DEF_PACKSEQUENCES
#include "passes/train/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

class PackSequences : public impl::PackSequencesBase<PackSequences> {
public:
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward) {
      module.emitError("pack-sequences: the module has no func @forward (run it before --append-loss)");
      return signalPassFailure();
    }
    FunctionType type = forward.getFunctionType();
    auto ids = type.getNumInputs() >= 1 ? type.getInput(0).dyn_cast<RankedTensorType>() : nullptr;
    if (!ids || ids.getRank() != 2 || !ids.getElementType().isSignlessInteger()) {
      forward.emitError("pack-sequences: @forward's first argument must be the integer input_ids (B, T), got ") << type;
      return signalPassFailure();
    }
    for (unsigned i = 0; i < type.getNumInputs(); ++i)
      if (auto n = forward.getArgAttrOfType<StringAttr>(i, "pl.name");
          n && (n.getValue() == "position_ids" || n.getValue() == "segment_ids")) {
        forward.emitError("pack-sequences: @forward already has an input named '") << n.getValue() << "'";
        return signalPassFailure();
      }

    // Every position-dependent op must be one this pass rewrites: attention written out as
    // matmul + softmax (or kept as pl.generic) would silently attend across examples.
    SmallVector<pl::RopeOp> ropes;
    SmallVector<pl::AttentionOp> attns;
    Operation *unraised = nullptr;
    forward.walk([&](Operation *op) {
      if (auto r = dyn_cast<pl::RopeOp>(op)) ropes.push_back(r);
      else if (auto a = dyn_cast<pl::AttentionOp>(op)) attns.push_back(a);
      else if (!unraised && isa<pl::SoftmaxOp, pl::GenericOp>(op)) unraised = op;
    });
    if (unraised) {
      unraised->emitError("pack-sequences: ")
          << unraised->getName() << " in @forward: packing needs every attention raised to pl.attention "
          << "(and every rotary embedding to pl.rope); this graph computes something the pass cannot mask";
      return signalPassFailure();
    }
    if (ropes.empty() || attns.empty()) {
      forward.emitError("pack-sequences: @forward has ")
          << ropes.size() << " pl.rope and " << attns.size() << " pl.attention ops; packing needs both";
      return signalPassFailure();
    }
    for (pl::RopeOp r : ropes)
      if (r.getPositions()) {
        r.emitError("pack-sequences: pl.rope already has positions");
        return signalPassFailure();
      }
    for (pl::AttentionOp a : attns)
      if (a.getSegmentIds()) {
        a.emitError("pack-sequences: pl.attention already has segment ids");
        return signalPassFailure();
      }

    OpBuilder b(module.getContext());
    unsigned n = type.getNumInputs();
    auto named = [&](StringRef name) { return b.getDictionaryAttr({b.getNamedAttr("pl.name", b.getStringAttr(name))}); };
    if (!forward.getArgAttrOfType<StringAttr>(0, "pl.name")) forward.setArgAttr(0, "pl.name", b.getStringAttr("input_ids"));
    forward.insertArguments({n, n}, {ids, ids}, {named("position_ids"), named("segment_ids")},
                            {forward.getLoc(), forward.getLoc()});
    Value positions = forward.getArgument(n), segments = forward.getArgument(n + 1);
    for (pl::RopeOp r : ropes) r.getPositionsMutable().assign(positions);
    for (pl::AttentionOp a : attns) a.getSegmentIdsMutable().assign(segments);
  }
};

} // namespace
} // namespace parallora
