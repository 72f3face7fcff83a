//===- onnx_importer.cpp - raise a folded ONNX LLaMA graph to `pl` --------===//
#include "frontend/onnx/onnx_importer.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

#include "frontend/onnx/onnx_graph.h"
#include "frontend/onnx/param_roles.h"
#include "ir/Dialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Verifier.h"

using namespace mlir;

namespace parallora {
namespace {
using namespace onnx_import;

// Exported scalars are float32: 1e-5 arrives as 9.99999974e-06. Use the shortest decimal that
// rounds to the same float, which is what the model's config said.
double shortest_float(double v) {
  float f = float(v);
  for (int digits = 1; digits <= 9; ++digits) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*g", digits, double(f));
    double back = std::strtod(buf, nullptr);
    if (float(back) == f) return back;
  }
  return double(f);
}

class Raiser {
public:
  Raiser(MLIRContext &ctx, const OnnxGraph &g, const OnnxImportOptions &opts, OnnxImportReport &rep)
      : ctx_(ctx), g_(g), opts_(opts), rep_(rep), b_(&ctx) {}

  FailureOr<OwningOpRef<ModuleOp>> run();

private:
  // ---- helpers
  Location loc(const Node &n) { return NameLoc::get(b_.getStringAttr(n.name), FileLineColLoc::get(b_.getStringAttr(g_.path()), 0, 0)); }
  Location file_loc() { return FileLineColLoc::get(b_.getStringAttr(g_.path()), 0, 0); }
  Value fail(const std::string &msg) {
    if (!failed_) emitError(file_loc()) << g_.path() << ": " << msg;
    failed_ = true;
    return {};
  }
  Type elem_type(int32_t t) {
    switch (t) {
    case kFloat: return b_.getF32Type();
    case kFloat16: return b_.getF16Type();
    case kBFloat16: return b_.getBF16Type();
    case kDouble: return b_.getF64Type();
    case kBool: return b_.getI1Type();
    case kInt8: case kUint8: return b_.getIntegerType(8);
    case kInt16: case kUint16: return b_.getIntegerType(16);
    case kInt32: case kUint32: return b_.getI32Type();
    default: return b_.getI64Type();
    }
  }
  RankedTensorType type_of(const std::string &name) {
    const ValueInfo *v = g_.value(name);
    return RankedTensorType::get(v->shape, elem_type(v->type));
  }
  const Node *prod(const std::string &name, const char *op) {
    const Node *n = g_.producer(name);
    return n && n->op_type == op ? n : nullptr;
  }
  bool is_const(const std::string &name) { return g_.is_const(name); }
  bool is_runtime(const std::string &name) { return !name.empty() && !g_.is_const(name); }
  int64_t rank(const std::string &name) { return int64_t(g_.value(name)->shape.size()); }
  std::string skip_identity(std::string name) {
    while (const Node *n = g_.producer(name)) {
      if (n->op_type != "Identity" && n->op_type != "Dropout") break;
      name = n->inputs[0];
    }
    return name;
  }

  Value get(const std::string &name);
  Value emit(const Node &n, size_t out);
  Value param(const std::string &name, bool transpose);
  Value constant(const std::string &name);
  Value generic(const Node &n, size_t out);

  // ---- raising patterns (return null Value when they do not match)
  Value raise_embedding(const Node &n);
  Value raise_rms_norm(const Node &n);
  Value raise_swiglu_or_silu(const Node &n);
  Value raise_rope(const Node &n);
  Value raise_lora(const Node &n);
  Value raise_attention(const Node &n);
  Value raise_linear(const Node &n);
  bool probe_layout(const std::vector<const Node *> &chain, const std::string &from, const std::string &to,
                    int64_t repeats, bool transpose_last2);
  std::string find_head_source(const std::string &value, int64_t hq, int64_t dh, bool transposed);

