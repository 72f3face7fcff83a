//===- cross_entropy.cpp - cross_entropy_fwd, cross_entropy_bwd -----------===//
//
// Row-wise log-sum-exp with max subtraction and a double sum; per-row losses are summed
// serially in row order (deterministic). With shift = 1 (HF's causal-LM loss), logits row
// (b, t) predicts labels (b, t+1) for t = 0..T-2; row (b, T-1) predicts nothing.
//
// With attr vocab_group (Megatron's vocabulary-parallel cross entropy) the logits are shard c
// of the vocabulary (columns [c*V', (c+1)*V')). The row statistics are combined over the group
// with exactly these messages, over all N = B*T rows so every rank sends the same counts:
//   fwd: all_reduce(max) of N row maxima, then all_reduce(sum) of 2N floats (N sums of
//        exp(x - max), N target logits: 0 where the target is in another shard)
//   bwd: all_reduce(max) of N, then all_reduce(sum) of N sums of exp
// Uncounted rows (ignored, or the last position with shift) send 0s. A group of one rank runs
// the unsharded code.
//
//===----------------------------------------------------------------------===//
#include <cmath>
#include <string>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"
#include "runtime/cpu/vexp.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

namespace {

struct CeSetup : CrossEntropyArgs {
  // target[row] for each logits row (b*T + t): the label, or -1 when the row does not count.
  std::vector<int32_t> target;
  int64_t count = 0;
};

// Operands and attrs (parse_cross_entropy_args, shared with the CUDA kernels), then each row's
// target; a label outside the whole vocabulary (vocab.vocab) is an error (ce_label_error).
bool ce_setup(const KernelCall &c, Check &ck, bool backward, CeSetup *cs) {
  if (!parse_cross_entropy_args(c, ck, backward, /*bf16_ok=*/false, cs)) return false;
  const Tensor &labels = c.in[1];
  const int64_t B = cs->B, T = cs->T, V = cs->vocab.vocab, sh = cs->shift;
  const int32_t *lab = labels.i32();
  cs->target.assign(size_t(B * T), -1);
  cs->count = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + sh < T; ++t) {
      const int64_t l = lab[b * T + t + sh];
      if (l == cs->ignore) continue;
      if (l < 0 || l >= V) return ck.expect(false, ce_label_error(l, b, t + sh, *cs));
      cs->target[size_t(b * T + t)] = int32_t(l);
      ++cs->count;
    }
  return true;
}

// Max of one row (V >= 1).
inline float row_max(const float *x, int64_t V) {
  float m = x[0];
  for (int64_t j = 1; j < V; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// Sum of exp(x - m) over one row (or one shard's columns of it), in double.
// The exps are vexp's (vexp.h), computed a chunk at a time (vectorised), summed in order.
inline double sum_exp(const float *x, int64_t V, float m) {
  constexpr int64_t kChunk = 256;
  float e[kChunk];
  double sum = 0.0;
  for (int64_t j0 = 0; j0 < V; j0 += kChunk) {
    const int64_t n = V - j0 < kChunk ? V - j0 : kChunk;
    detail::exp_shifted(x + j0, m, e, n);
    for (int64_t j = 0; j < n; ++j) sum += double(e[j]);
  }
  return sum;
}

// Max and sum of exp(x - max) (double) of one row.
inline void row_stats(const float *x, int64_t V, float *m_out, double *sum_out) {
  *m_out = row_max(x, V);
  *sum_out = sum_exp(x, V, *m_out);
}

// dlogits (rows, V) = coef * (softmax - onehot(target - lo)) at counted rows, 0 elsewhere (lo:
// the shard's first column; a target outside [lo, lo + V) has no onehot here). stats(r, x, &m,
// &inv) gives row r's max m and inv = 1 / its sum of exp(x - m).
template <class Stats>
void grad_rows(const CeSetup &cs, const float *lp, float *dp, int64_t V, int64_t lo, double coef, Stats &&stats) {
  const int64_t rows = cs.B * cs.T;
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
    double inv;
    stats(r, x, &m, &inv);
    const int64_t t = int64_t(l) - lo;
    detail::exp_shifted(x, m, d, V);  // d may be x (in place): element j is read, then written
    for (int64_t j = 0; j < V; ++j) {
      const double p = double(d[j]) * inv;
      d[j] = float(coef * (j == t ? p - 1.0 : p));
    }
  }
}

// Per-row maxima of the shard (0 for uncounted rows), all-reduced (max) over the group.
Status global_row_max(KernelCall &c, const CeSetup &cs, const VocabShard &vs,
                      std::vector<float> *mx) {
  const int64_t rows = cs.B * cs.T, V = cs.V;
  const float *lp = c.in[0].f32();
  mx->assign(size_t(rows), 0.0f);
  float *m = mx->data();
#pragma omp parallel for schedule(static) if (rows * V >= detail::kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    if (cs.target[size_t(r)] < 0) continue;
    m[r] = row_max(lp + r * V, V);
  }
  return c.comm->all_reduce(vs.group, m, rows, ReduceOp::Max);
}

