//===- const_eval.cpp - shapes and constant folding for ONNX ops ----------===//
//
// One case per ONNX op that LLaMA exports contain. Each computes the output type and shape
// from its inputs' (shapes are always needed to type the IR) and, when every input is a
// constant, the output data (folding). Ops not listed here produce "shape unknown"; the
// importer reports them by node if their result is ever needed.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>

#include <onnx/onnx_pb.h>

#include "frontend/onnx/onnx_graph.h"

namespace parallora::onnx_import {
namespace {

Status fail(const std::string &msg) { return Status::error(msg); }

std::vector<int64_t> strides_of(const Shape &s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int d = int(s.size()) - 2; d >= 0; --d)
    st[d] = st[d + 1] * s[d + 1];
  return st;
}

bool broadcast_shapes(const std::vector<Shape> &shapes, Shape &out) {
  size_t rank = 0;
  for (const Shape &s : shapes)
    rank = std::max(rank, s.size());
  out.assign(rank, 1);
  for (const Shape &s : shapes) {
    for (size_t k = 0; k < s.size(); ++k) {
      int64_t &o = out[rank - s.size() + k];
      int64_t d = s[k];
      if (d == 1) continue;
      if (o == 1 || o == d) o = d;
      else if (d < 0 || o < 0) o = std::max(o, d);
      else return false;
    }
  }
  return true;
}

// Index into `s` (broadcast to `out`) for flat output index k.
int64_t broadcast_index(int64_t k, const Shape &out, const Shape &s) {
  int64_t idx = 0, stride = 1;
  for (int d = int(out.size()) - 1, sd = int(s.size()) - 1; d >= 0; --d, --sd) {
    int64_t coord = k % out[d];
    k /= out[d];
    if (sd >= 0) {
      if (s[sd] != 1)
        idx += coord * stride;
      stride *= s[sd];
    }
  }
  return idx;
}

int64_t norm_axis(int64_t a, size_t rank) { return a < 0 ? a + int64_t(rank) : a; }

// Folding materialises the result: only for valid shapes of bounded size (a crafted
// ConstantOfShape/Expand/Range must not allocate gigabytes).
constexpr int64_t kMaxFoldElements = int64_t(1) << 25;
thread_local int64_t fold_limit = kMaxFoldElements; // set per node from the graph's options
bool can_fold(const EvalResult &r) {
  int64_t n = 1;
  for (int64_t d : r.shape) {
    if (d < 0) return false;
    if (d > 0 && n > kMaxFoldElements / d) return false;
    n *= d;
  }
  return n <= fold_limit;
}

} // namespace

