//===- attention.cpp - attention_fwd, attention_bwd (causal GQA) ----------===//
//
// Blocked over the query rows: per (b, h) and block of kBlock rows [t0, t1), the scores of
// the block against keys [0, w) (w = t1 when causal, else S) are one sgemm, the softmax runs
// per row, and the products with V / K are sgemms. Query head h reads kv head h / (Hq / Hkv).
// Scratch is kBlock x S floats per thread (two such for the backward).
//
// Softmax of one row t: sc_s = scale * (q_t . k_s) from the sgemm, over s < n (n = t+1 when
// causal, else S); m = max sc, e_s = vexp(sc_s - m) (vexp.h), inv = 1 / sum e (double, in 4 fixed
// partial sums; rounded to float), p_s = e_s * inv; p_s = 0 for the masked s in [n, w).
//
// Forward, per unit (b, h, block): o = P V. Units are independent (each writes its own rows
// of o), split over the threads in contiguous ranges of about equal cost (static).
//
// Backward, per unit (b, kv head hk), which owns dk and dv of hk: for each query head of the
// group, then each row block in order: recompute P, dP = dO V^T (sgemm), D_t = sum_s p_s dp_s
// (double, rounded to float), dS = P * (dP - D) (0 where masked), dq = scale dS K (sgemm),
// dk += scale dS^T Q and dv += P^T dO (sgemms accumulating in that fixed order; no atomics).
// The units run in parallel when there are at least as many as threads; otherwise one at a
// time, with OpenMP over the rows of each block's softmax. The sgemms are single-threaded
// (SerialBlas) in both kernels, so the operations and their order do not depend on the thread
// count and neither does the result, bit for bit.
//
// Packing (optional segment_ids (B, T), T == S): key s is also masked for row t when
// seg[s] != seg[t]. Each row block then reads keys [k0, k0 + w) only, k0 = the first key of the
// earliest segment its rows belong to (first[] below), and masked keys inside that window get
// p = 0 and dS = 0 exactly as the causal mask does; without segment_ids, k0 = 0 and every
// operation is the one above (the unpacked path is unchanged, bit for bit).
//
// Masked scores inside the diagonal block are multiplied by an exact 0 in the sgemms, so a
// non-finite value of v (or dO) at a future position would reach the block's earlier rows, which
// the row-by-row kernel never read; with such an input the loss is non-finite anyway (the rows at
// and after it are), and the optimizer skips the step.
//
//===----------------------------------------------------------------------===//
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"
#include "runtime/cpu/vexp.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