  MLIRContext &ctx_;
  const OnnxGraph &g_;
  const OnnxImportOptions &opts_;
  OnnxImportReport &rep_;
  OpBuilder b_;
  std::map<std::string, Value> values_;
  bool failed_ = false;
  std::optional<double> rope_theta_;
};

Value Raiser::get(const std::string &name) {
  if (failed_) return {};
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  const ValueInfo *v = g_.value(name);
  if (!v) return fail("value '" + name + "' is not defined");
  Value result;
  if (v->constant) {
    result = constant(name);
  } else if (!v->producer) {
    return fail("value '" + name + "' has no producer");
  } else {
    const Node &n = *v->producer;
    size_t out = 0;
    while (n.outputs[out] != name) ++out;
    result = emit(n, out);
  }
  if (result) values_[name] = result;
  return result;
}

Value Raiser::param(const std::string &name, bool transpose) {
  const ValueInfo *v = g_.value(name);
  if (!v || !v->constant) return fail("weight '" + name + "' is not a constant");
  Shape shape = v->shape;
  if (transpose) std::swap(shape[0], shape[1]);
  auto type = RankedTensorType::get(shape, b_.getF32Type());
  auto op = b_.create<pl::ParamOp>(file_loc(), type, b_.getStringAttr(name), UnitAttr(), b_.getStringAttr("checkpoint"));
  const ConstValue &c = *v->constant;
  if (c.source) {
    op->setAttr("pl.source", b_.getStringAttr(c.source->name));
    std::vector<int64_t> perm = c.perm;
    if (perm.empty()) for (size_t d = 0; d < v->shape.size(); ++d) perm.push_back(int64_t(d));
    if (transpose) std::swap(perm[0], perm[1]);
    bool identity = true;
    for (size_t d = 0; d < perm.size(); ++d) identity &= perm[d] == int64_t(d);
    if (!identity) op->setAttr("pl.source_perm", b_.getDenseI64ArrayAttr(perm));
  } else {
    op->setAttr("pl.source", b_.getStringAttr(name));
    op->setAttr("pl.source_folded", b_.getUnitAttr());
  }
  return op.getResult();
}

Value Raiser::constant(const std::string &name) {
  const ValueInfo *v = g_.value(name);
  // Large float initializers used outside a raised pattern are still parameters.
  if (v->constant->is_lazy() && is_float_type(v->type) && numel(v->shape) > 4096) return param(name, false);
  auto t = g_.materialize(name);
  if (!t) return fail(t.message());
  auto type = type_of(name);
  DenseElementsAttr attr;
  if (t->is_float()) {
    std::vector<float> vals(t->f.begin(), t->f.end());
    attr = DenseElementsAttr::get(RankedTensorType::get(v->shape, b_.getF32Type()), llvm::ArrayRef<float>(vals));
    type = RankedTensorType::get(v->shape, b_.getF32Type());
  } else if (v->type == kBool) {
    SmallVector<bool> vals(t->i.begin(), t->i.end());
    attr = DenseElementsAttr::get(type, llvm::ArrayRef<bool>(vals));
  } else {
    std::vector<llvm::APInt> vals;
    unsigned width = type.getElementType().getIntOrFloatBitWidth();
    for (int64_t x : t->i) vals.emplace_back(width, uint64_t(x), true);
    attr = DenseElementsAttr::get(type, vals);
  }
  return b_.create<pl::ConstantOp>(file_loc(), type, attr).getResult();
}

Value Raiser::generic(const Node &n, size_t out) {
  if (!n.domain.empty() && n.domain != "ai.onnx")
    return fail(n.describe() + " is in the unsupported domain '" + n.domain + "'");
  SmallVector<Value> ins;
  for (const std::string &in : n.inputs) {
    if (in.empty()) continue;
    Value v = get(in);
    if (!v) return {};
    ins.push_back(v);
  }
  SmallVector<Type> types;
  for (const std::string &o : n.outputs) {
    const ValueInfo *v = g_.value(o);
    if (!v || !v->shape_known)
      return fail(n.describe() + ": op type '" + n.op_type + "' is not supported (cannot infer the shape of its output '" + o + "')");
    types.push_back(type_of(o));
  }
  auto op = b_.create<pl::GenericOp>(loc(n), types, ins, b_.getStringAttr(n.op_type), DictionaryAttr());
  rep_.generic_nodes.push_back(n.describe());
  for (size_t k = 0; k < n.outputs.size(); ++k) values_[n.outputs[k]] = op->getResult(k);
  return op->getResult(out);
}

Value Raiser::emit(const Node &n, size_t out) {
  const std::string &op = n.op_type;
  Value v;
  if (out == 0) {
    if (op == "Gather") v = raise_embedding(n);
    else if (op == "Mul") { v = raise_rms_norm(n); if (!v && !failed_) v = raise_swiglu_or_silu(n); }
    else if (op == "Add") { v = raise_rope(n); if (!v && !failed_) v = raise_lora(n); }
    else if (op == "MatMul") { v = raise_attention(n); if (!v && !failed_) v = raise_linear(n); }
    if (failed_) return {};
    if (v) return v;
    auto rt = type_of(n.outputs[0]);
    if ((op == "Identity" || op == "Dropout") && is_runtime(n.inputs[0])) return get(n.inputs[0]);
    if ((op == "Add" || op == "Mul") && is_runtime(n.inputs[0]) && is_runtime(n.inputs[1]) &&
        g_.value(n.inputs[0])->shape == g_.value(n.inputs[1])->shape) {
      Value a = get(n.inputs[0]), c = get(n.inputs[1]);
      if (!a || !c) return {};
      if (op == "Add") return b_.create<pl::AddOp>(loc(n), rt, a, c);
      return b_.create<pl::MulOp>(loc(n), rt, a, c);
    }
    if (op == "Reshape" && is_runtime(n.inputs[0]) && is_const(n.inputs[1])) {
      Value a = get(n.inputs[0]);
      if (!a) return {};
      // Exporters write no-op views and view-of-view chains; keep one reshape at most.
      if (auto prev = a.getDefiningOp<pl::ReshapeOp>()) a = prev.getInput();
      if (a.getType() == rt) return a;
      return b_.create<pl::ReshapeOp>(loc(n), rt, a);
    }
    if (op == "Transpose" && is_runtime(n.inputs[0])) {
      Value a = get(n.inputs[0]);
      if (!a) return {};
      std::vector<int64_t> perm = g_.attr_ints(n, "perm");
      if (perm.empty()) for (int64_t d = rank(n.inputs[0]) - 1; d >= 0; --d) perm.push_back(d);
      bool identity = true;
      for (size_t d = 0; d < perm.size(); ++d) identity &= perm[d] == int64_t(d);
      if (identity) return a;
      return b_.create<pl::TransposeOp>(loc(n), rt, a, b_.getDenseI64ArrayAttr(perm));
    }
    if (op == "Softmax" && is_runtime(n.inputs[0])) {
      Value a = get(n.inputs[0]);
      if (!a) return {};
      return b_.create<pl::SoftmaxOp>(loc(n), rt, a, b_.getI64IntegerAttr(g_.attr_int(n, "axis", -1)));
    }
    if (op == "MatMul" && is_runtime(n.inputs[0]) && is_runtime(n.inputs[1]) && rank(n.inputs[0]) >= 2 &&
        rank(n.inputs[0]) == rank(n.inputs[1])) {
      Value a = get(n.inputs[0]), c = get(n.inputs[1]);
      if (!a || !c) return {};
      return b_.create<pl::MatMulOp>(loc(n), rt, a, c, b_.getBoolAttr(false), b_.getBoolAttr(false));
    }
  }
  return generic(n, out);
}

// ---------------------------------------------------------------- embedding, linear
Value Raiser::raise_embedding(const Node &n) {
  if (n.inputs.size() != 2 || !is_const(n.inputs[0]) || !is_runtime(n.inputs[1]) || rank(n.inputs[0]) != 2 ||
      g_.attr_int(n, "axis", 0) != 0 || !is_float_type(g_.value(n.inputs[0])->type))
    return {};
  Value ids = get(n.inputs[1]);
  Value table = ids ? param(n.inputs[0], false) : Value();
  if (!table) return {};
  return b_.create<pl::EmbeddingOp>(loc(n), type_of(n.outputs[0]), ids, table);
}

Value Raiser::raise_linear(const Node &n) {
  if (!is_runtime(n.inputs[0]) || !is_const(n.inputs[1]) || rank(n.inputs[1]) != 2 ||
      !is_float_type(g_.value(n.inputs[1])->type))
    return {};
  Value x = get(n.inputs[0]);
  Value w = x ? param(n.inputs[1], /*transpose=*/true) : Value();
  if (!w) return {};
  return b_.create<pl::LinearOp>(loc(n), type_of(n.outputs[0]), x, w, Value());
}

// ---------------------------------------------------------------- RMSNorm
// w * (x * Reciprocal(Sqrt(ReduceMean(Pow(x, 2), -1) + eps)))   (HF LlamaRMSNorm in fp32)
Value Raiser::raise_rms_norm(const Node &n) {
  for (int wi = 0; wi < 2; ++wi) {
    const std::string &w = n.inputs[wi], &m = n.inputs[1 - wi];
    if (!is_const(w) || rank(w) != 1 || !is_float_type(g_.value(w)->type)) continue;
    const Node *mul = prod(m, "Mul");
    if (!mul) continue;
    for (int xi = 0; xi < 2; ++xi) {
      const std::string &x = mul->inputs[xi];
      const Node *rec = prod(mul->inputs[1 - xi], "Reciprocal");
      const Node *sq = rec ? prod(rec->inputs[0], "Sqrt") : nullptr;
      const Node *add = sq ? prod(sq->inputs[0], "Add") : nullptr;
      if (!add) continue;
      for (int ei = 0; ei < 2; ++ei) {
        auto eps = g_.scalar(add->inputs[ei]);
        const Node *mean = prod(add->inputs[1 - ei], "ReduceMean");
        if (!eps || !mean) continue;
        const Node *pow = prod(mean->inputs[0], "Pow");
        auto two = pow ? g_.scalar(pow->inputs[1]) : std::nullopt;
        if (!pow || !two || *two != 2.0 || pow->inputs[0] != x) continue;
        std::vector<int64_t> axes = g_.attr_ints(*mean, "axes");
        if (mean->inputs.size() > 1) { auto t = g_.materialize(mean->inputs[1]); if (t) axes = t->i; }
        int64_t r = rank(x);
        if (axes.size() != 1 || (axes[0] != -1 && axes[0] != r - 1)) continue;
        if (g_.value(w)->shape[0] != g_.value(x)->shape.back()) continue;
        Value xv = get(x);
        Value wv = xv ? param(w, false) : Value();
        if (!wv) return {};
        return b_.create<pl::RMSNormOp>(loc(n), type_of(n.outputs[0]), xv, wv, b_.getF64FloatAttr(shortest_float(*eps)));
      }
    }
  }
  return {};
}

// ---------------------------------------------------------------- SiLU / SwiGLU
Value Raiser::raise_swiglu_or_silu(const Node &n) {
  auto silu_of = [&](const std::string &v) -> std::string {
    const Node *m = prod(v, "Mul");
    if (!m) return "";
    for (int k = 0; k < 2; ++k) {
      const Node *s = prod(m->inputs[1 - k], "Sigmoid");
      if (s && s->inputs[0] == m->inputs[k]) return m->inputs[k];
    }
    return "";
  };
  for (int k = 0; k < 2; ++k) {
    std::string gate = silu_of(n.inputs[k]);
    const std::string &up = n.inputs[1 - k];
    if (gate.empty() || !is_runtime(up) || g_.value(up)->shape != g_.value(gate)->shape) continue;
    Value gv = get(gate), uv = gv ? get(up) : Value();
    if (!uv) return {};
    return b_.create<pl::SwigluOp>(loc(n), type_of(n.outputs[0]), gv, uv);
  }
  for (int k = 0; k < 2; ++k) {
    const Node *s = prod(n.inputs[1 - k], "Sigmoid");
    if (s && s->inputs[0] == n.inputs[k]) {
      Value x = get(n.inputs[k]);
      if (!x) return {};
      return b_.create<pl::SiluOp>(loc(n), type_of(n.outputs[0]), x);
    }
  }
  return {};
}

// ---------------------------------------------------------------- probes
// Evaluates `chain` (layout ops from `from` to `to`) on an iota tensor and checks the result is
// repeat_kv(iota, repeats) (optionally with the last two dims swapped): whatever mix of
// Unsqueeze/Expand/Reshape/Transpose the exporter wrote, the numbers decide.
bool Raiser::probe_layout(const std::vector<const Node *> &chain, const std::string &from, const std::string &to,
                          int64_t repeats, bool transpose_last2) {
  const Shape &s = g_.value(from)->shape;
  HostTensor iota = HostTensor::make(kFloat, s);
  for (int64_t k = 0; k < iota.size(); ++k) iota.f[k] = double(k);
  auto out = g_.evaluate(chain, {{from, iota}}, to);
  if (!out) return false;
  int64_t B = s[0], H = s[1], T = s[2], D = s[3];
  Shape want = transpose_last2 ? Shape{B, H * repeats, D, T} : Shape{B, H * repeats, T, D};
  if (out->shape != want) return false;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H * repeats; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) {
          double expect = double(((b * H + h / repeats) * T + t) * D + d);
          int64_t idx = transpose_last2 ? ((b * H * repeats + h) * D + d) * T + t : ((b * H * repeats + h) * T + t) * D + d;
          if (out->f[idx] != expect) return false;
        }
  return true;
}