Status sharded_fwd(KernelCall &c, Check &ck, const CeSetup &cs, const VocabShard &vs) {
  const int64_t rows = cs.B * cs.T, V = cs.V;
  const float *lp = c.in[0].f32();
  std::vector<float> mx;
  if (Status s = global_row_max(c, cs, vs, &mx); !s) return ck.error(s.message());
  // [0, rows): sums of exp; [rows, 2 rows): target logits.
  std::vector<float> red(size_t(2 * rows), 0.0f);
#pragma omp parallel for schedule(static) if (rows * V >= detail::kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t l = cs.target[size_t(r)];
    if (l < 0) continue;
    const float *x = lp + r * V;
    red[size_t(r)] = float(sum_exp(x, V, mx[size_t(r)]));
    const int64_t t = int64_t(l) - vs.lo;
    if (t >= 0 && t < V) red[size_t(rows + r)] = x[t];
  }
  if (Status s = c.comm->all_reduce(vs.group, red.data(), 2 * rows, ReduceOp::Sum); !s)
    return ck.error(s.message());
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    if (cs.target[size_t(r)] < 0) continue;
    total += double(mx[size_t(r)]) + std::log(double(red[size_t(r)])) -
             double(red[size_t(rows + r)]);
  }
  c.out[0].f32()[0] = cs.count > 0 ? float(total / double(cs.count)) : 0.0f;
  return Status::ok();
}

Status sharded_bwd(KernelCall &c, Check &ck, const CeSetup &cs, const VocabShard &vs) {
  const int64_t rows = cs.B * cs.T, V = cs.V;
  const double coef = cs.count > 0 ? c.attr_f("grad_scale", 1.0) / double(cs.count) : 0.0;
  const float *lp = c.in[0].f32();
  float *dp = c.out[0].f32();
  std::vector<float> mx;
  if (Status s = global_row_max(c, cs, vs, &mx); !s) return ck.error(s.message());
  std::vector<float> sums(size_t(rows), 0.0f);
#pragma omp parallel for schedule(static) if (rows * V >= detail::kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    if (cs.target[size_t(r)] < 0) continue;
    sums[size_t(r)] = float(sum_exp(lp + r * V, V, mx[size_t(r)]));
  }
  if (Status s = c.comm->all_reduce(vs.group, sums.data(), rows, ReduceOp::Sum); !s)
    return ck.error(s.message());
  grad_rows(cs, lp, dp, V, vs.lo, coef, [&](int64_t r, const float *, float *m, double *inv) {
    *m = mx[size_t(r)];
    *inv = 1.0 / double(sums[size_t(r)]);
  });
  return Status::ok();
}

} // namespace

// logits (B,T,V), labels (B,T) i32 -> loss () = mean over counted rows of lse - logit[label].
Status cross_entropy_fwd(KernelCall &c) {
  Check ck(c, "cross_entropy_fwd");
  CeSetup cs;
  if (!ce_setup(c, ck, /*backward=*/false, &cs)) return ck.status();
  const Tensor &logits = c.in[0], &loss = c.out[0];
  if (cs.vocab.sharded) return sharded_fwd(c, ck, cs, cs.vocab);
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
  CeSetup cs;
  if (!ce_setup(c, ck, /*backward=*/true, &cs)) return ck.status();
  const Tensor &logits = c.in[0], &dl = c.out[0];
  if (cs.vocab.sharded) return sharded_bwd(c, ck, cs, cs.vocab);
  const int64_t V = cs.V;
  const double coef = cs.count > 0 ? c.attr_f("grad_scale", 1.0) / double(cs.count) : 0.0;
  const float *lp = logits.f32();
  float *dp = dl.f32();
  grad_rows(cs, lp, dp, V, /*lo=*/0, coef, [V](int64_t, const float *x, float *m, double *inv) {
    double sum;
    row_stats(x, V, m, &sum);
    *inv = 1.0 / sum;
  });
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