namespace {

using Dims = AttentionArgs;  // parse_attention_qkv (runtime/kernel_check.h)

// Rows of one softmax block.
constexpr int64_t kBlock = 64;

// Sum of n floats in double, in 4 interleaved partial sums (vectorizable; the order is fixed
// by n alone): ((s0 + s1) + (s2 + s3)) with s_j = sum over i = j mod 4.
double sum_f64(const float *x, int64_t n) {
  double a[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) a[j] += double(x[i + j]);
  for (int j = 0; i < n; ++i, ++j) a[j] += double(x[i]);
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// Sum of x_i * y_i in double, with the same partial sums as sum_f64.
double dot_f64(const float *x, const float *y, int64_t n) {
  double a[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) a[j] += double(x[i + j]) * double(y[i + j]);
  for (int j = 0; i < n; ++i, ++j) a[j] += double(x[i]) * double(y[i]);
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// Max of n >= 1 floats (exact in any order; NaNs are skipped as std::max does).
float max_f32(const float *x, int64_t n) {
  float a[8];
  for (int j = 0; j < 8; ++j) a[j] = x[0];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] = a[j] < x[i + j] ? x[i + j] : a[j];
  for (; i < n; ++i) a[0] = a[0] < x[i] ? x[i] : a[0];
  float m = a[0];
  for (int j = 1; j < 8; ++j) m = m < a[j] ? a[j] : m;
  return m;
}

// Softmax of one row in place over p[0, n) (scaled scores in, probabilities out), zeroing the
// masked p[n, w). With segments, kseg[s] (the segment of key s of the window) != qseg masks s too.
void softmax_row(float *p, int64_t n, int64_t w, const int32_t *kseg = nullptr, int32_t qseg = 0) {
  if (!kseg) {
    const float m = max_f32(p, n);
    detail::exp_shifted(p, m, p, n);  // vexp (vexp.h): the same bits in forward and backward
  } else {  // the row's own key is in the window, so m is one of its scores
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < n; ++s)
      if (kseg[s] == qseg) m = m < p[s] ? p[s] : m;
    detail::exp_shifted(p, m, p, n);  // the same vexp; a masked score above m gives inf, zeroed next
    for (int64_t s = 0; s < n; ++s)
      if (kseg[s] != qseg) p[s] = 0.0f;
  }
  const float inv = float(1.0 / sum_f64(p, n));
  for (int64_t s = 0; s < n; ++s) p[s] *= inv;
  for (int64_t s = n; s < w; ++s) p[s] = 0.0f;
}

// Segments of one batch row: seg (T) and first[t] = the first position of t's segment.
struct Segments {
  const int32_t *seg = nullptr;
  const int64_t *first = nullptr;
};

// first[b * T + t] = smallest s with seg[b, s] == seg[b, t] (segments need not be contiguous).
std::vector<int64_t> segment_starts(const int32_t *seg, int64_t B, int64_t T) {
  std::vector<int64_t> first(static_cast<size_t>(B * T));
  std::unordered_map<int32_t, int64_t> seen;
  for (int64_t b = 0; b < B; ++b) {
    seen.clear();
    for (int64_t t = 0; t < T; ++t) first[size_t(b * T + t)] = seen.emplace(seg[b * T + t], t).first->second;
  }
  return first;
}

// One row block of one query head: rows [t0, t0 + rows) see keys [k0, k0 + w).
struct RowBlock {
  int64_t t0, rows, k0, w;
};
RowBlock row_block(const Dims &d, int64_t tb, const Segments &sg = {}) {
  const int64_t t0 = tb * kBlock, rows = std::min(kBlock, d.T - t0);
  const int64_t end = d.causal ? t0 + rows : d.S;
  int64_t k0 = 0;
  if (sg.seg) k0 = *std::min_element(sg.first + t0, sg.first + t0 + rows);
  return {t0, rows, k0, end - k0};
}
// Keys [0, n) of the window that row t may see before the segment mask.
int64_t row_keys(const Dims &d, const RowBlock &rb, int64_t t) { return (d.causal ? t + 1 : d.S) - rb.k0; }

// P (rows x w, leading dim w) = softmax(scale * Q K^T) of one row block (kb: the block's first
// key); `par` runs the rows in parallel (called outside a parallel region).
void probs(const Dims &d, const RowBlock &rb, const float *qb, const float *kb, float *P,
           bool par, const Segments &sg = {}) {
  detail::sgemm(false, true, rb.rows, rb.w, d.Dh, d.scale, qb, d.Dh, kb, d.Dh, 0.0f, P, rb.w);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < rb.rows; ++r) {
    const int64_t t = rb.t0 + r;
    softmax_row(P + r * rb.w, row_keys(d, rb, t), rb.w, sg.seg ? sg.seg + rb.k0 : nullptr, sg.seg ? sg.seg[t] : 0);
  }
}

} // namespace

