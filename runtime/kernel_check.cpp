//===- kernel_check.cpp - operand validation shared by every backend's kernels ---===//
#include "runtime/kernel_check.h"

#include <cmath>
#include <sstream>
#include <variant>

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

bool lora_grad_part(const KernelCall &c, KernelCheck &ck, bool *want_dx, bool *want_dw) {
  const std::string part = c.attr_s("part", "all");
  *want_dx = part == "all" || part == "input";
  *want_dw = part == "all" || part == "weight";
  return ck.expect(*want_dx || *want_dw, "attr part = '" + part + "' (expected all, input or weight)");
}

static const char *dtype_name(plan::ElemType t) {
  switch (t) {
  case plan::ElemType::F32: return "f32";
  case plan::ElemType::I32: return "i32";
  case plan::ElemType::BF16: return "bf16";
  }
  return "?";
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

bool KernelCheck::flt(const Tensor &t, const char *what) {
  if (!t.present()) return expect(false, std::string("operand ") + what + " is absent");
  return expect(t.dtype == plan::ElemType::F32 || t.dtype == plan::ElemType::BF16,
                std::string("operand ") + what + " must be f32 or bf16, got " + dtype_name(t.dtype));
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


// ---------------------------------------------------------------- parse_<kernel>_args

static bool float_operand(KernelCheck &ck, const Tensor &t, const char *what, bool bf16_ok) {
  return bf16_ok ? ck.flt(t, what) : ck.f32(t, what);
}

bool parse_add_args(const KernelCall &c, KernelCheck &ck, bool bf16_ok) {
  if (!ck.operands(2, 2, 1)) return false;
  const Tensor &a = c.in[0], &b = c.in[1], &y = c.out[0];
  return float_operand(ck, a, "a", bf16_ok) && float_operand(ck, b, "b", bf16_ok) &&
         float_operand(ck, y, "y", bf16_ok) && ck.same_shape(b, "b", a, "a") && ck.same_shape(y, "y", a, "a");
}

bool parse_accumulate_args(const KernelCall &c, KernelCheck &ck, bool bf16_ok) {
  if (!ck.operands(1, 1, 1)) return false;
  const Tensor &x = c.in[0], &acc = c.out[0];
  return float_operand(ck, x, "x", bf16_ok) && float_operand(ck, acc, "acc", bf16_ok) &&
         ck.same_shape(acc, "acc", x, "x");
}

bool parse_swiglu_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok) {
  if (!backward) {
    if (!ck.operands(2, 2, 1)) return false;
    const Tensor &g = c.in[0], &u = c.in[1], &y = c.out[0];
    return float_operand(ck, g, "gate", bf16_ok) && float_operand(ck, u, "up", bf16_ok) &&
           float_operand(ck, y, "y", bf16_ok) && ck.same_shape(u, "up", g, "gate") &&
           ck.same_shape(y, "y", g, "gate");
  }
  if (!ck.operands(3, 3, 2)) return false;
  const Tensor &dy = c.in[0], &g = c.in[1], &u = c.in[2], &dg = c.out[0], &du = c.out[1];
  return float_operand(ck, dy, "dy", bf16_ok) && float_operand(ck, g, "gate", bf16_ok) &&
         float_operand(ck, u, "up", bf16_ok) && float_operand(ck, dg, "dgate", bf16_ok) &&
         float_operand(ck, du, "dup", bf16_ok) && ck.same_shape(u, "up", g, "gate") &&
         ck.same_shape(dy, "dy", g, "gate") && ck.same_shape(dg, "dgate", g, "gate") &&
         ck.same_shape(du, "dup", g, "gate");
}

bool parse_rms_norm_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok,
                         RmsNormArgs *out) {
  *out = RmsNormArgs();
  if (!ck.operands(backward ? 3 : 2, backward ? 3 : 2, 1) || !ck.num_attr("eps")) return false;
  const Tensor &x = c.in[backward ? 1 : 0], &w = c.in[backward ? 2 : 1], &y = c.out[0];
  if (backward && !float_operand(ck, c.in[0], "dy", bf16_ok)) return false;
  if (!float_operand(ck, x, "x", bf16_ok) || !float_operand(ck, w, "w", bf16_ok) ||
      !float_operand(ck, y, backward ? "dx" : "y", bf16_ok) || !ck.rank(w, "w", 1))
    return false;
  out->D = w.dim(0);
  if (!ck.rows_of(x, "x", out->D, &out->M)) return false;
  if (backward ? !ck.same_shape(c.in[0], "dy", x, "x") || !ck.same_shape(y, "dx", x, "x")
               : !ck.same_shape(y, "y", x, "x"))
    return false;
  out->eps = c.attr_f("eps", 0.0);
  return true;
}