// Walks back from `value` through layout ops and returns the farthest (B, Hkv, S, Dh) value
// whose path to `value` is exactly repeat_kv (and a transpose of the last two dims for keys).
std::string Raiser::find_head_source(const std::string &value, int64_t hq, int64_t dh, bool transposed) {
  static const std::set<std::string> layout = {"Reshape", "Transpose", "Expand", "Unsqueeze", "Squeeze", "Identity"};
  std::vector<std::string> path = {value};
  std::vector<const Node *> nodes;
  std::string cur = value;
  while (const Node *p = g_.producer(cur)) {
    if (!layout.count(p->op_type) || !is_runtime(p->inputs[0])) break;
    bool others_const = true;
    for (size_t k = 1; k < p->inputs.size(); ++k) others_const &= p->inputs[k].empty() || is_const(p->inputs[k]);
    if (!others_const) break;
    nodes.push_back(p);
    cur = p->inputs[0];
    path.push_back(cur);
  }
  for (size_t j = path.size(); j-- > 1;) {
    const Shape &s = g_.value(path[j])->shape;
    if (s.size() != 4 || s[3] != dh || s[1] <= 0 || hq % s[1] != 0) continue;
    std::vector<const Node *> chain(nodes.begin(), nodes.begin() + j);
    std::reverse(chain.begin(), chain.end());
    if (probe_layout(chain, path[j], value, hq / s[1], transposed)) return path[j];
  }
  if (!transposed) {
    const Shape &s = g_.value(value)->shape;
    if (s.size() == 4 && s[1] == hq && s[3] == dh) return value; // plain MHA value
  }
  return "";
}