Status eval_onnx_node(const OnnxGraph &g, const Node &n, const std::vector<const ValueInfo *> &in,
                      const std::vector<const HostTensor *> &data, std::vector<EvalResult> &res) {
  const std::string &op = n.op_type;
  auto known = [&](size_t k) { return k < in.size() && in[k] && in[k]->shape_known; };
  auto all_data = [&]() {
    for (size_t k = 0; k < in.size(); ++k)
      if (in[k] && !data[k]) return false;
    return true;
  };
  auto need = [&](size_t count) -> Status {
    if (in.size() < count || !in[0])
      return fail("expects at least " + std::to_string(count) + " inputs, has " + std::to_string(in.size()));
    return Status::ok();
  };
  if (res.empty())
    return Status::ok(); // a node without outputs computes nothing we need
  fold_limit = std::min(kMaxFoldElements, g.fold_limit());
  // Required inputs per op: a crafted node with fewer must be an error, not a null deref.
  static const std::map<std::string, size_t> min_inputs = {
      {"Add", 2}, {"Sub", 2}, {"Mul", 2}, {"Div", 2}, {"Pow", 2}, {"Max", 2}, {"Min", 2}, {"Equal", 2},
      {"Less", 2}, {"LessOrEqual", 2}, {"Greater", 2}, {"GreaterOrEqual", 2}, {"And", 2}, {"Or", 2},
      {"Where", 3}, {"Neg", 1}, {"Sqrt", 1}, {"Reciprocal", 1}, {"Cos", 1}, {"Sin", 1}, {"Exp", 1},
      {"Log", 1}, {"Abs", 1}, {"Tanh", 1}, {"Sigmoid", 1}, {"Not", 1}, {"IsNaN", 1}, {"IsInf", 1},
      {"Floor", 1}, {"Ceil", 1}, {"Identity", 1}, {"Dropout", 1}, {"Cast", 1}, {"CastLike", 2},
      {"Shape", 1}, {"Size", 1}, {"Reshape", 2}, {"Unsqueeze", 1}, {"Squeeze", 1}, {"Flatten", 1},
      {"Transpose", 1}, {"Expand", 2}, {"Concat", 1}, {"Slice", 3}, {"Gather", 2}, {"GatherND", 2},
      {"Range", 3}, {"ConstantOfShape", 1}, {"CumSum", 2}, {"Trilu", 1}, {"MatMul", 2},
      {"ReduceMean", 1}, {"ReduceSum", 1}, {"ReduceMax", 1}, {"Softmax", 1}, {"LogSoftmax", 1}};
  if (auto it = min_inputs.find(op); it != min_inputs.end()) {
    if (in.size() < it->second)
      return fail("needs " + std::to_string(it->second) + " inputs, has " + std::to_string(in.size()));
    size_t required = op == "Concat" ? in.size() : it->second;
    for (size_t k = 0; k < required; ++k)
      if (!in[k]) return fail("input " + std::to_string(k) + " is required");
  }
  EvalResult &r = res[0];
  if (!n.domain.empty() && n.domain != "ai.onnx")
    return Status::ok(); // custom domain: unknown shape; the importer rejects it if used

  // ---------------------------------------------------------------- elementwise (broadcasting)
  static const std::map<std::string, std::function<double(double, double)>> binary = {
      {"Add", [](double a, double b) { return a + b; }},
      {"Sub", [](double a, double b) { return a - b; }},
      {"Mul", [](double a, double b) { return a * b; }},
      {"Div", [](double a, double b) { return a / b; }},
      {"Pow", [](double a, double b) { return std::pow(a, b); }},
      {"Max", [](double a, double b) { return std::max(a, b); }},
      {"Min", [](double a, double b) { return std::min(a, b); }},
      {"Equal", [](double a, double b) { return double(a == b); }},
      {"Less", [](double a, double b) { return double(a < b); }},
      {"LessOrEqual", [](double a, double b) { return double(a <= b); }},
      {"Greater", [](double a, double b) { return double(a > b); }},
      {"GreaterOrEqual", [](double a, double b) { return double(a >= b); }},
      {"And", [](double a, double b) { return double(a != 0 && b != 0); }},
      {"Or", [](double a, double b) { return double(a != 0 || b != 0); }},
  };
  static const std::map<std::string, std::function<double(double)>> unary = {
      {"Neg", [](double a) { return -a; }},
      {"Sqrt", [](double a) { return std::sqrt(a); }},
      {"Reciprocal", [](double a) { return 1.0 / a; }},
      {"Cos", [](double a) { return std::cos(a); }},
      {"Sin", [](double a) { return std::sin(a); }},
      {"Exp", [](double a) { return std::exp(a); }},
      {"Log", [](double a) { return std::log(a); }},
      {"Abs", [](double a) { return std::fabs(a); }},
      {"Tanh", [](double a) { return std::tanh(a); }},
      {"Sigmoid", [](double a) { return 1.0 / (1.0 + std::exp(-a)); }},
      {"Not", [](double a) { return double(a == 0); }},
      {"IsNaN", [](double a) { return double(std::isnan(a)); }},
      {"IsInf", [](double a) { return double(std::isinf(a)); }},
      {"Floor", [](double a) { return std::floor(a); }},
      {"Ceil", [](double a) { return std::ceil(a); }},
      {"Identity", [](double a) { return a; }},
      {"Dropout", [](double a) { return a; }},
  };
  bool is_bool_result = op == "Equal" || op == "Less" || op == "LessOrEqual" || op == "Greater" ||
                        op == "GreaterOrEqual" || op == "And" || op == "Or" || op == "Not" ||
                        op == "IsNaN" || op == "IsInf";

  if (binary.count(op) || op == "Where") {
    size_t first = op == "Where" ? 0 : 0;
    size_t count = op == "Where" ? 3 : 2;
    if (Status s = need(count); !s) return s;
    for (size_t k = first; k < count; ++k)
      if (!known(k)) return Status::ok();
    std::vector<Shape> shapes;
    for (size_t k = 0; k < count; ++k) shapes.push_back(in[k]->shape);
    if (!broadcast_shapes(shapes, r.shape))
      return fail("operand shapes cannot be broadcast");
    r.type = is_bool_result ? kBool : (op == "Where" ? in[1]->type : in[0]->type);
    r.shape_known = true;
    if (all_data() && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, r.shape);
      int64_t total = numel(r.shape);
      for (int64_t k = 0; k < total; ++k) {
        if (op == "Where") {
          double c = data[0]->at_f(broadcast_index(k, r.shape, data[0]->shape));
          const HostTensor *pick = c != 0 ? data[1] : data[2];
          t.set(k, pick->at_f(broadcast_index(k, r.shape, pick->shape)));
        } else if (!is_float_type(r.type) && !is_bool_result && op != "Pow") {
          int64_t a = data[0]->at_i(broadcast_index(k, r.shape, data[0]->shape));
          int64_t b = data[1]->at_i(broadcast_index(k, r.shape, data[1]->shape));
          int64_t v = op == "Add" ? a + b : op == "Sub" ? a - b : op == "Mul" ? a * b
                    : op == "Div" ? (b ? a / b : 0) : op == "Max" ? std::max(a, b) : std::min(a, b);
          t.i[k] = v;
        } else {
          double a = data[0]->at_f(broadcast_index(k, r.shape, data[0]->shape));
          double b = data[1]->at_f(broadcast_index(k, r.shape, data[1]->shape));
          t.set(k, binary.at(op)(a, b));
        }
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (unary.count(op)) {
    if (Status s = need(1); !s) return s;
    if (!known(0)) return Status::ok();
    r.type = is_bool_result ? kBool : in[0]->type;
    r.shape = in[0]->shape;
    r.shape_known = true;
    if (all_data() && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, r.shape);
      for (int64_t k = 0; k < t.size(); ++k)
        t.set(k, unary.at(op)(data[0]->at_f(k)));
      r.data = std::move(t);
    }
    if (res.size() > 1 && op == "Dropout") { // mask output
      res[1].type = kBool; res[1].shape = r.shape; res[1].shape_known = true;
    }
    return Status::ok();
  }
  if (op == "Cast" || op == "CastLike") {
    if (Status s = need(1); !s) return s;
    if (!known(0)) return Status::ok();
    r.type = op == "Cast" ? int32_t(g.attr_int(n, "to", kFloat)) : (in.size() > 1 && in[1] ? in[1]->type : kFloat);
    r.shape = in[0]->shape;
    r.shape_known = true;
    if (data[0] && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, r.shape);
      for (int64_t k = 0; k < t.size(); ++k) {
        if (!t.is_float() && !data[0]->is_float()) { // int -> int: no trip through double (INT64_MAX ends)
          t.i[k] = r.type == kBool ? data[0]->i[k] != 0 : data[0]->i[k];
          continue;
        }
        double v = data[0]->at_f(k);
        if (r.type == kFloat) v = double(float(v));
        if (!t.is_float() && r.type != kBool)
          v = std::clamp(v, -9.2e18, 9.2e18); // saturate instead of overflowing
        t.set(k, v);
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }

  // ---------------------------------------------------------------- shape ops
  if (op == "Shape") {
    if (Status s = need(1); !s) return s;
    r.type = kInt64;
    int64_t rank = known(0) ? int64_t(in[0]->shape.size()) : -1;
    if (rank < 0) return Status::ok();
    int64_t start = norm_axis(g.attr_int(n, "start", 0), rank), end = g.attr_int(n, "end", rank);
    end = std::clamp<int64_t>(norm_axis(end, rank), 0, rank);
    start = std::clamp<int64_t>(start, 0, rank);
    r.shape = {std::max<int64_t>(end - start, 0)};
    r.shape_known = true;
    HostTensor t = HostTensor::make(kInt64, r.shape);
    bool all_static = true;
    for (int64_t d = start; d < end; ++d) {
      t.i[d - start] = in[0]->shape[d];
      all_static &= in[0]->shape[d] >= 0;
    }
    if (all_static) r.data = std::move(t);
    return Status::ok();
  }
  if (op == "Size") {
    r.type = kInt64; r.shape = {}; r.shape_known = true;
    if (known(0)) { HostTensor t = HostTensor::make(kInt64, {}); t.i[0] = numel(in[0]->shape); r.data = t; }
    return Status::ok();
  }
  if (op == "Reshape") {
    if (Status s = need(2); !s) return s;
    if (!known(0) || !data[1]) return Status::ok();
    bool allowzero = g.attr_int(n, "allowzero", 0) != 0;
    Shape target(data[1]->i.begin(), data[1]->i.end());
    int64_t infer = -1, prod = 1;
    for (size_t d = 0; d < target.size(); ++d) {
      if (target[d] == 0 && !allowzero) {
        if (d >= in[0]->shape.size()) return fail("reshape dim " + std::to_string(d) + " copies a missing input dim");
        target[d] = in[0]->shape[d];
      }
      if (target[d] == -1) {
        if (infer >= 0) return fail("reshape target " + shape_str(target) + " has two -1 dims");
        infer = int64_t(d);
      } else {
        if (target[d] < 0 || __builtin_mul_overflow(prod, target[d], &prod))
          return fail("reshape target " + shape_str(target) + " is not a valid shape");
      }
    }
    int64_t total = numel(in[0]->shape);
    if (infer >= 0) target[infer] = prod ? total / prod : 0;
    if (numel(target) != total)
      return fail("cannot reshape " + shape_str(in[0]->shape) + " (" + std::to_string(total) + " elements) to " +
                  shape_str(target));
    r.type = in[0]->type; r.shape = target; r.shape_known = true;
    if (data[0] && can_fold(r)) { HostTensor t = *data[0]; t.shape = target; r.data = std::move(t); }
    return Status::ok();
  }
  if (op == "Unsqueeze" || op == "Squeeze") {
    if (Status s = need(1); !s) return s;
    if (!known(0)) return Status::ok();
    std::vector<int64_t> axes = g.attr_ints(n, "axes");
    if (in.size() > 1 && in[1]) {
      if (!data[1]) return Status::ok();
      axes.assign(data[1]->i.begin(), data[1]->i.end());
    }
    Shape s = in[0]->shape;
    if (op == "Unsqueeze") {
      size_t rank = s.size() + axes.size();
      for (int64_t &a : axes) a = norm_axis(a, rank);
      std::sort(axes.begin(), axes.end());
      for (int64_t a : axes) {
        if (a < 0 || a > int64_t(s.size())) return fail("unsqueeze axis out of range");
        s.insert(s.begin() + a, 1);
      }
    } else {
      if (axes.empty()) {
        Shape t; for (int64_t d : s) if (d != 1) t.push_back(d); s = t;
      } else {
        for (int64_t &a : axes) a = norm_axis(a, s.size());
        std::sort(axes.rbegin(), axes.rend());
        for (int64_t a : axes) {
          if (a < 0 || a >= int64_t(s.size()) || s[a] != 1) return fail("squeeze of a dim that is not 1");
          s.erase(s.begin() + a);
        }
      }
    }
    r.type = in[0]->type; r.shape = s; r.shape_known = true;
    if (data[0] && can_fold(r)) { HostTensor t = *data[0]; t.shape = s; r.data = std::move(t); }
    return Status::ok();
  }
  if (op == "Flatten") {
    if (!known(0)) return Status::ok();
    int64_t axis = norm_axis(g.attr_int(n, "axis", 1), in[0]->shape.size());
    int64_t a = 1, b = 1;
    for (int64_t d = 0; d < int64_t(in[0]->shape.size()); ++d) (d < axis ? a : b) *= in[0]->shape[d];
    r.type = in[0]->type; r.shape = {a, b}; r.shape_known = true;
    if (data[0] && can_fold(r)) { HostTensor t = *data[0]; t.shape = r.shape; r.data = std::move(t); }
    return Status::ok();
  }
  if (op == "Transpose") {
    if (!known(0)) return Status::ok();
    const Shape &s = in[0]->shape;
    std::vector<int64_t> perm = g.attr_ints(n, "perm");
    if (perm.empty()) for (int64_t d = int64_t(s.size()) - 1; d >= 0; --d) perm.push_back(d);
    if (perm.size() != s.size()) return fail("perm has " + std::to_string(perm.size()) + " entries for rank " + std::to_string(s.size()));
    {
      std::vector<bool> seen(perm.size(), false);
      for (int64_t p : perm) {
        if (p < 0 || p >= int64_t(perm.size()) || seen[p]) return fail("perm is not a permutation");
        seen[p] = true;
      }
    }
    r.type = in[0]->type; r.shape_known = true; r.shape.clear();
    for (int64_t p : perm) r.shape.push_back(s[p]);
    if (data[0] && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, r.shape);
      auto st = strides_of(s);
      for (int64_t k = 0; k < t.size(); ++k) {
        int64_t rem = k, off = 0;
        for (int d = int(perm.size()) - 1; d >= 0; --d) { off += (rem % r.shape[d]) * st[perm[d]]; rem /= r.shape[d]; }
        t.set(k, data[0]->at_f(off));
        if (!t.is_float()) t.i[k] = data[0]->at_i(off);
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "Expand") {
    if (Status s = need(2); !s) return s;
    if (!known(0) || !data[1]) return Status::ok();
    Shape target(data[1]->i.begin(), data[1]->i.end());
    if (!broadcast_shapes({in[0]->shape, target}, r.shape)) return fail("cannot expand " + shape_str(in[0]->shape) + " to " + shape_str(target));
    r.type = in[0]->type; r.shape_known = true;
    if (data[0] && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, r.shape);
      for (int64_t k = 0; k < t.size(); ++k) {
        int64_t src = broadcast_index(k, r.shape, data[0]->shape);
        if (t.is_float()) t.f[k] = data[0]->f[src]; else t.i[k] = data[0]->i[src];
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "Concat") {
    int64_t axis = g.attr_int(n, "axis", 0);
    for (size_t k = 0; k < in.size(); ++k) if (!known(k)) return Status::ok();
    Shape s = in[0]->shape;
    axis = norm_axis(axis, s.size());
    if (axis < 0 || axis >= int64_t(s.size())) return fail("concat axis out of range for rank " + std::to_string(s.size()));
    for (const ValueInfo *v : in) {
      if (!v || v->shape.size() != s.size()) return fail("concat inputs have different ranks");
      for (size_t d = 0; d < s.size(); ++d)
        if (int64_t(d) != axis && v->shape[d] != s[d]) return fail("concat inputs differ in dim " + std::to_string(d));
    }
    s[axis] = 0;
    for (const ValueInfo *v : in) s[axis] += v->shape[axis];
    r.type = in[0]->type; r.shape = s; r.shape_known = true;
    if (all_data() && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, s);
      int64_t outer = 1; for (int64_t d = 0; d < axis; ++d) outer *= s[d];
      int64_t inner = 1; for (size_t d = axis + 1; d < s.size(); ++d) inner *= s[d];
      int64_t pos = 0;
      for (int64_t o = 0; o < outer; ++o)
        for (const HostTensor *part : data) {
          int64_t chunk = part->shape[axis] * inner;
          for (int64_t c = 0; c < chunk; ++c, ++pos) {
            if (t.is_float()) t.f[pos] = part->at_f(o * chunk + c); else t.i[pos] = part->at_i(o * chunk + c);
          }
        }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "Slice") {
    if (Status s = need(3); !s) return s;
    if (!known(0)) return Status::ok();
    for (size_t k = 1; k < in.size(); ++k) if (in[k] && !data[k]) return Status::ok();
    const Shape &s = in[0]->shape;
    size_t nax = data[1]->size();
    if (data[2]->size() != int64_t(nax) || (in.size() > 3 && in[3] && data[3]->size() != int64_t(nax)) ||
        (in.size() > 4 && in[4] && data[4]->size() != int64_t(nax)))
      return fail("slice starts/ends/axes/steps differ in length");
    std::vector<int64_t> axes(nax), steps(nax, 1);
    for (size_t k = 0; k < nax; ++k) {
      axes[k] = in.size() > 3 && in[3] ? norm_axis(data[3]->at_i(k), s.size()) : int64_t(k);
      if (axes[k] < 0 || axes[k] >= int64_t(s.size())) return fail("slice axis out of range");
    }
    if (in.size() > 4 && in[4]) for (size_t k = 0; k < nax; ++k) steps[k] = data[4]->at_i(k);
    std::vector<int64_t> start(s.size(), 0), step(s.size(), 1);
    Shape out = s;
    for (size_t k = 0; k < nax; ++k) {
      int64_t a = axes[k], dim = s[a], st = steps[k];
      if (st == 0) return fail("slice step 0");
      int64_t b = data[1]->at_i(k), e = data[2]->at_i(k);
      if (b < 0) b += dim;
      if (e < 0) e += dim;
      if (st > 0) { b = std::clamp<int64_t>(b, 0, dim); e = std::clamp<int64_t>(e, 0, dim); out[a] = std::max<int64_t>(0, (e - b + st - 1) / st); }
      else { b = std::clamp<int64_t>(b, 0, dim - 1); e = std::clamp<int64_t>(e, -1, dim - 1); out[a] = std::max<int64_t>(0, (b - e - st - 1) / -st); }
      start[a] = b; step[a] = st;
    }
    r.type = in[0]->type; r.shape = out; r.shape_known = true;
    if (data[0] && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, out);
      auto st = strides_of(s);
      for (int64_t k = 0; k < t.size(); ++k) {
        int64_t rem = k, off = 0;
        for (int d = int(out.size()) - 1; d >= 0; --d) { off += (start[d] + (rem % out[d]) * step[d]) * st[d]; rem /= out[d]; }
        if (t.is_float()) t.f[k] = data[0]->f[off]; else t.i[k] = data[0]->i[off];
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "Gather") {
    if (Status s = need(2); !s) return s;
    if (!known(0) || !known(1)) return Status::ok();
    const Shape &s = in[0]->shape;
    int64_t axis = norm_axis(g.attr_int(n, "axis", 0), s.size());
    if (axis < 0 || axis >= int64_t(s.size())) return fail("gather axis out of range for rank " + std::to_string(s.size()));
    Shape out(s.begin(), s.begin() + axis);
    out.insert(out.end(), in[1]->shape.begin(), in[1]->shape.end());
    out.insert(out.end(), s.begin() + axis + 1, s.end());
    r.type = in[0]->type; r.shape = out; r.shape_known = true;
    if (data[0] && data[1] && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, out);
      int64_t outer = 1; for (int64_t d = 0; d < axis; ++d) outer *= s[d];
      int64_t inner = 1; for (size_t d = axis + 1; d < s.size(); ++d) inner *= s[d];
      int64_t nidx = data[1]->size(), pos = 0;
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t j = 0; j < nidx; ++j) {
          int64_t idx = data[1]->at_i(j);
          if (idx < 0) idx += s[axis];
          if (idx < 0 || idx >= s[axis]) return fail("gather index " + std::to_string(idx) + " out of range for dim " + std::to_string(s[axis]));
          for (int64_t c = 0; c < inner; ++c, ++pos) {
            int64_t src = (o * s[axis] + idx) * inner + c;
            if (t.is_float()) t.f[pos] = data[0]->f[src]; else t.i[pos] = data[0]->i[src];
          }
        }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "GatherND") {
    if (!known(0) || !known(1)) return Status::ok();
    int64_t batch_dims = g.attr_int(n, "batch_dims", 0);
    const Shape &s = in[0]->shape, &is = in[1]->shape;
    if (is.empty() || is.back() < 1 || batch_dims < 0 || batch_dims + is.back() > int64_t(s.size()))
      return fail("GatherND indices " + shape_str(is) + " do not fit data " + shape_str(s));
    int64_t q = is.back();
    Shape out(is.begin(), is.end() - 1);
    out.insert(out.end(), s.begin() + batch_dims + q, s.end());
    r.type = in[0]->type; r.shape = out; r.shape_known = true;
    if (batch_dims != 0) return Status::ok();
    if (data[0] && data[1] && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, out);
      auto st = strides_of(s);
      int64_t inner = 1; for (size_t d = q; d < s.size(); ++d) inner *= s[d];
      int64_t nidx = data[1]->size() / q, pos = 0;
      for (int64_t j = 0; j < nidx; ++j) {
        int64_t off = 0;
        for (int64_t d = 0; d < q; ++d) { int64_t v = data[1]->at_i(j * q + d); if (v < 0) v += s[d]; off += v * st[d]; }
        for (int64_t c = 0; c < inner; ++c, ++pos) { if (t.is_float()) t.f[pos] = data[0]->f[off + c]; else t.i[pos] = data[0]->i[off + c]; }
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "Range") {
    if (Status s = need(3); !s) return s;
    r.type = in[0]->type;
    if (!data[0] || !data[1] || !data[2]) return Status::ok();
    if (data[0]->size() != 1 || data[1]->size() != 1 || data[2]->size() != 1) return fail("Range needs scalar inputs");
    double start = data[0]->at_f(0), limit = data[1]->at_f(0), delta = data[2]->at_f(0);
    if (delta == 0 || !std::isfinite(start) || !std::isfinite(limit) || !std::isfinite(delta))
      return fail("Range with delta 0 or a non-finite bound");
    double steps = std::ceil((limit - start) / delta);
    if (steps > double(kMaxFoldElements)) return fail("Range of " + std::to_string(steps) + " elements is too large to fold");
    int64_t count = std::max<int64_t>(0, int64_t(steps));
    r.shape = {count}; r.shape_known = true;
    HostTensor t = HostTensor::make(r.type, r.shape);
    for (int64_t k = 0; k < count; ++k) t.set(k, start + double(k) * delta);
    r.data = std::move(t);
    return Status::ok();
  }
  if (op == "ConstantOfShape") {
    if (!data[0]) return Status::ok();
    r.shape.assign(data[0]->i.begin(), data[0]->i.end()); r.shape_known = true;
    r.type = kFloat;
    for (int64_t d : r.shape) if (d < 0) return fail("negative dim in shape " + shape_str(r.shape));
    double fill = 0;
    if (const auto *a = g.attr(n, "value")) {
      r.type = a->t().data_type();
      HostTensor v; // read one element through the regular path is overkill; handle common types
      if (a->t().has_raw_data() && !a->t().raw_data().empty()) {
        const std::string &raw = a->t().raw_data();
        if (r.type == kFloat && raw.size() >= 4) { float f; std::memcpy(&f, raw.data(), 4); fill = f; }
        else if (r.type == kInt64 && raw.size() >= 8) { int64_t i; std::memcpy(&i, raw.data(), 8); fill = double(i); }
        else if (r.type == kBool || r.type == kUint8) fill = raw[0];
      } else if (a->t().float_data_size()) fill = a->t().float_data(0);
      else if (a->t().int64_data_size()) fill = double(a->t().int64_data(0));
      else if (a->t().int32_data_size()) fill = a->t().int32_data(0);
    }
    if (!can_fold(r)) return Status::ok();
    HostTensor t = HostTensor::make(r.type, r.shape);
    for (int64_t k = 0; k < t.size(); ++k) t.set(k, fill);
    r.data = std::move(t);
    return Status::ok();
  }
  if (op == "CumSum") {
    if (!known(0)) return Status::ok();
    r.type = in[0]->type; r.shape = in[0]->shape; r.shape_known = true;
    if (data[0] && data[1] && can_fold(r)) {
      const Shape &s = in[0]->shape;
      if (data[1]->size() != 1) return fail("CumSum axis must be a scalar");
      int64_t axis = norm_axis(data[1]->at_i(0), s.size());
      if (axis < 0 || axis >= int64_t(s.size()) || s[axis] == 0) return fail("cumsum axis out of range");
      bool exclusive = g.attr_int(n, "exclusive", 0), reverse = g.attr_int(n, "reverse", 0);
      HostTensor t = HostTensor::make(r.type, s);
      auto st = strides_of(s);
      int64_t len = s[axis];
      for (int64_t k = 0; k < t.size(); ++k) {
        if ((k / st[axis]) % len != 0) continue; // start of a line along axis
        double acc = 0;
        for (int64_t j = 0; j < len; ++j) {
          int64_t jj = reverse ? len - 1 - j : j;
          int64_t idx = k + jj * st[axis];
          double v = data[0]->at_f(idx);
          if (exclusive) { t.set(idx, acc); acc += v; } else { acc += v; t.set(idx, acc); }
        }
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "Trilu") {
    if (!known(0)) return Status::ok();
    r.type = in[0]->type; r.shape = in[0]->shape; r.shape_known = true;
    if (data[0] && (in.size() < 2 || !in[1] || data[1]) && can_fold(r)) {
      if (in[0]->shape.size() < 2) return fail("Trilu needs rank >= 2");
      if (in.size() > 1 && in[1] && data[1]->size() != 1) return fail("Trilu k must be a scalar");
      int64_t kdiag = in.size() > 1 && in[1] ? data[1]->at_i(0) : 0;
      bool upper = g.attr_int(n, "upper", 1);
      const Shape &s = in[0]->shape;
      int64_t rows = s[s.size() - 2], cols = s.back();
      HostTensor t = *data[0];
      for (int64_t k = 0; k < t.size(); ++k) {
        int64_t c = k % cols, rr = (k / cols) % rows;
        bool keep = upper ? c - rr >= kdiag : c - rr <= kdiag;
        if (!keep) t.set(k, 0);
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  // ---------------------------------------------------------------- compute ops (shapes only
  // unless small and constant)
  if (op == "MatMul") {
    if (!known(0) || !known(1)) return Status::ok();
    Shape a = in[0]->shape, b = in[1]->shape;
    if (a.empty() || b.empty()) return fail("MatMul of a scalar");
    bool a1 = a.size() == 1, b1 = b.size() == 1;
    if (a1) a.insert(a.begin(), 1);
    if (b1) b.push_back(1);
    if (a.back() != b[b.size() - 2] && a.back() >= 0 && b[b.size() - 2] >= 0)
      return fail("MatMul contraction dims differ: " + shape_str(in[0]->shape) + " x " + shape_str(in[1]->shape));
    Shape ba(a.begin(), a.end() - 2), bb(b.begin(), b.end() - 2), batch;
    if (!broadcast_shapes({ba, bb}, batch)) return fail("MatMul batch dims cannot be broadcast");
    int64_t M = a[a.size() - 2], N = b.back(), K = a.back();
    if (double(M) * double(N) * double(K) * double(std::max<int64_t>(1, numel(batch))) > double(fold_limit))
      return Status::ok(); // too much work to fold; the shape is all we need
    r.shape = batch;
    if (!a1) r.shape.push_back(M);
    if (!b1) r.shape.push_back(N);
    r.type = in[0]->type; r.shape_known = true;
    if (all_data() && can_fold(r)) {
      HostTensor t = HostTensor::make(r.type, r.shape);
      int64_t nb = numel(batch);
      Shape ta = ba, tb = bb;
      for (int64_t bi = 0; bi < nb; ++bi) {
        int64_t oa = broadcast_index(bi, batch, ba) * M * K, ob = broadcast_index(bi, batch, bb) * K * N;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double acc = 0;
            for (int64_t k = 0; k < K; ++k) acc += data[0]->at_f(oa + i * K + k) * data[1]->at_f(ob + k * N + j);
            t.set((bi * M + i) * N + j, acc);
          }
      }
      r.data = std::move(t);
    }
    return Status::ok();
  }
  if (op == "ReduceMean" || op == "ReduceSum" || op == "ReduceMax") {
    if (!known(0)) return Status::ok();
    const Shape &s = in[0]->shape;
    std::vector<int64_t> axes = g.attr_ints(n, "axes");
    if (in.size() > 1 && in[1]) { if (!data[1]) return Status::ok(); axes.assign(data[1]->i.begin(), data[1]->i.end()); }
    if (axes.empty()) for (size_t d = 0; d < s.size(); ++d) axes.push_back(d);
    for (int64_t &a : axes) a = norm_axis(a, s.size());
    bool keep = g.attr_int(n, "keepdims", 1);
    Shape out;
    for (size_t d = 0; d < s.size(); ++d) {
      bool red = std::find(axes.begin(), axes.end(), int64_t(d)) != axes.end();
      if (!red) out.push_back(s[d]); else if (keep) out.push_back(1);
    }
    r.type = in[0]->type; r.shape = out; r.shape_known = true;
    return Status::ok(); // never folded: only applied to activations in LLaMA graphs
  }
  if (op == "Softmax" || op == "LogSoftmax") {
    if (!known(0)) return Status::ok();
    r.type = in[0]->type; r.shape = in[0]->shape; r.shape_known = true;
    return Status::ok();
  }
  return Status::ok(); // unknown op: shape unknown
}

} // namespace parallora::onnx_import