bool parse_attention_qkv(const KernelCall &c, KernelCheck &ck, const Tensor &q, const Tensor &k, const Tensor &v,
                         bool bf16_ok, AttentionArgs *out) {
  *out = AttentionArgs();
  if (!float_operand(ck, q, "q", bf16_ok) || !float_operand(ck, k, "k", bf16_ok) ||
      !float_operand(ck, v, "v", bf16_ok) || !ck.rank(q, "q", 4) || !ck.rank(k, "k", 4) || !ck.num_attr("scale") ||
      !ck.num_attr("causal"))
    return false;
  AttentionArgs &d = *out;
  d.B = q.dim(0);
  d.Hq = q.dim(1);
  d.T = q.dim(2);
  d.Dh = q.dim(3);
  d.Hkv = k.dim(1);
  d.S = k.dim(2);
  if (!ck.positive(d.Dh, "head dim Dh") || !ck.positive(d.Hkv, "k dim 1 (Hkv)") ||
      !ck.shape(k, "k", {d.B, d.Hkv, d.S, d.Dh}) || !ck.same_shape(v, "v", k, "k") ||
      !ck.expect(d.Hq % d.Hkv == 0, "query heads Hq = " + std::to_string(d.Hq) +
                                        " is not a multiple of kv heads Hkv = " + std::to_string(d.Hkv)))
    return false;
  d.group = d.Hq / d.Hkv;
  d.scale = float(c.attr_f("scale", 0.0));
  d.causal = c.attr_i("causal", 0) != 0;
  return !d.causal || ck.expect(d.T == d.S, "causal attention needs T == S, got T = " + std::to_string(d.T) +
                                                ", S = " + std::to_string(d.S));
}

bool parse_attention_segments(KernelCheck &ck, const Tensor &seg, const AttentionArgs &d) {
  return ck.i32(seg, "segment_ids") && ck.expect(d.T == d.S, "segment_ids need self-attention (T == S), got T = " +
                                                                  std::to_string(d.T) + ", S = " + std::to_string(d.S)) &&
         ck.shape(seg, "segment_ids", {d.B, d.T});
}

std::string rope_position_error(int64_t p, int64_t b, int64_t t, int64_t T) {
  return "position_ids value " + std::to_string(p) + " at (b=" + std::to_string(b) + ", t=" + std::to_string(t) +
         ") is outside [0, " + std::to_string(T) + ") (positions restart at 0 for each packed example, so they are "
         "below the sequence length)";
}

bool parse_rope_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok, RopeArgs *out) {
  *out = RopeArgs();
  if (!ck.operands(1, 2, 1)) return false;
  const Tensor &x = c.in[0], &y = c.out[0];
  const char *xn = backward ? "dy" : "x", *yn = backward ? "dx" : "y";
  if (!float_operand(ck, x, xn, bf16_ok) || !float_operand(ck, y, yn, bf16_ok) || !ck.rank(x, xn, 4) ||
      !ck.same_shape(y, yn, x, xn))
    return false;
  *out = RopeArgs{x.dim(0), x.dim(1), x.dim(2), x.dim(3), c.in.size() == 2};
  if (out->positions &&
      (!ck.i32(c.in[1], "position_ids") || !ck.shape(c.in[1], "position_ids", {out->B, out->T})))
    return false;
  return ck.positive(out->Dh, "head dim Dh") &&
         ck.expect(out->Dh % 2 == 0, "head dim Dh = " + std::to_string(out->Dh) + " must be even");
}

