//===- grad_rules.cpp - gradient rules of the `pl` ops ----------------------===//
//
// Conventions: every rule returns gradients with exactly the operand's type; discardable
// attributes (pl.layer) and locations are copied from the forward op so the backward of
// layer i is attributed to layer i in plans and profiles.
//
//===----------------------------------------------------------------------===//
#include "passes/train/grad_rules.h"

#include "ir/Dialect.h"

#include "llvm/ADT/StringMap.h"

using namespace mlir;

namespace parallora {
namespace {

/// Copies pl.layer so backward ops belong to their forward op's layer, and pl.vocab_group
/// (a vocabulary-parallel cross-entropy's backward is vocabulary-parallel too).
template <typename OpT> OpT tagged(Operation *fwd, OpT op) {
  for (llvm::StringRef k : {llvm::StringRef(pl::kLayerAttr), llvm::StringRef("pl.vocab_group")})
    if (Attribute a = fwd->getAttr(k)) op->setAttr(k, a);
  return op;
}

LogicalResult cross_entropy_rule(Operation *op, ArrayRef<Value>, ArrayRef<bool> needs, OpBuilder &b,
                                 const GradContext &ctx, SmallVectorImpl<Value> &grads) {
  auto ce = cast<pl::CrossEntropyOp>(op);
  if (needs[0])
    grads[0] = tagged(op, b.create<pl::CrossEntropyGradOp>(op->getLoc(), ce.getLogits().getType(), ce.getLogits(),
                                                           ce.getLabels(), ce.getIgnoreIndexAttr(),
                                                           ce.getShiftLabelsAttr(),
                                                           b.getF64FloatAttr(ctx.loss_seed)));
  return success();
}

LogicalResult rms_norm_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                            const GradContext &, SmallVectorImpl<Value> &grads) {
  auto n = cast<pl::RMSNormOp>(op);
  if (needs[0])
    grads[0] = tagged(op, b.create<pl::RMSNormGradOp>(op->getLoc(), n.getInput().getType(), rg[0], n.getInput(),
                                                      n.getWeight(), n.getEpsAttr()));
  return success();
}

LogicalResult linear_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                          const GradContext &, SmallVectorImpl<Value> &grads) {
  auto l = cast<pl::LinearOp>(op);
  if (needs[0])
    grads[0] = tagged(op, b.create<pl::LinearGradInputOp>(op->getLoc(), l.getInput().getType(), rg[0], l.getWeight()));
  return success();
}

LogicalResult lora_linear_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                               const GradContext &, SmallVectorImpl<Value> &grads) {
  auto l = cast<pl::LoraLinearOp>(op);
  // Dropout: the backward recomputes the forward's mask from (seed, step, sample, position,
  // feature, module), so it only needs p and the module name, not a stored mask.
  auto g = tagged(op, b.create<pl::LoraLinearGradOp>(op->getLoc(), l.getInput().getType(), l.getLoraA().getType(),
                                                     l.getLoraB().getType(), rg[0], l.getInput(), l.getWeight(),
                                                     l.getLoraA(), l.getLoraB(), l.getScalingAttr(),
                                                     l.getDropoutAttr(), l.getModuleAttr()));
  if (needs[0]) grads[0] = g.getGradInput();
  if (needs[2]) grads[2] = g.getGradLoraA();
  if (needs[3]) grads[3] = g.getGradLoraB();
  return success();
}

LogicalResult rope_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b, const GradContext &,
                        SmallVectorImpl<Value> &grads) {
  auto r = cast<pl::RopeOp>(op);
  if (needs[0])
    grads[0] = tagged(op, b.create<pl::RopeGradOp>(op->getLoc(), r.getType(), rg[0], r.getThetaAttr(),
                                                   r.getRopeScalingAttr(), r.getPositions()));
  return success();
}

LogicalResult attention_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                             const GradContext &, SmallVectorImpl<Value> &grads) {
  auto a = cast<pl::AttentionOp>(op);
  auto g = tagged(op, b.create<pl::AttentionGradOp>(op->getLoc(), a.getQuery().getType(), a.getKey().getType(),
                                                    a.getValue().getType(), rg[0], a.getQuery(), a.getKey(),
                                                    a.getValue(), a.getCausalAttr(), a.getScaleAttr(),
                                                    a.getSegmentIds()));
  for (unsigned i = 0; i < 3; ++i)
    if (needs[i]) grads[i] = g->getResult(i);
  return success();
}