// q (B,Hq,T,Dh), k (B,Hkv,S,Dh), v (B,Hkv,S,Dh) [, segment_ids (B,T)] -> o (B,Hq,T,Dh);
// attrs scale, causal.
Status attention_fwd(KernelCall &c) {
  Check ck(c, "attention_fwd");
  if (!ck.operands(3, 4, 1)) return ck.status();
  const Tensor &q = c.in[0], &k = c.in[1], &v = c.in[2], &o = c.out[0];
  Dims d;
  if (!parse_attention_qkv(c, ck, q, k, v, /*bf16_ok=*/false, &d) || !ck.f32(o, "o") || !ck.same_shape(o, "o", q, "q"))
    return ck.status();
  const bool packed = c.in.size() == 4;
  if (packed && !parse_attention_segments(ck, c.in[3], d)) return ck.status();
  const int32_t *segp = packed ? c.in[3].i32() : nullptr;
  const std::vector<int64_t> first = packed ? segment_starts(segp, d.B, d.T) : std::vector<int64_t>();
  auto segments = [&](int64_t b) {
    return packed ? Segments{segp + b * d.T, first.data() + b * d.T} : Segments{};
  };
  const int64_t rows = d.B * d.Hq * d.T, Dh = d.Dh, S = d.S, T = d.T;
  const float *qp = q.f32(), *kp = k.f32(), *vp = v.f32();
  float *op = o.f32();
  if (S == 0 || T == 0) {  // no keys: an empty sum
#pragma omp parallel for schedule(static) if (rows * Dh >= detail::kParallelWork)
    for (int64_t i = 0; i < rows * Dh; ++i) op[i] = 0.0f;
    return Status::ok();
  }
  // Units (b, h, row block), ordered; cost[u] = prefix sum of the key counts w.
  const int64_t nb = (T + kBlock - 1) / kBlock, units = d.B * d.Hq * nb;
  std::vector<int64_t> cost(static_cast<size_t>(units + 1), 0);
  for (int64_t u = 0; u < units; ++u)
    cost[size_t(u + 1)] = cost[size_t(u)] + row_block(d, u % nb, segments(u / nb / d.Hq)).w;
  const bool par = rows * S * Dh >= detail::kParallelWork && units > 1;
  detail::SerialBlas serial(true);
#pragma omp parallel if (par)
  {
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    // This thread's units: those whose cost starts in its equal share of the total.
    const int64_t total = cost[size_t(units)];
    const auto lo = std::lower_bound(cost.begin(), cost.end() - 1, total * tid / nth),
               hi = std::lower_bound(cost.begin(), cost.end() - 1, total * (tid + 1) / nth);
    std::vector<float> P;
    if (lo < hi) P.resize(static_cast<size_t>(kBlock * S));
    for (int64_t u = lo - cost.begin(); u < hi - cost.begin(); ++u) {
      const int64_t bh = u / nb, b = bh / d.Hq, h = bh % d.Hq;
      const Segments sg = segments(b);
      const RowBlock rb = row_block(d, u % nb, sg);
      const int64_t kvh = b * d.Hkv + h / d.group;
      const float *kb = kp + (kvh * S + rb.k0) * Dh, *vb = vp + (kvh * S + rb.k0) * Dh;
      const int64_t row0 = bh * T + rb.t0;
      probs(d, rb, qp + row0 * Dh, kb, P.data(), false, sg);
      detail::sgemm(false, false, rb.rows, Dh, rb.w, 1.0f, P.data(), rb.w, vb, Dh, 0.0f,
                    op + row0 * Dh, Dh);
    }
  }
  return Status::ok();
}

