//===- attention.cpp - attention_fwd, attention_bwd (causal GQA) ----------===//
//
// Naive O(T*S) per (b, h) with fp32 dot products and double softmax sums, parallel over the
// rows (b, h, t). Query head h reads kv head h / (Hq / Hkv).
//
// Softmax of one row: sc_s = dot(q_t, k_s) * scale (s < t+1 when causal), m = max sc,
// e_s = exp(sc_s - m), inv = 1 / sum e (double, rounded to float), p_s = e_s * inv.
//
// The backward recomputes the probabilities in two passes, neither with atomics:
//   pass 1, per row (b, h, t): p, dp_s = dot(do_t, v_s), D_t = sum_s p_s dp_s,
//           ds_s = p_s (dp_s - D_t), dq_t = scale * sum_s ds_s k_s; keeps (m, inv, D_t)
//   pass 2, per kv row (b, hk, s): dk_s = scale * sum_{h in group, t} ds_ts q_t,
//           dv_s = sum_{h in group, t} p_ts do_t, recomputing p_ts from the kept (m, inv)
//           with the same float operations as pass 1 (same `dot`, same exp).
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;
using detail::dot;

namespace {

struct Dims {
  int64_t B, Hq, Hkv, T, S, Dh, group;
  float scale;
  bool causal;
};

// Validates q/k/v (and optionally do and the outputs) and fills Dims.
bool check_qkv(const KernelCall &c, Check &ck, const Tensor &q, const Tensor &k, const Tensor &v,
               Dims *d) {
  if (!ck.f32(q, "q") || !ck.f32(k, "k") || !ck.f32(v, "v") || !ck.rank(q, "q", 4) ||
      !ck.rank(k, "k", 4) || !ck.num_attr("scale") || !ck.num_attr("causal"))
    return false;
  d->B = q.dim(0);
  d->Hq = q.dim(1);
  d->T = q.dim(2);
  d->Dh = q.dim(3);
  d->Hkv = k.dim(1);
  d->S = k.dim(2);
  if (!ck.positive(d->Dh, "head dim Dh") || !ck.positive(d->Hkv, "k dim 1 (Hkv)") ||
      !ck.shape(k, "k", {d->B, d->Hkv, d->S, d->Dh}) || !ck.same_shape(v, "v", k, "k") ||
      !ck.expect(d->Hq % d->Hkv == 0, "query heads Hq = " + std::to_string(d->Hq) +
                                          " is not a multiple of kv heads Hkv = " +
                                          std::to_string(d->Hkv)))
    return false;
  d->group = d->Hq / d->Hkv;
  d->scale = float(c.attr_f("scale", 0.0));
  d->causal = c.attr_i("causal", 0) != 0;
  if (d->causal && !ck.expect(d->T == d->S, "causal attention needs T == S, got T = " +
                                                std::to_string(d->T) +
                                                ", S = " + std::to_string(d->S)))
    return false;
  return true;
}

// Scores and probabilities of one query row over n keys; returns m and inv.
void softmax_row(const float *qr, const float *kb, int64_t n, int64_t Dh, float scale, float *p,
                 float *m_out, float *inv_out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s < n; ++s) {
    p[s] = dot(qr, kb + s * Dh, Dh) * scale;
    m = std::max(m, p[s]);
  }
  double sum = 0.0;
  for (int64_t s = 0; s < n; ++s) {
    p[s] = std::exp(p[s] - m);
    sum += p[s];
  }
  const float inv = float(1.0 / sum);
  for (int64_t s = 0; s < n; ++s) p[s] *= inv;
  *m_out = m;
  *inv_out = inv;
}

} // namespace

// q (B,Hq,T,Dh), k (B,Hkv,S,Dh), v (B,Hkv,S,Dh) -> o (B,Hq,T,Dh); attrs scale, causal.
Status attention_fwd(KernelCall &c) {
  Check ck(c, "attention_fwd");
  if (!ck.operands(3, 3, 1)) return ck.status();
  const Tensor &q = c.in[0], &k = c.in[1], &v = c.in[2], &o = c.out[0];
  Dims d;
  if (!check_qkv(c, ck, q, k, v, &d) || !ck.f32(o, "o") || !ck.same_shape(o, "o", q, "q"))
    return ck.status();
  const int64_t rows = d.B * d.Hq * d.T, Dh = d.Dh, S = d.S, T = d.T;
  const float *qp = q.f32(), *kp = k.f32(), *vp = v.f32();
  float *op = o.f32();
  if (S == 0) {  // no keys: an empty sum
#pragma omp parallel for schedule(static) if (rows * Dh >= detail::kParallelWork)
    for (int64_t i = 0; i < rows * Dh; ++i) op[i] = 0.0f;
    return Status::ok();
  }
#pragma omp parallel if (rows * S * Dh >= detail::kParallelWork)
  {
    std::vector<float> p(static_cast<size_t>(S)), acc(static_cast<size_t>(Dh));
    // Chunk 1 balances the causal rows (row t costs t+1); each row is written by one thread
    // with the same operations whatever the schedule, so the result does not depend on it.
#pragma omp for schedule(static, 1)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t t = row % T, bh = row / T, h = bh % d.Hq, b = bh / d.Hq;
      const int64_t kvh = b * d.Hkv + h / d.group;
      const float *kb = kp + kvh * S * Dh, *vb = vp + kvh * S * Dh;
      const int64_t n = d.causal ? t + 1 : S;
      float m, inv;
      softmax_row(qp + row * Dh, kb, n, Dh, d.scale, p.data(), &m, &inv);
      for (int64_t j = 0; j < Dh; ++j) acc[j] = 0.0f;
      for (int64_t s = 0; s < n; ++s) {
        const float ps = p[s];
        const float *vr = vb + s * Dh;
        for (int64_t j = 0; j < Dh; ++j) acc[j] += ps * vr[j];
      }
      float *orow = op + row * Dh;
      for (int64_t j = 0; j < Dh; ++j) orow[j] = acc[j];
    }
  }
  return Status::ok();
}

