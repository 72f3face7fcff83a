//===- Dialect.cpp - `pl` dialect registration, verifiers, folders ---------===//
//
// Verifiers accept dynamic dims (`?`) wherever a static check is impossible and name the
// mismatching sizes in their messages.
//
//===----------------------------------------------------------------------===//
#include "ir/Dialect.h"

#include <cstdio>

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/OpImplementation.h"

using namespace mlir;
using namespace parallora::pl;

#include "ir/PlDialect.cpp.inc"

void PlDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ir/PlOps.cpp.inc"
      >();
}

namespace {
RankedTensorType tensor(Value v) { return v.getType().cast<RankedTensorType>(); }
bool dyn(int64_t d) { return ShapedType::isDynamic(d); }
/// True when two dims may be equal: either is dynamic, or they are equal.
bool compatible(int64_t a, int64_t b) { return dyn(a) || dyn(b) || a == b; }
/// True when two shapes may be equal: same rank and every dim pair compatible.
bool compatible(ArrayRef<int64_t> a, ArrayRef<int64_t> b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!compatible(a[i], b[i])) return false;
  return true;
}
/// Attributes print as %g ("0.1", "1e-05") rather than the diagnostic default "1.000000e-01".
std::string num_str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}
std::string dim_str(int64_t d) { return dyn(d) ? "?" : std::to_string(d); }
/// "2x?x64", or "scalar" for a 0-d tensor: the same spelling as in the IR's tensor types.
std::string shape_str(RankedTensorType t) {
  std::string s;
  for (int64_t d : t.getShape()) s += (s.empty() ? "" : "x") + dim_str(d);
  return s.empty() ? "scalar" : s;
}
} // namespace

//===----------------------------------------------------------------------===//
// Values
//===----------------------------------------------------------------------===//

LogicalResult ParamOp::verify() {
  if (getName().empty()) return emitOpError("needs a non-empty parameter name");
  // Parameters are allocated and initialized before any shape is known at run time.
  auto t = tensor(getResult());
  if (!t.hasStaticShape())
    return emitOpError("parameter '") << getName() << "' must have a static shape, got " << shape_str(t);
  if (getInit() && getInit()->empty()) return emitOpError("parameter '") << getName() << "' has an empty init spec";
  return success();
}

LogicalResult ConstantOp::verify() {
  if (getValue().getType() != getType())
    return emitOpError("value type ") << getValue().getType() << " does not match result type " << getType();
  return success();
}
OpFoldResult ConstantOp::fold(FoldAdaptor) { return getValue(); }

//===----------------------------------------------------------------------===//
// LLaMA blocks
//===----------------------------------------------------------------------===//

LogicalResult EmbeddingOp::verify() {
  auto ids = tensor(getIds()), table = tensor(getTable()), out = tensor(getResult());
  if (table.getRank() != 2) return emitOpError("table must be (vocab, hidden), got ") << shape_str(table);
  if (out.getRank() != ids.getRank() + 1)
    return emitOpError("result rank ") << out.getRank() << " must be ids rank " << ids.getRank() << " + 1 (ids are "
                                        << shape_str(ids) << ", result is " << shape_str(out) << ")";
  for (int64_t d = 0; d < ids.getRank(); ++d)
    if (!compatible(ids.getDimSize(d), out.getDimSize(d)))
      return emitOpError("result dim ") << d << " is " << dim_str(out.getDimSize(d)) << " but ids dim " << d << " is "
                                        << dim_str(ids.getDimSize(d));
  if (!compatible(out.getShape().back(), table.getDimSize(1)))
    return emitOpError("result hidden size ") << dim_str(out.getShape().back()) << " does not match table hidden size "
                                              << dim_str(table.getDimSize(1)) << " (table is " << shape_str(table) << ")";
  if (out.getElementType() != table.getElementType())
    return emitOpError("result element type ") << out.getElementType() << " differs from the table's " << table.getElementType();
  return success();
}