// ---------------------------------------------------------------- attention
// P = Softmax(q*s1 @ (k^T)*s2 + mask) [Where(IsNaN(P), 0, P)];  out = P @ repeat_kv(v)
Value Raiser::raise_attention(const Node &n) {
  std::string p = n.inputs[0], vv = n.inputs[1];
  if (!is_runtime(p) || !is_runtime(vv) || rank(p) != 4) return {};
  if (const Node *w = prod(p, "Where")) {
    const Node *nan = prod(w->inputs[0], "IsNaN");
    if (nan && nan->inputs[0] == w->inputs[2] && g_.scalar(w->inputs[1]) == 0.0) p = w->inputs[2];
  }
  const Node *sm = prod(p, "Softmax");
  if (!sm) return {};
  int64_t axis = g_.attr_int(*sm, "axis", -1);
  if (axis != -1 && axis != 3) return {};
  double scale = 1.0;
  std::string z = sm->inputs[0], mask;
  auto peel_scalar = [&](std::string &v) {
    while (const Node *m = g_.producer(v)) {
      if (m->op_type != "Mul" && m->op_type != "Div") break;
      auto c = g_.scalar(m->inputs[1]);
      if (c && is_runtime(m->inputs[0])) { scale = m->op_type == "Mul" ? scale * *c : scale / *c; v = m->inputs[0]; continue; }
      auto c0 = g_.scalar(m->inputs[0]);
      if (c0 && m->op_type == "Mul" && is_runtime(m->inputs[1])) { scale *= *c0; v = m->inputs[1]; continue; }
      break;
    }
  };
  for (;;) {
    peel_scalar(z);
    const Node *a = prod(z, "Add");
    if (!a || !mask.empty()) break;
    int ci = is_const(a->inputs[1]) ? 1 : is_const(a->inputs[0]) ? 0 : -1;
    if (ci < 0) break;
    mask = a->inputs[ci];
    z = a->inputs[1 - ci];
  }
  const Node *qk = prod(z, "MatMul");
  if (!qk) return {};
  std::string q = qk->inputs[0], kt = qk->inputs[1];
  peel_scalar(q);
  peel_scalar(kt);
  const Shape &qs = g_.value(q)->shape;
  if (qs.size() != 4) return {};
  int64_t hq = qs[1], dh = qs[3], T = qs[2];
  std::string k = find_head_source(kt, hq, dh, /*transposed=*/true);
  std::string v = find_head_source(vv, hq, dh, /*transposed=*/false);
  if (k.empty() || v.empty())
    return fail(n.describe() + ": looks like attention (softmax of " + sm->describe() +
                ") but its key/value layout is not q-heads repeat_kv of (B, Hkv, S, Dh)");
  bool causal = false;
  if (!mask.empty()) {
    auto m = g_.materialize(mask);
    if (!m) return fail(m.message());
    int64_t S = g_.value(k)->shape[2];
    const Shape &ms = m->shape;
    if (ms.size() < 2 || ms[ms.size() - 1] != S || ms[ms.size() - 2] != T)
      return fail(n.describe() + ": attention mask '" + mask + "' has shape " + shape_str(ms) + ", expected [..., " +
                  std::to_string(T) + ", " + std::to_string(S) + "]");
    bool is_causal = true, is_zero = true;
    for (int64_t e = 0; e < m->size(); ++e) {
      int64_t j = e % S, i = (e / S) % T;
      double x = m->at_f(e);
      if (x != 0) is_zero = false;
      if (j <= i + (S - T) ? x != 0 : !(x <= -1e4)) is_causal = false;
    }
    if (!is_causal && !is_zero)
      return fail(n.describe() + ": attention mask '" + mask +
                  "' is neither causal nor empty; padding masks are not supported in training graphs");
    causal = is_causal && !is_zero;
  }
  // The exporter splits 1/sqrt(Dh) into two float32 factors; snap to the exact value when close.
  if (std::fabs(scale * std::sqrt(double(dh)) - 1.0) < 1e-6) scale = 1.0 / std::sqrt(double(dh));
  else scale = shortest_float(scale);
  Value qv = get(q), kv = qv ? get(k) : Value(), vvv = kv ? get(v) : Value();
  if (!vvv) return {};
  return b_.create<pl::AttentionOp>(loc(n), type_of(n.outputs[0]), qv, kv, vvv,
                                    causal ? b_.getUnitAttr() : UnitAttr(), b_.getF64FloatAttr(scale), Value());
}