// do (B,Hq,T,Dh), q, k, v [, segment_ids (B,T)] -> dq (B,Hq,T,Dh), dk, dv (B,Hkv,S,Dh);
// attrs scale, causal.
Status attention_bwd(KernelCall &c) {
  Check ck(c, "attention_bwd");
  if (!ck.operands(4, 5, 3)) return ck.status();
  const Tensor &dO = c.in[0], &q = c.in[1], &k = c.in[2], &v = c.in[3];
  const Tensor &dq = c.out[0], &dk = c.out[1], &dv = c.out[2];
  Dims d;
  if (!parse_attention_qkv(c, ck, q, k, v, /*bf16_ok=*/false, &d) || !ck.f32(dO, "do") || !ck.same_shape(dO, "do", q, "q") ||
      !ck.f32(dq, "dq") || !ck.f32(dk, "dk") || !ck.f32(dv, "dv") ||
      !ck.same_shape(dq, "dq", q, "q") || !ck.same_shape(dk, "dk", k, "k") ||
      !ck.same_shape(dv, "dv", v, "v"))
    return ck.status();
  const bool packed = c.in.size() == 5;
  if (packed && !parse_attention_segments(ck, c.in[4], d)) return ck.status();
  const int32_t *segp = packed ? c.in[4].i32() : nullptr;
  const std::vector<int64_t> first = packed ? segment_starts(segp, d.B, d.T) : std::vector<int64_t>();
  const int64_t rows = d.B * d.Hq * d.T, Dh = d.Dh, S = d.S, T = d.T;
  const float *qp = q.f32(), *kp = k.f32(), *vp = v.f32(), *dop = dO.f32();
  float *dqp = dq.f32(), *dkp = dk.f32(), *dvp = dv.f32();
  const float scale = d.scale;
  const int64_t kv_n = d.B * d.Hkv * S * Dh;
  if (S == 0 || T == 0) {  // no keys (or no queries): empty sums
#pragma omp parallel for schedule(static) if (rows * Dh >= detail::kParallelWork)
    for (int64_t i = 0; i < rows * Dh; ++i) dqp[i] = 0.0f;
#pragma omp parallel for schedule(static) if (kv_n >= detail::kParallelWork)
    for (int64_t i = 0; i < kv_n; ++i) dkp[i] = dvp[i] = 0.0f;
    return Status::ok();
  }
  const int64_t nb = (T + kBlock - 1) / kBlock, units = d.B * d.Hkv;

  // One unit (b, hk); `par`: parallel rows inside (the unit loop is then sequential).
  auto unit = [&](int64_t bhk, float *P, float *dS, bool par) {
    const int64_t b = bhk / d.Hkv, hk = bhk % d.Hkv;
    const float *kb0 = kp + bhk * S * Dh, *vb0 = vp + bhk * S * Dh;
    float *dkb0 = dkp + bhk * S * Dh, *dvb0 = dvp + bhk * S * Dh;
    for (int64_t i = 0; i < S * Dh; ++i) dkb0[i] = dvb0[i] = 0.0f;
    const Segments sg = packed ? Segments{segp + b * T, first.data() + b * T} : Segments{};
    for (int64_t g = 0; g < d.group; ++g) {
      const int64_t bh = b * d.Hq + hk * d.group + g;
      for (int64_t tb = 0; tb < nb; ++tb) {
        const RowBlock rb = row_block(d, tb, sg);
        const int64_t row0 = bh * T + rb.t0, w = rb.w;
        const float *qb = qp + row0 * Dh, *dob = dop + row0 * Dh;
        const float *kb = kb0 + rb.k0 * Dh, *vb = vb0 + rb.k0 * Dh;  // the block's key window
        float *dkb = dkb0 + rb.k0 * Dh, *dvb = dvb0 + rb.k0 * Dh;
        probs(d, rb, qb, kb, P, par, sg);
        detail::sgemm(false, true, rb.rows, w, Dh, 1.0f, dob, Dh, vb, Dh, 0.0f, dS, w);
#pragma omp parallel for schedule(static) if (par)
        for (int64_t r = 0; r < rb.rows; ++r) {
          const float *pr = P + r * w;
          float *dsr = dS + r * w;
          const int64_t n = row_keys(d, rb, rb.t0 + r);
          const float D = float(dot_f64(pr, dsr, n));
          if (!sg.seg) {
            for (int64_t s = 0; s < n; ++s) dsr[s] = pr[s] * (dsr[s] - D);
          } else {
            const int32_t *kseg = sg.seg + rb.k0, qseg = sg.seg[rb.t0 + r];
            for (int64_t s = 0; s < n; ++s) dsr[s] = kseg[s] == qseg ? pr[s] * (dsr[s] - D) : 0.0f;
          }
          for (int64_t s = n; s < w; ++s) dsr[s] = 0.0f;
        }
        detail::sgemm(false, false, rb.rows, Dh, w, scale, dS, w, kb, Dh, 0.0f, dqp + row0 * Dh,
                      Dh);
        detail::sgemm(true, false, w, Dh, rb.rows, scale, dS, w, qb, Dh, 1.0f, dkb, Dh);
        detail::sgemm(true, false, w, Dh, rb.rows, 1.0f, P, w, dob, Dh, 1.0f, dvb, Dh);
      }
    }
  };

  // Single-threaded sgemms either way (so the result does not depend on the thread count):
  // the units in parallel when there are enough of them, else one at a time with the rows of
  // each block in parallel.
  const bool big = rows * S * Dh >= detail::kParallelWork;
  detail::SerialBlas serial(true);
  if (big && units >= omp_get_max_threads()) {
#pragma omp parallel
    {
      std::vector<float> P(static_cast<size_t>(kBlock * S)), dS(static_cast<size_t>(kBlock * S));
#pragma omp for schedule(static)
      for (int64_t u = 0; u < units; ++u) unit(u, P.data(), dS.data(), false);
    }
  } else {
    std::vector<float> P(static_cast<size_t>(kBlock * S)), dS(static_cast<size_t>(kBlock * S));
    for (int64_t u = 0; u < units; ++u) unit(u, P.data(), dS.data(), big);
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