LogicalResult RMSNormOp::verify() {
  auto x = tensor(getInput()), w = tensor(getWeight());
  if (x.getRank() < 1) return emitOpError("input must have rank >= 1, got a 0-d tensor");
  if (w.getRank() != 1) return emitOpError("weight must be rank 1, got ") << shape_str(w);
  if (!compatible(w.getDimSize(0), x.getShape().back()))
    return emitOpError("weight size ") << dim_str(w.getDimSize(0)) << " does not match the input's last dim "
                                       << dim_str(x.getShape().back()) << " (input is " << shape_str(x) << ")";
  if (getType() != getInput().getType())
    return emitOpError("result type ") << getType() << " must equal the input type " << getInput().getType();
  if (!(getEps().convertToDouble() > 0)) return emitOpError("eps must be > 0, got ") << num_str(getEps().convertToDouble());
  return success();
}

/// Shared by pl.linear and pl.lora_linear: input (..., K), weight (N, K), result (..., N).
static LogicalResult verify_linear_shapes(Operation *op, RankedTensorType x, RankedTensorType w, RankedTensorType out) {
  if (w.getRank() != 2) return op->emitOpError("weight must be (out, in), got ") << shape_str(w);
  if (x.getRank() < 1) return op->emitOpError("input must have rank >= 1, got a 0-d tensor");
  if (!compatible(x.getShape().back(), w.getDimSize(1)))
    return op->emitOpError("input feature dim ") << dim_str(x.getShape().back()) << " does not match weight in-features "
                                                << dim_str(w.getDimSize(1)) << " (weight is " << shape_str(w) << ")";
  if (out.getRank() != x.getRank())
    return op->emitOpError("result rank ") << out.getRank() << " differs from input rank " << x.getRank() << " (input is "
                                          << shape_str(x) << ", result is " << shape_str(out) << ")";
  for (int64_t d = 0; d + 1 < x.getRank(); ++d)
    if (!compatible(x.getDimSize(d), out.getDimSize(d)))
      return op->emitOpError("result dim ") << d << " is " << dim_str(out.getDimSize(d)) << " but input dim " << d << " is "
                                           << dim_str(x.getDimSize(d));
  if (!compatible(out.getShape().back(), w.getDimSize(0)))
    return op->emitOpError("result features ") << dim_str(out.getShape().back()) << " do not match weight out-features "
                                              << dim_str(w.getDimSize(0)) << " (weight is " << shape_str(w) << ")";
  return success();
}

LogicalResult LinearOp::verify() {
  auto w = tensor(getWeight());
  if (failed(verify_linear_shapes(*this, tensor(getInput()), w, tensor(getResult())))) return failure();
  if (getBias()) {
    auto b = tensor(getBias());
    if (b.getRank() != 1 || !compatible(b.getDimSize(0), w.getDimSize(0)))
      return emitOpError("bias must be (") << dim_str(w.getDimSize(0)) << "), got " << shape_str(b);
  }
  return success();
}

LogicalResult LoraLinearOp::verify() {
  auto w = tensor(getWeight()), a = tensor(getLoraA()), b = tensor(getLoraB());
  if (failed(verify_linear_shapes(*this, tensor(getInput()), w, tensor(getResult())))) return failure();
  const int64_t r = getRank();
  if (r <= 0) return emitOpError("rank must be > 0, got ") << r;
  if (a.getRank() != 2 || b.getRank() != 2)
    return emitOpError("lora_a and lora_b must be rank 2, got ") << shape_str(a) << " and " << shape_str(b);
  // lora_a is (r, K) and lora_b is (N, r), as peft stores lora_A.weight / lora_B.weight.
  if (!compatible(a.getDimSize(0), r) || !compatible(b.getDimSize(1), r))
    return emitOpError("rank attribute ") << r << " does not match lora_a " << shape_str(a) << " / lora_b " << shape_str(b);
  if (!compatible(a.getDimSize(1), w.getDimSize(1)))
    return emitOpError("lora_a in-features ") << dim_str(a.getDimSize(1)) << " do not match weight in-features "
                                              << dim_str(w.getDimSize(1)) << " (weight is " << shape_str(w) << ")";
  if (!compatible(b.getDimSize(0), w.getDimSize(0)))
    return emitOpError("lora_b out-features ") << dim_str(b.getDimSize(0)) << " do not match weight out-features "
                                               << dim_str(w.getDimSize(0)) << " (weight is " << shape_str(w) << ")";
  if (!(getScaling().convertToDouble() > 0)) return emitOpError("scaling must be > 0, got ") << num_str(getScaling().convertToDouble());
  double p = getDropout().convertToDouble();
  if (!(p >= 0 && p < 1)) return emitOpError("dropout must be in [0, 1), got ") << num_str(p);
  if (getModule().empty()) return emitOpError("needs the module path it adapts (attribute 'module' is empty)");
  return success();
}