// ---------------------------------------------------------------- RoPE
// x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x[..., h:], x[..., :h]).
Value Raiser::raise_rope(const Node &n) {
  for (int k = 0; k < 2; ++k) {
    const Node *m1 = prod(n.inputs[k], "Mul"), *m2 = prod(n.inputs[1 - k], "Mul");
    if (!m1 || !m2) continue;
    for (int a = 0; a < 2; ++a) {
      std::string x = m1->inputs[a], cos = m1->inputs[1 - a];
      if (!is_runtime(x) || !is_const(cos) || rank(x) != 4) continue;
      for (int c = 0; c < 2; ++c) {
        std::string rot = m2->inputs[c], sin = m2->inputs[1 - c];
        const Node *cat = prod(rot, "Concat");
        if (!cat || !is_const(sin) || cat->inputs.size() != 2) continue;
        // Collect the rotate-half subgraph and check it numerically on a probe.
        const Node *neg = prod(cat->inputs[0], "Neg");
        const Node *s1 = neg ? prod(neg->inputs[0], "Slice") : nullptr;
        const Node *s0 = prod(cat->inputs[1], "Slice");
        if (!s0 || !s1 || s0->inputs[0] != x || s1->inputs[0] != x) continue;
        const Shape &xs = g_.value(x)->shape;
        int64_t T = xs[2], D = xs[3];
        HostTensor probe = HostTensor::make(kFloat, xs);
        for (int64_t e = 0; e < probe.size(); ++e) probe.f[e] = double(e);
        auto out = g_.evaluate({s0, s1, neg, cat}, {{x, probe}}, rot);
        if (!out || out->shape != xs) continue;
        bool ok = true;
        for (int64_t e = 0; e < probe.size() && ok; ++e) {
          int64_t d = e % D;
          double want = d < D / 2 ? -probe.f[e + D / 2] : probe.f[e - D / 2];
          ok = out->f[e] == want;
        }
        if (!ok) continue;
        auto ct = g_.materialize(cos), st = g_.materialize(sin);
        if (!ct || !st) return fail("cannot read rope tables");
        const Shape &cs = ct->shape;
        if (cs.size() < 2 || cs.back() != D || cs[cs.size() - 2] != T)
          return fail(n.describe() + ": rope tables have shape " + shape_str(cs) + ", expected [..., " +
                      std::to_string(T) + ", " + std::to_string(D) + "]");
        // Candidate frequencies: the config's (theta + llama3 scaling) when given, else theta
        // fitted from position 1 (atan2 keeps precision for small angles).
        std::vector<double> inv(D / 2);
        double theta;
        DictionaryAttr scaling;
        if (opts_.config) {
          theta = opts_.config->rope_theta;
          for (int64_t i = 0; i < D / 2; ++i) inv[i] = std::pow(theta, -2.0 * double(i) / double(D));
          if (const auto &rs = opts_.config->rope_scaling) {
            double low_wl = rs->original_max_position_embeddings / rs->low_freq_factor;
            double high_wl = rs->original_max_position_embeddings / rs->high_freq_factor;
            for (double &f : inv) {
              double wl = 2 * M_PI / f;
              if (wl > low_wl) f /= rs->factor;
              else if (wl >= high_wl) {
                double smooth = (rs->original_max_position_embeddings / wl - rs->low_freq_factor) /
                                (rs->high_freq_factor - rs->low_freq_factor);
                f = (1 - smooth) * f / rs->factor + smooth * f;
              }
            }
            scaling = b_.getDictionaryAttr({
                b_.getNamedAttr("factor", b_.getF64FloatAttr(rs->factor)),
                b_.getNamedAttr("low_freq_factor", b_.getF64FloatAttr(rs->low_freq_factor)),
                b_.getNamedAttr("high_freq_factor", b_.getF64FloatAttr(rs->high_freq_factor)),
                b_.getNamedAttr("original_max_position_embeddings",
                                b_.getI64IntegerAttr(rs->original_max_position_embeddings))});
          }
        } else {
          if (T < 2 || D < 4) return fail(n.describe() + ": rope needs T >= 2 and head_dim >= 4 to identify theta");
          double f1 = std::atan2(st->f[D + 1], ct->f[D + 1]); // position 1, frequency index 1
          theta = std::pow(f1, -double(D) / 2.0);
          double rounded = std::round(theta);
          if (std::fabs(rounded - theta) < 1e-3 * theta) theta = rounded;
          for (int64_t i = 0; i < D / 2; ++i) inv[i] = std::pow(theta, -2.0 * double(i) / double(D));
        }
        double worst = 0;
        for (int64_t e = 0; e < T * D; ++e) {
          int64_t t = e / D, d = e % D;
          double ang = double(t) * inv[d % (D / 2)];
          worst = std::max({worst, std::fabs(ct->f[e] - std::cos(ang)), std::fabs(st->f[e] - std::sin(ang))});
        }
        if (worst > 2e-3)
          return fail(n.describe() + ": rope cos/sin tables do not match LLaMA rope with theta=" + std::to_string(theta) +
                      (scaling ? " and the config's rope_scaling" : "") + " (max error " + std::to_string(worst) +
                      "); pass --hf-config with the model's config.json (rope_scaling cannot be read back from the tables)");
        if (rope_theta_ && *rope_theta_ != theta)
          return fail(n.describe() + ": rope theta " + std::to_string(theta) + " differs from an earlier layer's");
        rope_theta_ = theta;
        Value xv = get(x);
        if (!xv) return {};
        return b_.create<pl::RopeOp>(loc(n), type_of(n.outputs[0]), xv, b_.getF64FloatAttr(theta), scaling, Value());
      }
    }
  }
  return {};
}