// do (B,Hq,T,Dh), q, k, v -> dq (B,Hq,T,Dh), dk, dv (B,Hkv,S,Dh); attrs scale, causal.
Status attention_bwd(KernelCall &c) {
  Check ck(c, "attention_bwd");
  if (!ck.operands(4, 4, 3)) return ck.status();
  const Tensor &dO = c.in[0], &q = c.in[1], &k = c.in[2], &v = c.in[3];
  const Tensor &dq = c.out[0], &dk = c.out[1], &dv = c.out[2];
  Dims d;
  if (!check_qkv(c, ck, q, k, v, &d) || !ck.f32(dO, "do") || !ck.same_shape(dO, "do", q, "q") ||
      !ck.f32(dq, "dq") || !ck.f32(dk, "dk") || !ck.f32(dv, "dv") ||
      !ck.same_shape(dq, "dq", q, "q") || !ck.same_shape(dk, "dk", k, "k") ||
      !ck.same_shape(dv, "dv", v, "v"))
    return ck.status();
  const int64_t rows = d.B * d.Hq * d.T, Dh = d.Dh, S = d.S, T = d.T;
  const float *qp = q.f32(), *kp = k.f32(), *vp = v.f32(), *dop = dO.f32();
  float *dqp = dq.f32(), *dkp = dk.f32(), *dvp = dv.f32();
  const float scale = d.scale;
  if (S == 0) {
#pragma omp parallel for schedule(static) if (rows * Dh >= detail::kParallelWork)
    for (int64_t i = 0; i < rows * Dh; ++i) dqp[i] = 0.0f;
    return Status::ok();
  }
  std::vector<float> row_m(static_cast<size_t>(rows)), row_inv(static_cast<size_t>(rows)),
      row_D(static_cast<size_t>(rows));

  // Pass 1: per query row.
#pragma omp parallel if (rows * S * Dh >= detail::kParallelWork)
  {
    std::vector<float> p(static_cast<size_t>(S)), dp(static_cast<size_t>(S)),
        acc(static_cast<size_t>(Dh));
#pragma omp for schedule(static, 1)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t t = row % T, bh = row / T, h = bh % d.Hq, b = bh / d.Hq;
      const int64_t kvh = b * d.Hkv + h / d.group;
      const float *kb = kp + kvh * S * Dh, *vb = vp + kvh * S * Dh, *dor = dop + row * Dh;
      const int64_t n = d.causal ? t + 1 : S;
      float m, inv;
      softmax_row(qp + row * Dh, kb, n, Dh, scale, p.data(), &m, &inv);
      double Dsum = 0.0;
      for (int64_t s = 0; s < n; ++s) {
        dp[s] = dot(dor, vb + s * Dh, Dh);
        Dsum += double(p[s]) * double(dp[s]);
      }
      const float D = float(Dsum);
      for (int64_t j = 0; j < Dh; ++j) acc[j] = 0.0f;
      for (int64_t s = 0; s < n; ++s) {
        const float ds = p[s] * (dp[s] - D);
        const float *kr = kb + s * Dh;
        for (int64_t j = 0; j < Dh; ++j) acc[j] += ds * kr[j];
      }
      float *dqr = dqp + row * Dh;
      for (int64_t j = 0; j < Dh; ++j) dqr[j] = acc[j] * scale;
      row_m[row] = m;
      row_inv[row] = inv;
      row_D[row] = D;
    }
  }

  // Pass 2: per kv row (b, hk, s), summing over the group's query heads and the rows t that
  // see key s.
  const int64_t kv_rows = d.B * d.Hkv * S;
#pragma omp parallel if (kv_rows * T * Dh >= detail::kParallelWork)
  {
    std::vector<float> ak(static_cast<size_t>(Dh)), av(static_cast<size_t>(Dh));
#pragma omp for schedule(static, 1)
    for (int64_t kr = 0; kr < kv_rows; ++kr) {
      const int64_t s = kr % S, bhk = kr / S, hk = bhk % d.Hkv, b = bhk / d.Hkv;
      const float *krow = kp + kr * Dh, *vrow = vp + kr * Dh;
      for (int64_t j = 0; j < Dh; ++j) ak[j] = av[j] = 0.0f;
      for (int64_t g = 0; g < d.group; ++g) {
        const int64_t h = hk * d.group + g;
        for (int64_t t = d.causal ? s : 0; t < T; ++t) {
          const int64_t row = (b * d.Hq + h) * T + t;
          const float *qr = qp + row * Dh, *dor = dop + row * Dh;
          const float ps = std::exp(dot(qr, krow, Dh) * scale - row_m[row]) * row_inv[row];
          const float dps = dot(dor, vrow, Dh);
          const float ds = ps * (dps - row_D[row]);
          for (int64_t j = 0; j < Dh; ++j) {
            ak[j] += ds * qr[j];
            av[j] += ps * dor[j];
          }
        }
      }
      float *dkr = dkp + kr * Dh, *dvr = dvp + kr * Dh;
      for (int64_t j = 0; j < Dh; ++j) {
        dkr[j] = ak[j] * scale;
        dvr[j] = av[j];
      }
    }
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