LogicalResult MatMulOp::verify() {
  auto a = tensor(getLhs()), b = tensor(getRhs()), out = tensor(getResult());
  if (a.getRank() < 2 || a.getRank() != b.getRank() || out.getRank() != a.getRank())
    return emitOpError("operands and result must have the same rank >= 2, got ")
           << shape_str(a) << ", " << shape_str(b) << " -> " << shape_str(out);
  const int64_t r = a.getRank();
  for (int64_t d = 0; d + 2 < r; ++d) {
    if (!compatible(a.getDimSize(d), b.getDimSize(d)))
      return emitOpError("batch dim ") << d << " differs: lhs " << dim_str(a.getDimSize(d)) << " vs rhs " << dim_str(b.getDimSize(d));
    if (!compatible(a.getDimSize(d), out.getDimSize(d)))
      return emitOpError("result batch dim ") << d << " is " << dim_str(out.getDimSize(d)) << " but operand batch dim is "
                                              << dim_str(a.getDimSize(d));
  }
  // op(a) is (M, K) and op(b) is (K, N) after the transpose flags.
  const bool ta = getTransposeLhs(), tb = getTransposeRhs();
  int64_t m = a.getDimSize(ta ? r - 1 : r - 2), ka = a.getDimSize(ta ? r - 2 : r - 1);
  int64_t kb = b.getDimSize(tb ? r - 1 : r - 2), n = b.getDimSize(tb ? r - 2 : r - 1);
  if (!compatible(ka, kb))
    return emitOpError("contraction dims differ: lhs ") << dim_str(ka) << " vs rhs " << dim_str(kb) << " (lhs " << shape_str(a)
                                                        << (ta ? " transposed" : "") << ", rhs " << shape_str(b)
                                                        << (tb ? " transposed" : "") << ")";
  if (!compatible(out.getDimSize(r - 2), m) || !compatible(out.getDimSize(r - 1), n))
    return emitOpError("result must be ") << dim_str(m) << "x" << dim_str(n) << " in its last dims, got " << shape_str(out);
  return success();
}

/// Sequence packing's per-token operand `what` (positions of pl.rope, segment ids of
/// pl.attention): an integer (B, T) tensor whose dims match dims 0 and 2 of `x` (B, H, T, Dh).
static LogicalResult verify_token_operand(Operation *op, Value ids, Value x, StringRef what) {
  if (!ids) return success();
  auto t = ids.getType().cast<RankedTensorType>(), xt = x.getType().cast<RankedTensorType>();
  if (t.getRank() != 2 || xt.getRank() != 4 || !compatible(t.getDimSize(0), xt.getDimSize(0)) ||
      !compatible(t.getDimSize(1), xt.getDimSize(2)))
    return op->emitOpError() << what << " must be (batch, seq) = (" << dim_str(xt.getRank() == 4 ? xt.getDimSize(0) : -1)
                             << ", " << dim_str(xt.getRank() == 4 ? xt.getDimSize(2) : -1) << "), got " << shape_str(t);
  return success();
}

LogicalResult RopeOp::verify() {
  auto x = tensor(getInput());
  if (x.getRank() != 4) return emitOpError("input must be (batch, heads, seq, head_dim), got ") << shape_str(x);
  // rotate-half pairs dim i with dim i + Dh/2.
  if (!dyn(x.getDimSize(3)) && x.getDimSize(3) % 2 != 0) return emitOpError("head_dim must be even, got ") << x.getDimSize(3);
  if (!(getTheta().convertToDouble() > 0)) return emitOpError("theta must be > 0, got ") << num_str(getTheta().convertToDouble());
  if (auto s = getRopeScaling()) {
    // LLaMA 3 frequency scaling, as in transformers' `_compute_llama3_parameters`.
    for (const char *k : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      Attribute v = s->get(k);
      auto f = v ? v.dyn_cast<FloatAttr>() : FloatAttr();
      auto i = v ? v.dyn_cast<IntegerAttr>() : IntegerAttr();
      bool ok = (f && f.getType().isF64()) || (i && i.getType().isSignlessInteger(64));
      if (!v) return emitOpError("rope_scaling needs an f64 or i64 '") << k << "' entry, it has none";
      if (!ok) return emitOpError("rope_scaling needs an f64 or i64 '") << k << "' entry, got " << v;
    }
  }
  return verify_token_operand(*this, getPositions(), getInput(), "positions");
}