// ---------------------------------------------------------------- PEFT LoRA
// MatMul(x, W^T) + MatMul(MatMul(dropout(x), A^T), B^T) * scaling
Value Raiser::raise_lora(const Node &n) {
  for (int k = 0; k < 2; ++k) {
    const Node *base = prod(n.inputs[k], "MatMul");
    const Node *mul = prod(n.inputs[1 - k], "Mul");
    if (!base || !mul || !is_const(base->inputs[1]) || rank(base->inputs[1]) != 2) continue;
    for (int s = 0; s < 2; ++s) {
      auto scaling = g_.scalar(mul->inputs[s]);
      const Node *mb = prod(mul->inputs[1 - s], "MatMul");
      const Node *ma = mb ? prod(mb->inputs[0], "MatMul") : nullptr;
      if (!scaling || !ma || !is_const(ma->inputs[1]) || !is_const(mb->inputs[1])) continue;
      std::string x = base->inputs[0];
      if (skip_identity(ma->inputs[0]) != skip_identity(x)) continue;
      const Shape &at = g_.value(ma->inputs[1])->shape, &bt = g_.value(mb->inputs[1])->shape;
      if (at.size() != 2 || bt.size() != 2) continue;
      int64_t r = at[1];
      Value xv = get(x);
      Value w = xv ? param(base->inputs[1], true) : Value();
      Value a = w ? param(ma->inputs[1], true) : Value();
      Value bb = a ? param(mb->inputs[1], true) : Value();
      if (!bb) return {};
      auto op = b_.create<pl::LoraLinearOp>(loc(n), type_of(n.outputs[0]), xv, w, a, bb, b_.getI64IntegerAttr(r),
                                            b_.getF64FloatAttr(*scaling * double(r)), b_.getF64FloatAttr(*scaling),
                                            b_.getF64FloatAttr(0.0), b_.getStringAttr(n.name));
      return op.getResult();
    }
  }
  return {};
}

