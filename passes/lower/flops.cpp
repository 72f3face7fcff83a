//===- flops.cpp - model FLOPs of one `pl` op -------------------------------===//
#include "passes/lower/flops.h"

#include "ir/Dialect.h"

using namespace mlir;

namespace parallora {
namespace {

double numel(Value v) {
  double n = 1;
  for (int64_t d : v.getType().cast<RankedTensorType>().getShape()) n *= static_cast<double>(d);
  return n;
}
/// Rows of an (.., K) operand: the product of all but the last dim.
double rows(Value v) { return numel(v) / static_cast<double>(v.getType().cast<RankedTensorType>().getShape().back()); }

double linear_flops(Value x, Value w) {
  auto wt = w.getType().cast<RankedTensorType>();
  return 2.0 * rows(x) * static_cast<double>(wt.getDimSize(0)) * static_cast<double>(wt.getDimSize(1));
}
/// LoRA's extra matmuls: forward x A^T and (xA) B^T; backward four more of the same sizes.
double lora_flops(Value x, Value a, Value b, int passes) {
  auto at = a.getType().cast<RankedTensorType>(), bt = b.getType().cast<RankedTensorType>();
  double m = rows(x), r = at.getDimSize(0), k = at.getDimSize(1), n = bt.getDimSize(0);
  return passes * 2.0 * m * r * (k + n);
}
/// q k^T and P v; causal attention does half the work.
double attention_flops(Value q, Value k, bool causal) {
  auto qt = q.getType().cast<RankedTensorType>(), kt = k.getType().cast<RankedTensorType>();
  double f = 4.0 * qt.getDimSize(0) * qt.getDimSize(1) * qt.getDimSize(2) * kt.getDimSize(2) * qt.getDimSize(3);
  return causal ? f / 2 : f;
}

} // namespace

double op_flops(Operation *op) {
  if (op->hasAttr(pl::kRecomputeAttr)) return 0;  // not model FLOPs (MFU as PaLM defines it)
  if (auto n = dyn_cast<pl::RMSNormOp>(op)) return 4.0 * numel(n.getResult());
  if (auto l = dyn_cast<pl::LinearOp>(op)) return linear_flops(l.getInput(), l.getWeight());
  if (auto l = dyn_cast<pl::LoraLinearOp>(op))
    return linear_flops(l.getInput(), l.getWeight()) + lora_flops(l.getInput(), l.getLoraA(), l.getLoraB(), 1);
  if (auto a = dyn_cast<pl::AttentionOp>(op)) return attention_flops(a.getQuery(), a.getKey(), a.getCausal());
  if (auto g = dyn_cast<pl::LinearGradInputOp>(op)) return linear_flops(g.getResult(), g.getWeight());
  if (auto g = dyn_cast<pl::LoraLinearGradOp>(op)) {
    // zb-h1's halves (--split-weight-grad): B = dy W + s (dy B) A, W = dA + dB; the dy B that
    // W computes again is not a model FLOP, so B + W = the whole op.
    auto part = g->getAttrOfType<StringAttr>(pl::kGradPartAttr);
    const double lin = linear_flops(g.getGradInput(), g.getWeight());
    if (part && part.getValue() == "weight") return lora_flops(g.getInput(), g.getLoraA(), g.getLoraB(), 1);
    if (part && part.getValue() == "input") return lin + lora_flops(g.getInput(), g.getLoraA(), g.getLoraB(), 1);
    return lin + lora_flops(g.getInput(), g.getLoraA(), g.getLoraB(), 2);
  }
  if (auto g = dyn_cast<pl::AttentionGradOp>(op)) return 2 * attention_flops(g.getQuery(), g.getKey(), g.getCausal());
  return 0;
}

} // namespace parallora