LogicalResult RopeGradOp::verify() {
  auto x = tensor(getGrad());
  if (x.getRank() != 4) return emitOpError("grad must be (batch, heads, seq, head_dim), got ") << shape_str(x);
  return verify_token_operand(*this, getPositions(), getGrad(), "positions");
}

LogicalResult AttentionOp::verify() {
  auto q = tensor(getQuery()), k = tensor(getKey()), v = tensor(getValue());
  if (q.getRank() != 4 || k.getRank() != 4 || v.getRank() != 4)
    return emitOpError("query, key and value must be (batch, heads, seq, head_dim), got ")
           << shape_str(q) << ", " << shape_str(k) << ", " << shape_str(v);
  if (!compatible(k.getShape(), v.getShape()))
    return emitOpError("key ") << shape_str(k) << " and value " << shape_str(v) << " differ";
  if (!compatible(q.getDimSize(0), k.getDimSize(0)))
    return emitOpError("query batch ") << dim_str(q.getDimSize(0)) << " differs from key/value batch " << dim_str(k.getDimSize(0));
  // Grouped-query attention: each key/value head serves hq / hkv query heads.
  int64_t hq = q.getDimSize(1), hkv = k.getDimSize(1);
  if (!dyn(hq) && !dyn(hkv) && (hkv <= 0 || hq % hkv != 0))
    return emitOpError("query heads ") << hq << " are not a multiple of key/value heads " << hkv;
  if (!compatible(q.getDimSize(3), k.getDimSize(3)))
    return emitOpError("query head_dim ") << dim_str(q.getDimSize(3)) << " differs from key/value head_dim " << dim_str(k.getDimSize(3));
  if (getType() != getQuery().getType())
    return emitOpError("result type ") << getType() << " must equal the query type " << getQuery().getType();
  if (!(getScale().convertToDouble() > 0)) return emitOpError("scale must be > 0, got ") << num_str(getScale().convertToDouble());
  if (getSegmentIds() && !compatible(q.getDimSize(2), k.getDimSize(2)))
    return emitOpError("segment_ids need self-attention (query seq == key seq), got ")
           << dim_str(q.getDimSize(2)) << " and " << dim_str(k.getDimSize(2));
  return verify_token_operand(*this, getSegmentIds(), getQuery(), "segment_ids");
}

LogicalResult ReshapeOp::verify() {
  auto x = tensor(getInput()), out = tensor(getResult());
  if (x.getElementType() != out.getElementType())
    return emitOpError("element type changes from ") << x.getElementType() << " to " << out.getElementType();
  if (x.hasStaticShape() && out.hasStaticShape() && x.getNumElements() != out.getNumElements())
    return emitOpError("cannot reshape ") << shape_str(x) << " (" << x.getNumElements() << " elements) to " << shape_str(out)
                                          << " (" << out.getNumElements() << " elements)";
  return success();
}

LogicalResult TransposeOp::verify() {
  auto x = tensor(getInput()), out = tensor(getResult());
  ArrayRef<int64_t> perm = getPerm();
  if (int64_t(perm.size()) != x.getRank()) return emitOpError("perm has ") << perm.size() << " entries for rank " << x.getRank();
  std::vector<bool> seen(perm.size(), false);
  for (int64_t p : perm) {
    if (p < 0 || p >= x.getRank() || seen[p]) return emitOpError("perm is not a permutation of 0..") << x.getRank() - 1;
    seen[p] = true;
  }
  if (out.getRank() != x.getRank())
    return emitOpError("result rank ") << out.getRank() << " differs from input rank " << x.getRank();
  for (size_t d = 0; d < perm.size(); ++d)
    if (!compatible(out.getDimSize(d), x.getDimSize(perm[d])))
      return emitOpError("result dim ") << d << " is " << dim_str(out.getDimSize(d)) << " but input dim " << perm[d] << " is "
                                        << dim_str(x.getDimSize(perm[d]));
  return success();
}

