//===- cross_entropy.cpp - cross_entropy_fwd, cross_entropy_bwd -----------===//
//
// Row-wise log-sum-exp with max subtraction and a double sum; per-row losses are summed
// serially in row order (deterministic). With shift = 1 (HF's causal-LM loss), logits row
// (b, t) predicts labels (b, t+1) for t = 0..T-2; row (b, T-1) predicts nothing.
//
//===----------------------------------------------------------------------===//
#include <cmath>
#include <vector>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

namespace {

struct CeSetup {
  int64_t B = 0, T = 0, V = 0, shift = 0, ignore = -100;
  // target[row] for each logits row (b*T + t): the label, or -1 when the row does not count.
  std::vector<int32_t> target;
  int64_t count = 0;
};

bool ce_setup(const KernelCall &c, Check &ck, const Tensor &logits, const Tensor &labels,
              CeSetup *cs) {
  if (!ck.f32(logits, "logits") || !ck.rank(logits, "logits", 3) || !ck.i32(labels, "labels") ||
      !ck.num_attr("shift"))
    return false;
  cs->B = logits.dim(0);
  cs->T = logits.dim(1);
  cs->V = logits.dim(2);
  cs->shift = c.attr_i("shift", 0);
  cs->ignore = c.attr_i("ignore_index", -100);
  if (!ck.positive(cs->V, "logits dim 2 (V)") || !ck.shape(labels, "labels", {cs->B, cs->T}) ||
      !ck.expect(cs->shift == 0 || cs->shift == 1,
                 "attr shift must be 0 or 1, got " + std::to_string(cs->shift)))
    return false;
  const int64_t B = cs->B, T = cs->T, V = cs->V, sh = cs->shift;
  const int32_t *lab = labels.i32();
  cs->target.assign(size_t(B * T), -1);
  cs->count = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + sh < T; ++t) {
      const int64_t l = lab[b * T + t + sh];
      if (l == cs->ignore) continue;
      if (l < 0 || l >= V)
        return ck.expect(false, "label " + std::to_string(l) + " at position (b=" +
                                    std::to_string(b) + ", t=" + std::to_string(t + sh) +
                                    ") is outside the vocabulary [0, " + std::to_string(V) +
                                    ") and is not ignore_index " + std::to_string(cs->ignore));
      cs->target[size_t(b * T + t)] = int32_t(l);
      ++cs->count;
    }
  return true;
}

// Max and sum of exp(x - max) (double) of one row.
inline void row_stats(const float *x, int64_t V, float *m_out, double *sum_out) {
  float m = x[0];
  for (int64_t j = 1; j < V; ++j) m = x[j] > m ? x[j] : m;
  double sum = 0.0;
  for (int64_t j = 0; j < V; ++j) sum += double(std::exp(x[j] - m));
  *m_out = m;
  *sum_out = sum;
}

} // namespace

// logits (B,T,V), labels (B,T) i32 -> loss () = mean over counted rows of lse - logit[label].
Status cross_entropy_fwd(KernelCall &c) {
  Check ck(c, "cross_entropy_fwd");
  if (!ck.operands(2, 2, 1)) return ck.status();
  const Tensor &logits = c.in[0], &labels = c.in[1], &loss = c.out[0];
  CeSetup cs;
  if (!ce_setup(c, ck, logits, labels, &cs) || !ck.f32(loss, "loss") ||
      !ck.expect(loss.numel() == 1, "loss has shape " + detail::shape_str(loss.shape) +
                                        ", expected a scalar"))
    return ck.status();
  const int64_t rows = cs.B * cs.T, V = cs.V;
  const float *lp = logits.f32();
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
#pragma omp parallel for schedule(static) if (rows * V >= detail::kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t l = cs.target[size_t(r)];
    if (l < 0) continue;
    const float *x = lp + r * V;
    float m;
    double sum;
    row_stats(x, V, &m, &sum);
    row_loss[size_t(r)] = double(m) + std::log(sum) - double(x[l]);
  }
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) total += row_loss[size_t(r)];
  loss.f32()[0] = cs.count > 0 ? float(total / double(cs.count)) : 0.0f;
  return Status::ok();
}

// logits, labels -> dlogits (B,T,V) = grad_scale * (softmax - onehot) / count at counted rows,
// 0 elsewhere.
Status cross_entropy_bwd(KernelCall &c) {
  Check ck(c, "cross_entropy_bwd");
  if (!ck.operands(2, 2, 1)) return ck.status();
  const Tensor &logits = c.in[0], &labels = c.in[1], &dl = c.out[0];
  CeSetup cs;
  if (!ce_setup(c, ck, logits, labels, &cs) || !ck.f32(dl, "dlogits") ||
      !ck.same_shape(dl, "dlogits", logits, "logits"))
    return ck.status();
  const int64_t rows = cs.B * cs.T, V = cs.V;
  const double coef = cs.count > 0 ? c.attr_f("grad_scale", 1.0) / double(cs.count) : 0.0;
  const float *lp = logits.f32();
  float *dp = dl.f32();
#pragma omp parallel for schedule(static) if (rows * V >= detail::kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t l = cs.target[size_t(r)];
    float *d = dp + r * V;
    if (l < 0) {
      for (int64_t j = 0; j < V; ++j) d[j] = 0.0f;
      continue;
    }
    const float *x = lp + r * V;
    float m;
    double sum;
    row_stats(x, V, &m, &sum);
    const double inv = 1.0 / sum;
    for (int64_t j = 0; j < V; ++j) {
      const double p = double(std::exp(x[j] - m)) * inv;
      d[j] = float(coef * (j == l ? p - 1.0 : p));
    }
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