LogicalResult swiglu_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                          const GradContext &, SmallVectorImpl<Value> &grads) {
  auto s = cast<pl::SwigluOp>(op);
  auto g = tagged(op, b.create<pl::SwigluGradOp>(op->getLoc(), s.getType(), s.getType(), rg[0], s.getGate(), s.getUp()));
  if (needs[0]) grads[0] = g.getGradGate();
  if (needs[1]) grads[1] = g.getGradUp();
  return success();
}

LogicalResult add_rule(Operation *, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &, const GradContext &,
                       SmallVectorImpl<Value> &grads) {
  // d(a + b) = da = db = dy: the same value feeds both sums; no op needed.
  for (unsigned i = 0; i < 2; ++i)
    if (needs[i]) grads[i] = rg[0];
  return success();
}

LogicalResult mul_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b, const GradContext &,
                       SmallVectorImpl<Value> &grads) {
  auto m = cast<pl::MulOp>(op);
  if (needs[0]) grads[0] = tagged(op, b.create<pl::MulOp>(op->getLoc(), rg[0], m.getRhs()));
  if (needs[1]) grads[1] = tagged(op, b.create<pl::MulOp>(op->getLoc(), rg[0], m.getLhs()));
  return success();
}

LogicalResult reshape_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                           const GradContext &, SmallVectorImpl<Value> &grads) {
  auto r = cast<pl::ReshapeOp>(op);
  if (needs[0]) grads[0] = tagged(op, b.create<pl::ReshapeOp>(op->getLoc(), r.getInput().getType(), rg[0]));
  return success();
}

LogicalResult transpose_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                             const GradContext &, SmallVectorImpl<Value> &grads) {
  auto t = cast<pl::TransposeOp>(op);
  if (!needs[0]) return success();
  ArrayRef<int64_t> perm = t.getPerm();
  SmallVector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[perm[i]] = static_cast<int64_t>(i);
  grads[0] = tagged(op, b.create<pl::TransposeOp>(op->getLoc(), t.getInput().getType(), rg[0],
                                                  b.getDenseI64ArrayAttr(inverse)));
  return success();
}

LogicalResult all_reduce_rule(Operation *, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &,
                              const GradContext &, SmallVectorImpl<Value> &grads) {
  // y = sum over the group of x_r, and every rank computes the same loss from y: the
  // gradient of each x_r is dy, already replicated. No op.
  if (needs[0]) grads[0] = rg[0];
  return success();
}

LogicalResult copy_to_group_rule(Operation *op, ArrayRef<Value> rg, ArrayRef<bool> needs, OpBuilder &b,
                                 const GradContext &, SmallVectorImpl<Value> &grads) {
  // Forward identity into a sharded computation: each rank's dy holds only its shard's
  // contribution, so the gradient of the replicated input is their sum (Megatron's f).
  auto c = cast<pl::CopyToGroupOp>(op);
  if (needs[0]) grads[0] = tagged(op, b.create<pl::AllReduceOp>(op->getLoc(), rg[0], c.getGroupAttr()));
  return success();
}

const llvm::StringMap<GradRule> &rules() {
  static const llvm::StringMap<GradRule> table = {
      {pl::CrossEntropyOp::getOperationName(), cross_entropy_rule},
      {pl::RMSNormOp::getOperationName(), rms_norm_rule},
      {pl::LinearOp::getOperationName(), linear_rule},
      {pl::LoraLinearOp::getOperationName(), lora_linear_rule},
      {pl::RopeOp::getOperationName(), rope_rule},
      {pl::AttentionOp::getOperationName(), attention_rule},
      {pl::SwigluOp::getOperationName(), swiglu_rule},
      {pl::AddOp::getOperationName(), add_rule},
      {pl::MulOp::getOperationName(), mul_rule},
      {pl::ReshapeOp::getOperationName(), reshape_rule},
      {pl::TransposeOp::getOperationName(), transpose_rule},
      {pl::AllReduceOp::getOperationName(), all_reduce_rule},
      {pl::CopyToGroupOp::getOperationName(), copy_to_group_rule},
  };
  return table;
}

} // namespace

GradRule lookup_grad_rule(Operation *op) {
  auto it = rules().find(op->getName().getStringRef());
  return it == rules().end() ? nullptr : it->second;
}

SmallVector<unsigned> weight_operands_without_grad(Operation *op) {
  if (isa<pl::LinearOp>(op)) return {1, 2};        // weight, bias: frozen base layer
  if (isa<pl::LoraLinearOp>(op)) return {1};       // the base weight W
  if (isa<pl::RMSNormOp>(op)) return {1};          // the norm weight
  if (isa<pl::EmbeddingOp>(op)) return {1};        // the embedding table
  return {};
}

} // namespace parallora