bool parse_embedding_args(const KernelCall &c, KernelCheck &ck, bool bf16_ok, EmbeddingArgs *out) {
  *out = EmbeddingArgs();
  if (!ck.operands(2, 2, 1)) return false;
  const Tensor &ids = c.in[0], &table = c.in[1], &y = c.out[0];
  if (!ck.i32(ids, "ids") || !ck.rank(ids, "ids", 2) || !float_operand(ck, table, "table", bf16_ok) ||
      !ck.rank(table, "table", 2) || !float_operand(ck, y, "y", bf16_ok))
    return false;
  out->B = ids.dim(0);
  out->T = ids.dim(1);
  out->V = table.dim(0);
  out->D = table.dim(1);
  if (!ck.positive(out->D, "table dim 1 (D)") || !ck.shape(y, "y", {out->B, out->T, out->D})) return false;
  return parse_vocab_shard(c, ck, out->V, &out->vocab);
}

bool parse_cross_entropy_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok,
                              CrossEntropyArgs *out) {
  *out = CrossEntropyArgs();
  if (!ck.operands(2, 3, 1)) return false;
  const Tensor &logits = c.in[0], &labels = c.in[1], &y = c.out[0];
  if (c.in.size() > 2 && c.in[2].present()) {
    if (!ck.i32(c.in[2], "denominator") || !ck.shape(c.in[2], "denominator", {2})) return false;
    out->denominator = c.in[2].i32();
  }
  // The vocab_group attr: this rank holds logit columns [lo, lo + V').
  if (!parse_vocab_shard(c, ck, logits.rank() == 3 ? logits.dim(2) : 0, &out->vocab)) return false;
  if (!float_operand(ck, logits, "logits", bf16_ok) || !ck.rank(logits, "logits", 3) ||
      !ck.i32(labels, "labels") || !ck.num_attr("shift"))
    return false;
  out->B = logits.dim(0);
  out->T = logits.dim(1);
  out->V = logits.dim(2);
  out->shift = c.attr_i("shift", 0);
  out->ignore = c.attr_i("ignore_index", -100);
  if (!ck.positive(out->V, "logits dim 2 (V)") || !ck.shape(labels, "labels", {out->B, out->T}) ||
      !ck.expect(out->shift == 0 || out->shift == 1,
                 "attr shift must be 0 or 1, got " + std::to_string(out->shift)))
    return false;
  if (backward)
    return float_operand(ck, y, "dlogits", bf16_ok) && ck.same_shape(y, "dlogits", logits, "logits");
  return float_operand(ck, y, "loss", bf16_ok) &&
         ck.expect(y.numel() == 1, "loss has shape " + shape_str(y.shape) + ", expected a scalar");
}

double ce_divisor(const CrossEntropyArgs &a, int64_t count) {
  if (a.denominator && a.denominator[0] > 0 && a.denominator[1] > 0)
    return double(a.denominator[0]) / double(a.denominator[1]);
  return double(count);
}