FailureOr<OwningOpRef<ModuleOp>> Raiser::run() {
  OwningOpRef<ModuleOp> module = ModuleOp::create(file_loc());
  b_.setInsertionPointToEnd(module->getBody());
  SmallVector<Type> arg_types, result_types;
  for (const std::string &in : g_.inputs()) arg_types.push_back(type_of(in));
  for (const std::string &out : g_.outputs()) {
    const ValueInfo *v = g_.value(out);
    if (!v->shape_known) {
      // Name the first node whose output shape could not be inferred: that is the culprit.
      for (const Node &n : g_.nodes())
        for (const std::string &o : n.outputs)
          if (!o.empty() && g_.value(o) && !g_.value(o)->shape_known) {
            fail(n.describe() + ": op type '" + n.op_type + "' is not supported (cannot infer the shape of its output '" + o + "')");
            return failure();
          }
      fail("cannot infer the shape of graph output '" + out + "'");
      return failure();
    }
    result_types.push_back(is_float_type(v->type) ? RankedTensorType::get(v->shape, b_.getF32Type()) : type_of(out));
  }
  auto func = b_.create<func::FuncOp>(file_loc(), "forward", b_.getFunctionType(arg_types, result_types));
  Block *entry = func.addEntryBlock();
  for (size_t k = 0; k < g_.inputs().size(); ++k) {
    values_[g_.inputs()[k]] = entry->getArgument(k);
    func.setArgAttr(k, "pl.name", b_.getStringAttr(g_.inputs()[k]));
  }
  b_.setInsertionPointToEnd(entry);
  SmallVector<Value> results;
  for (const std::string &out : g_.outputs()) {
    Value v = get(out);
    if (!v) return failure();
    results.push_back(v);
  }
  b_.create<func::ReturnOp>(file_loc(), results);
  if (failed(name_params_by_role(*module, rep_.lora_modules))) return failure();
  if (failed(verify(*module))) return failure();
  return module;
}

} // namespace

