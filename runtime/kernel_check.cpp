//===- kernel_check.cpp - operand validation shared by every backend's kernels ---===//
#include "runtime/kernel_check.h"

#include <sstream>

namespace parallora::rt {

std::string shape_str(const std::vector<int64_t> &shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

Status kernel_error(const KernelCall &call, const char *kernel, const std::string &msg) {
  std::string loc = call.instr && !call.instr->loc.empty() ? call.instr->loc : "?";
  return Status::error(std::string(kernel) + " (" + loc + "): " + msg);
}

bool KernelCheck::set(const std::string &msg) {
  if (status_.is_ok()) status_ = kernel_error(call_, kernel_, msg);
  return false;
}

bool KernelCheck::expect(bool cond, const std::string &msg) { return cond || set(msg); }

bool KernelCheck::operands(size_t nin_min, size_t nin_max, size_t nout, bool allow_accumulate) {
  size_t nin = call_.in.size();
  if (nin < nin_min || nin > nin_max) {
    std::string want = nin_min == nin_max
                           ? std::to_string(nin_min)
                           : std::to_string(nin_min) + " to " + std::to_string(nin_max);
    return set("expected " + want + " inputs, got " + std::to_string(nin));
  }
  if (call_.out.size() != nout)
    return set("expected " + std::to_string(nout) + " outputs, got " +
               std::to_string(call_.out.size()));
  if (!allow_accumulate && call_.attr_i("accumulate", 0) != 0)
    return set("attr accumulate = " + std::to_string(call_.attr_i("accumulate", 0)) +
               " is not supported by this kernel");
  return true;
}

static const char *dtype_name(plan::ElemType t) {
  return t == plan::ElemType::F32 ? "f32" : t == plan::ElemType::I32 ? "i32" : "?";
}

static bool typed(KernelCheck &ck, const Tensor &t, const char *what, plan::ElemType want) {
  if (!t.present()) return ck.expect(false, std::string("operand ") + what + " is absent");
  return ck.expect(t.dtype == want, std::string("operand ") + what + " must be " +
                                        dtype_name(want) + ", got " + dtype_name(t.dtype));
}

bool KernelCheck::f32(const Tensor &t, const char *what) {
  return typed(*this, t, what, plan::ElemType::F32);
}
bool KernelCheck::i32(const Tensor &t, const char *what) {
  return typed(*this, t, what, plan::ElemType::I32);
}

bool KernelCheck::rank(const Tensor &t, const char *what, int r) {
  if (t.rank() == r) return true;
  return set(std::string(what) + " must have rank " + std::to_string(r) + ", got shape " +
             shape_str(t.shape));
}

bool KernelCheck::shape(const Tensor &t, const char *what, const std::vector<int64_t> &expected) {
  if (t.shape == expected) return true;
  return set(std::string(what) + " has shape " + shape_str(t.shape) + ", expected " +
             shape_str(expected));
}

bool KernelCheck::rows_of(const Tensor &t, const char *what, int64_t d, int64_t *rows) {
  if (t.rank() < 1)
    return set(std::string(what) + " must have rank >= 1, got shape " + shape_str(t.shape));
  if (d <= 0)
    return set(std::string(what) + ": last dim must be positive, got shape " +
               shape_str(t.shape));
  if (t.dim(-1) != d)
    return set(std::string(what) + " has shape " + shape_str(t.shape) + ", expected last dim " +
               std::to_string(d));
  *rows = t.numel() / d;
  return true;
}

bool KernelCheck::rows_eq(const Tensor &t, const char *what, int64_t d, int64_t rows) {
  int64_t r = 0;
  if (!rows_of(t, what, d, &r)) return false;
  if (r == rows) return true;
  return set(std::string(what) + " has shape " + shape_str(t.shape) + " (" + std::to_string(r) +
             " rows of " + std::to_string(d) + "), expected " + std::to_string(rows) + " rows");
}

bool KernelCheck::same_shape(const Tensor &t, const char *what, const Tensor &ref,
                       const char *ref_what) {
  if (t.shape == ref.shape) return true;
  return set(std::string(what) + " has shape " + shape_str(t.shape) + ", expected the shape of " +
             ref_what + " " + shape_str(ref.shape));
}

bool KernelCheck::num_attr(const char *name) {
  const plan::Instr *in = call_.instr;
  if (in) {
    auto it = in->attrs.find(name);
    if (it != in->attrs.end()) {
      if (std::holds_alternative<int64_t>(it->second) || std::holds_alternative<double>(it->second))
        return true;
      return set(std::string("attr ") + name + " must be a number");
    }
  }
  return set(std::string("missing required attr ") + name);
}

bool KernelCheck::positive(int64_t v, const char *what) {
  if (v > 0) return true;
  return set(std::string(what) + " must be positive, got " + std::to_string(v));
}


bool parse_adamw_args(KernelCall &c, KernelCheck &ck, AdamwArgs *out) {
  if (!ck.num_attr("n") || !ck.num_attr("beta1") || !ck.num_attr("beta2") ||
      !ck.num_attr("eps"))
    return false;
  const int64_t n = c.attr_i("n", -1);
  if (!ck.expect(n >= 0, "attr n must be a non-negative integer") ||
      !ck.operands(size_t(4 * n), size_t(4 * n), 0))
    return false;
  if (!ck.expect(c.step != nullptr, "no StepState supplied (the runtime must pass one)"))
    return false;
  StepState &st = *c.step;
  if (!ck.expect(st.step >= 1, "StepState.step must be >= 1, got " + std::to_string(st.step)))
    return false;
  for (int64_t i = 0; i < n; ++i) {
    const Tensor &p = c.in[size_t(i)], &g = c.in[size_t(n + i)], &m = c.in[size_t(2 * n + i)],
                 &v = c.in[size_t(3 * n + i)];
    const std::string si = std::to_string(i);
    const std::string pn = "p_" + si, gn = "g_" + si, mn = "m_" + si, vn = "v_" + si;
    if (!ck.f32(p, pn.c_str()) || !ck.f32(g, gn.c_str()) || !ck.f32(m, mn.c_str()) ||
        !ck.f32(v, vn.c_str()) || !ck.same_shape(g, gn.c_str(), p, pn.c_str()) ||
        !ck.same_shape(m, mn.c_str(), p, pn.c_str()) ||
        !ck.same_shape(v, vn.c_str(), p, pn.c_str()))
      return false;
  }
  const double beta1 = c.attr_f("beta1", 0.9), beta2 = c.attr_f("beta2", 0.999),
               eps = c.attr_f("eps", 1e-8), wd = c.attr_f("weight_decay", 0.0),
               max_norm = c.attr_f("max_grad_norm", 0.0);
  const bool zero_grads = c.attr_i("zero_grads", 0) != 0;

  // Sharded norm: the group and the replication divisors.
  std::string norm_group;
  GroupInfo gi;
  if (c.has_attr("norm_group")) {
    if (!ck.expect(std::holds_alternative<std::string>(c.instr->attrs.at("norm_group")),
                   "attr norm_group must be a string (a group of mesh axes)"))
      return false;
    norm_group = c.attr_s("norm_group", "");
    StatusOr<GroupInfo> r = resolve_group(c.comm, norm_group);
    if (!r) return ck.expect(false, "attr norm_group: " + r.message());
    gi = *r;
  }
  std::vector<int64_t> divisors;
  if (c.has_attr("norm_divisors")) {
    divisors = c.attr_ints("norm_divisors");
    if (!ck.expect(int64_t(divisors.size()) == n,
                   "attr norm_divisors has " + std::to_string(divisors.size()) +
                       " entries, expected n = " + std::to_string(n)))
      return false;
    for (int64_t i = 0; i < n; ++i)
      if (!ck.expect(divisors[size_t(i)] >= 1 && divisors[size_t(i)] <= gi.size,
                     "norm_divisors[" + std::to_string(i) + "] = " +
                         std::to_string(divisors[size_t(i)]) + " is outside [1, " +
                         std::to_string(gi.size) + "] (the ranks of norm_group '" +
                         norm_group + "')"))
        return false;
  }
  out->n = n;
  out->beta1 = beta1;
  out->beta2 = beta2;
  out->eps = eps;
  out->weight_decay = wd;
  out->max_grad_norm = max_norm;
  out->zero_grads = zero_grads;
  out->norm_group = norm_group;
  out->group = gi;
  out->divisors = std::move(divisors);
  return true;
}

} // namespace parallora::rt