std::string ce_label_error(int64_t label, int64_t b, int64_t t, const CrossEntropyArgs &a) {
  return "label " + std::to_string(label) + " at position (b=" + std::to_string(b) + ", t=" +
         std::to_string(t) + ") is outside the vocabulary [0, " + std::to_string(a.vocab.vocab) +
         ") and is not ignore_index " + std::to_string(a.ignore);
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

bool parse_vocab_shard(const KernelCall &c, KernelCheck &ck, int64_t shard_rows, VocabShard *out) {
  *out = VocabShard();
  out->vocab = shard_rows;
  if (!c.has_attr("vocab_group")) return true;
  if (!ck.expect(std::holds_alternative<std::string>(c.instr->attrs.at("vocab_group")),
                 "attr vocab_group must be a string (a group of mesh axes)"))
    return false;
  out->group = c.attr_s("vocab_group", "");
  StatusOr<GroupInfo> gi = resolve_group(c.comm, out->group);
  if (!ck.expect(gi.is_ok(), "attr vocab_group: " + gi.message())) return false;
  out->sharded = gi->size > 1;
  out->lo = int64_t(gi->index) * shard_rows;
  out->vocab = int64_t(gi->size) * shard_rows;
  return true;
}

bool parse_rope_params(const KernelCall &c, KernelCheck &ck, RopeParams *out) {
  *out = RopeParams();
  if (!ck.num_attr("theta")) return false;
  out->theta = c.attr_f("theta", 0.0);
  if (!ck.expect(std::isfinite(out->theta) && out->theta > 0,
                 "attr theta must be positive, got " + std::to_string(out->theta)))
    return false;
  const std::string type = c.attr_s("rope_type", "default");
  out->llama3 = type == "llama3";
  if (!ck.expect(out->llama3 || type == "default" || type.empty(),
                 "unsupported rope_type '" + type + "' (expected \"default\" or \"llama3\")"))
    return false;
  if (!out->llama3) return true;
  if (!ck.num_attr("factor") || !ck.num_attr("low_freq_factor") || !ck.num_attr("high_freq_factor") ||
      !ck.num_attr("original_max_position_embeddings"))
    return false;
  out->factor = c.attr_f("factor", 0);
  out->low = c.attr_f("low_freq_factor", 0);
  out->high = c.attr_f("high_freq_factor", 0);
  out->old_ctx = double(c.attr_i("original_max_position_embeddings", 0));
  return ck.expect(out->factor > 0 && out->low > 0 && out->high > 0 && out->high != out->low && out->old_ctx > 0,
                   "invalid llama3 rope scaling: factor=" + std::to_string(out->factor) +
                       " low_freq_factor=" + std::to_string(out->low) +
                       " high_freq_factor=" + std::to_string(out->high) +
                       " original_max_position_embeddings=" + std::to_string(out->old_ctx));
}

void rope_cos_sin(const RopeParams &p, int64_t T, int64_t Dh, float *cos_out, float *sin_out) {
  const int64_t half = Dh / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const float theta_f = float(p.theta), dh_f = float(Dh);
  for (int64_t i = 0; i < half; ++i) inv[i] = 1.0f / std::pow(theta_f, float(2 * i) / dh_f);
  if (p.llama3) {
    // Python scalars (double) meet float32 tensors: torch casts the scalar to float.
    const double low_wavelen = p.old_ctx / p.low, high_wavelen = p.old_ctx / p.high;
    const float two_pi_f = float(2.0 * M_PI), factor_f = float(p.factor), low_f = float(p.low),
                range_f = float(p.high - p.low), old_ctx_f = float(p.old_ctx),
                low_wavelen_f = float(low_wavelen), high_wavelen_f = float(high_wavelen);
    for (int64_t i = 0; i < half; ++i) {
      const float f = inv[i];
      const float wavelen = (1.0f / f) * two_pi_f;
      const float f_llama = wavelen > low_wavelen_f ? f / factor_f : f;
      const float smooth = ((1.0f / wavelen) * old_ctx_f - low_f) / range_f;
      const float smoothed = (1.0f - smooth) * f_llama / factor_f + smooth * f_llama;
      const bool medium = !(wavelen < high_wavelen_f) && !(wavelen > low_wavelen_f);
      inv[i] = medium ? smoothed : f_llama;
    }
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(t) * inv[i];
      cos_out[t * half + i] = std::cos(angle);
      sin_out[t * half + i] = std::sin(angle);
    }
}

Status finish_grad_norm(KernelCall &c, const AdamwArgs &args, double local_sumsq, double *norm) {
  if (args.group.size > 1) {
    float local = float(local_sumsq);  // host memory (the CUDA backend's collective is host-staged)
    if (Status s = c.comm->all_reduce(args.norm_group, &local, 1, ReduceOp::Sum); !s) return s;
    local_sumsq = double(local);
  }
  *norm = std::sqrt(local_sumsq);
  c.step->grad_norm = *norm;
  c.step->grad_norm_finite = std::isfinite(*norm);
  return Status::ok();
}

bool parse_transpose_perm(const KernelCall &c, KernelCheck &ck, const Tensor &x, const Tensor &y,
                          std::vector<int64_t> *perm) {
  *perm = c.attr_ints("perm");
  const int R = x.rank();
  std::vector<bool> seen(size_t(R), false);
  bool ok = int(perm->size()) == R;
  for (size_t i = 0; ok && i < perm->size(); ++i) {
    ok = (*perm)[i] >= 0 && (*perm)[i] < R && !seen[size_t((*perm)[i])];
    if (ok) seen[size_t((*perm)[i])] = true;
  }
  if (!ck.expect(ok, "attr perm " + shape_str(*perm) + " is not a permutation of the " + std::to_string(R) +
                         " dims of x " + shape_str(x.shape)))
    return false;
  std::vector<int64_t> yshape(static_cast<size_t>(R));
  for (int i = 0; i < R; ++i) yshape[i] = x.shape[size_t((*perm)[i])];
  return ck.shape(y, "y", yshape);
}

} // namespace parallora::rt