LogicalResult SoftmaxOp::verify() {
  int64_t r = tensor(getInput()).getRank(), a = getAxis();
  if (a < -r || a >= r) return emitOpError("axis ") << a << " is out of range [" << -r << ", " << r << ") for rank " << r;
  return success();
}

LogicalResult CrossEntropyOp::verify() {
  auto logits = tensor(getLogits()), labels = tensor(getLabels());
  if (logits.getRank() != labels.getRank() + 1)
    return emitOpError("labels ") << shape_str(labels) << " must be the logits shape " << shape_str(logits)
                                  << " without the vocab dim";
  for (int64_t d = 0; d < labels.getRank(); ++d)
    if (!compatible(labels.getDimSize(d), logits.getDimSize(d)))
      return emitOpError("labels dim ") << d << " is " << dim_str(labels.getDimSize(d)) << " but logits dim " << d << " is "
                                        << dim_str(logits.getDimSize(d));
  return success();
}

//===----------------------------------------------------------------------===//
// Training step
//===----------------------------------------------------------------------===//

/// Gradient ops return the gradient of a forward operand: the same type as that operand.
static LogicalResult verify_same_type(Operation *op, Value result, Value like, StringRef what) {
  if (result.getType() != like.getType())
    return op->emitOpError() << what << " has type " << result.getType() << " but must match " << like.getType();
  return success();
}

LogicalResult CrossEntropyGradOp::verify() {
  if (failed(verify_same_type(*this, getResult(), getLogits(), "the logits gradient"))) return failure();
  auto logits = tensor(getLogits()), labels = tensor(getLabels());
  if (logits.getRank() != labels.getRank() + 1)
    return emitOpError("labels ") << shape_str(labels) << " must be the logits shape " << shape_str(logits)
                                  << " without the vocab dim";
  if (!(getGradScale().convertToDouble() > 0))
    return emitOpError("grad_scale must be > 0, got ") << num_str(getGradScale().convertToDouble());
  return success();
}

LogicalResult RMSNormGradOp::verify() {
  if (failed(verify_same_type(*this, getGrad(), getInput(), "the output gradient"))) return failure();
  return verify_same_type(*this, getResult(), getInput(), "the input gradient");
}

LogicalResult LinearGradInputOp::verify() {
  auto dy = tensor(getGrad()), w = tensor(getWeight()), dx = tensor(getResult());
  if (w.getRank() != 2) return emitOpError("weight must be (N, K), got ") << shape_str(w);
  if (dy.getRank() != dx.getRank() || dy.getRank() < 1)
    return emitOpError("gradient ") << shape_str(dy) << " and result " << shape_str(dx) << " must have the same rank";
  if (!compatible(dy.getDimSize(dy.getRank() - 1), w.getDimSize(0)))
    return emitOpError("gradient last dim ") << dim_str(dy.getDimSize(dy.getRank() - 1)) << " must equal weight N = "
                                             << w.getDimSize(0);
  if (!compatible(dx.getDimSize(dx.getRank() - 1), w.getDimSize(1)))
    return emitOpError("result last dim ") << dim_str(dx.getDimSize(dx.getRank() - 1)) << " must equal weight K = "
                                           << w.getDimSize(1);
  return success();
}