FailureOr<OwningOpRef<ModuleOp>> import_onnx(MLIRContext &ctx, const std::string &path,
                                             const OnnxImportOptions &options, OnnxImportReport *report) {
  ctx.loadDialect<pl::PlDialect, func::FuncDialect>();
  onnx_import::LoadOptions lo;
  lo.batch = options.batch;
  lo.seq_len = options.seq_len;
  lo.micro_batches = options.micro_batches;
  auto graph = onnx_import::OnnxGraph::load(path, lo);
  if (!graph) {
    emitError(FileLineColLoc::get(&ctx, path, 0, 0)) << graph.message();
    return failure();
  }
  OnnxImportReport local;
  OnnxImportReport &rep = report ? *report : local;
  rep.onnx_nodes = int64_t((*graph)->nodes().size());
  for (const auto &n : (*graph)->nodes())
    if (n.op_type == "Constant" || (!n.outputs.empty() && (*graph)->is_const(n.outputs[0]))) ++rep.folded_nodes;
  Raiser raiser(ctx, **graph, options, rep);
  return raiser.run();
}

Status read_onnx_parameters(ModuleOp module, const std::string &path, const OnnxImportOptions &options,
                            const std::function<Status(OnnxParamValues &)> &visit) {
  onnx_import::LoadOptions lo;
  lo.batch = options.batch;
  lo.seq_len = options.seq_len;
  lo.micro_batches = options.micro_batches;
  auto graph = onnx_import::OnnxGraph::load(path, lo);
  if (!graph) return graph.status();
  Status status = Status::ok();
  module.walk([&](pl::ParamOp op) {
    if (!status) return WalkResult::interrupt();
    auto source = op->getAttrOfType<StringAttr>("pl.source");
    if (!source) return WalkResult::advance();
    const std::string name = op.getName().str();
    auto fail = [&](const std::string &why) {
      status = Status::error(path + ": parameter '" + name + "' (initializer '" + source.str() + "'): " + why);
      return WalkResult::interrupt();
    };
    const onnx_import::ValueInfo *src = (*graph)->value(source.str());
    if (!src || !src->constant) return fail("not a constant in the graph");
    StatusOr<onnx_import::HostTensor> t = Status::ok();
    if (op->hasAttr("pl.source_folded")) {
      t = (*graph)->materialize(source.str());
    } else {
      // The IR's parameter is a permuted view of the initializer: compose the permutations.
      onnx_import::ConstValue c = *src->constant;
      onnx_import::Shape shape = src->shape;
      if (auto perm = op->getAttrOfType<DenseI64ArrayAttr>("pl.source_perm")) {
        std::vector<int64_t> composed;
        onnx_import::Shape permuted;
        for (int64_t d : perm.asArrayRef()) {
          if (d < 0 || d >= int64_t(shape.size())) return fail("pl.source_perm out of range");
          composed.push_back(c.perm.empty() ? d : c.perm[size_t(d)]);
          permuted.push_back(shape[size_t(d)]);
        }
        c.perm = composed;
        shape = permuted;
      }
      t = (*graph)->materialize(c, src->type, shape);
    }
    if (!t) return fail(t.message());
    auto type = op.getType().cast<RankedTensorType>();
    OnnxParamValues v;
    v.name = name;
    v.shape.assign(type.getShape().begin(), type.getShape().end());
    v.trainable = op.getTrainable();
    if (t->shape != v.shape)
      return fail("has shape " + onnx_import::shape_str(t->shape) + " but the IR needs " + onnx_import::shape_str(v.shape));
    v.values.assign(t->f.begin(), t->f.end());
    if (Status s = visit(v); !s) {
      status = s;
      return WalkResult::interrupt();
    }
    return WalkResult::advance();
  });
  return status;
}

} // namespace parallora