LogicalResult LoraLinearGradOp::verify() {
  double p = getDropout().convertToDouble();
  if (!(p >= 0 && p < 1)) return emitOpError("dropout must be in [0, 1), got ") << num_str(p);
  if (p > 0 && getModule().empty())
    return emitOpError("with dropout ") << num_str(p) << " needs the module path (the mask's stream)";
  if (Attribute part = (*this)->getAttr(kGradPartAttr)) {
    auto s = part.dyn_cast<StringAttr>();
    if (!s || (s.getValue() != "input" && s.getValue() != "weight"))
      return emitOpError("attribute ") << kGradPartAttr << " must be \"input\" or \"weight\", got " << part;
    if (s.getValue() == "input" && (!getGradLoraA().use_empty() || !getGradLoraB().use_empty()))
      return emitOpError("with ") << kGradPartAttr << " = \"input\" computes no dA, dB, but they have uses";
    if (s.getValue() == "weight" && !getGradInput().use_empty())
      return emitOpError("with ") << kGradPartAttr << " = \"weight\" computes no dx, but it has uses";
  }
  if (failed(verify_same_type(*this, getGradInput(), getInput(), "grad_input"))) return failure();
  if (failed(verify_same_type(*this, getGradLoraA(), getLoraA(), "grad_lora_a"))) return failure();
  return verify_same_type(*this, getGradLoraB(), getLoraB(), "grad_lora_b");
}

LogicalResult AttentionGradOp::verify() {
  if (failed(verify_same_type(*this, getGrad(), getQuery(), "the output gradient"))) return failure();
  if (failed(verify_same_type(*this, getGradQuery(), getQuery(), "grad_query"))) return failure();
  if (failed(verify_same_type(*this, getGradKey(), getKey(), "grad_key"))) return failure();
  if (failed(verify_same_type(*this, getGradValue(), getValue(), "grad_value"))) return failure();
  return verify_token_operand(*this, getSegmentIds(), getQuery(), "segment_ids");
}

LogicalResult SwigluGradOp::verify() {
  if (failed(verify_same_type(*this, getGrad(), getGate(), "the output gradient"))) return failure();
  if (failed(verify_same_type(*this, getGradGate(), getGate(), "grad_gate"))) return failure();
  return verify_same_type(*this, getGradUp(), getUp(), "grad_up");
}

LogicalResult AdamWStepOp::verify() {
  double b1 = getBeta1().convertToDouble(), b2 = getBeta2().convertToDouble();
  if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1))
    return emitOpError("betas must be in [0, 1), got (") << num_str(b1) << ", " << num_str(b2) << ")";
  if (!(getEps().convertToDouble() > 0)) return emitOpError("eps must be > 0");
  if (getWeightDecay().convertToDouble() < 0) return emitOpError("weight_decay must be >= 0");
  if (getMaxGradNorm().convertToDouble() < 0) return emitOpError("max_grad_norm must be >= 0 (0 = no clipping)");
  if (getParams().empty()) return emitOpError("needs at least one trainable parameter");
  return success();
}

namespace {
LogicalResult verify_group(Operation *op, StringRef group) {
  if (group.empty()) return op->emitOpError("group must name at least one mesh axis (dp, tp, pp)");
  SmallVector<StringRef> axes;
  group.split(axes, ',');
  static const char *order[] = {"dp", "tp", "pp"};
  int last = -1;
  for (StringRef a : axes) {
    int i = a == "dp" ? 0 : a == "tp" ? 1 : a == "pp" ? 2 : -1;
    if (i < 0) return op->emitOpError("unknown mesh axis '") << a << "' in group \"" << group << "\" (axes: dp, tp, pp)";
    if (i <= last) return op->emitOpError("group \"") << group << "\" must list axes once, in the order " << order[0] << "," << order[1] << "," << order[2];
    last = i;
  }
  return success();
}
} // namespace

LogicalResult AllReduceOp::verify() { return verify_group(*this, getGroup()); }
LogicalResult CopyToGroupOp::verify() { return verify_group(*this, getGroup()); }
LogicalResult GradAllReduceOp::verify() {
  if (getParams().empty()) return emitOpError("needs at least one gradient");
  if (!(getScale().convertToDouble() > 0)) return emitOpError("scale must be > 0");
  return verify_group(*this, getGroup());
}

LogicalResult ParamBroadcastOp::verify() {
  if (getParams().empty()) return emitOpError("needs at least one parameter");
  if (getOwners().size() != getParams().size())
    return emitOpError("has ") << getOwners().size() << " owners for " << getParams().size() << " parameters";
  for (int64_t o : getOwners())
    if (o < 0) return emitOpError("owner ") << o << " is negative";
  return verify_group(*this, getGroup());
}

#define GET_OP_CLASSES
#include "ir/PlOps.cpp.inc"
