//===- adamw.cpp - adamw_step: clip_grad_norm_ + torch.optim.AdamW --------===//
//
// Mirrors torch's single-tensor AdamW (the CPU default) and clip_grad_norm_, operation by
// operation in float32 with the Python-scalar coefficients rounded to float as torch does:
//   norm = sqrt(sum of g^2 over all grads), fp64, in fixed 32768-element chunks summed in
//          order (the same value for every thread count)
//   clip = max_grad_norm / (norm + 1e-6); if max_grad_norm > 0 and clip < 1: g *= clip
//   p *= 1 - lr*wd                               param.mul_(1 - lr * weight_decay)
//   m = m + (1-b1) * (g - m), one rounding      exp_avg.lerp_(grad, 1 - beta1) (fma form)
//   v = v*b2;  v = v + ((1-b2) * g) * g          exp_avg_sq.mul_(beta2).addcmul_(g, g, 1-b2)
//   denom = sqrt(v) / sqrt(1-b2^t) + eps
//   p = p + (-(lr / (1-b1^t)) * m) / denom       param.addcdiv_(exp_avg, denom, -step_size)
// A non-finite norm skips the update (StepState.grad_norm_finite = false); grads are still
// zeroed when zero_grads = 1. With zero_grads = 0 the grads keep their clipped values, as
// clip_grad_norm_ leaves them.
//
// Sharded gradients (tensor / data parallel plans): attr norm_group names the group whose
// ranks together hold the gradients, norm_divisors[i] how many of them hold an identical copy of
// g_i. The local sum is then sum over chunks (in order) of chunk_sumsq / d_i, rounded to f32 and
// all-reduced (sum) over the group as one element (a group of one rank keeps the fp64 sum, so
// it equals the unsharded kernel; so do absent attrs).
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

namespace {
constexpr int64_t kNormChunk = 32768;
}

Status adamw_step(KernelCall &c) {
  Check ck(c, "adamw_step");
  AdamwArgs args;  // operands and attributes, checked the same way on every backend
  if (!parse_adamw_args(c, ck, &args)) return ck.status();
  StepState &st = *c.step;
  const int64_t n = args.n;
  const double beta1 = args.beta1, beta2 = args.beta2, eps = args.eps, wd = args.weight_decay,
               max_norm = args.max_grad_norm, lr = st.lr;
  const bool zero_grads = args.zero_grads;
  const std::vector<int64_t> &divisors = args.divisors;

  // 1. Global gradient norm (fp64, fixed chunking).
  struct Chunk {
    const float *g;
    int64_t len;
    int64_t grad;  // index i of g_i
  };
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < n; ++i) {
    const Tensor &g = c.in[size_t(n + i)];
    const int64_t len = g.numel();
    for (int64_t off = 0; off < len; off += kNormChunk)
      chunks.push_back({g.f32() + off, std::min(kNormChunk, len - off), i});
  }
  std::vector<double> partial(chunks.size(), 0.0);
  const int64_t nchunks = int64_t(chunks.size());
#pragma omp parallel for schedule(static) if (nchunks * kNormChunk >= detail::kParallelWork)
  for (int64_t k = 0; k < nchunks; ++k) {
    double s = 0.0;
    const float *g = chunks[size_t(k)].g;
    for (int64_t j = 0; j < chunks[size_t(k)].len; ++j) s += double(g[j]) * double(g[j]);
    partial[size_t(k)] = s;
  }
  double sumsq = 0.0;
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t d = divisors.empty() ? 1 : divisors[size_t(chunks[size_t(k)].grad)];
    sumsq += d == 1 ? partial[size_t(k)] : partial[size_t(k)] / double(d);
  }
  double norm = 0;  // summed over norm_group; sets st.grad_norm / grad_norm_finite
  if (Status s = finish_grad_norm(c, args, sumsq, &norm); !s) return ck.error(s.message());

  if (!st.grad_norm_finite) {
    if (zero_grads)
      for (int64_t i = 0; i < n; ++i) {
        const Tensor &g = c.in[size_t(n + i)];
        float *gp = g.f32();
        const int64_t len = g.numel();
#pragma omp parallel for schedule(static) if (len >= detail::kParallelWork)
        for (int64_t j = 0; j < len; ++j) gp[j] = 0.0f;
      }
    return Status::ok();
  }

  // 2. Clipping factor.
  bool clip = false;
  float clip_f = 1.0f;
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      clip = true;
      clip_f = float(coef);
    }
  }

  // 3. AdamW, element-wise.
  const int64_t t = st.step;
  const double bc1 = 1.0 - std::pow(beta1, double(t));
  const double bc2 = 1.0 - std::pow(beta2, double(t));
  const float decay_f = float(1.0 - lr * wd);
  const bool decay = wd != 0.0;
  const float w1_f = float(1.0 - beta1), b2_f = float(beta2), c2_f = float(1.0 - beta2);
  const float bc2_sqrt_f = float(std::sqrt(bc2)), eps_f = float(eps);
  const float neg_step_f = float(-(lr / bc1));
  for (int64_t i = 0; i < n; ++i) {
    float *pp = c.in[size_t(i)].f32(), *gp = c.in[size_t(n + i)].f32(),
          *mp = c.in[size_t(2 * n + i)].f32(), *vp = c.in[size_t(3 * n + i)].f32();
    const int64_t len = c.in[size_t(i)].numel();
#pragma omp parallel for schedule(static) if (len >= detail::kParallelWork)
    for (int64_t j = 0; j < len; ++j) {
      float g = gp[j];
      if (clip) g = g * clip_f;
      float p = pp[j];
      if (decay) p = p * decay_f;
      const float m = std::fma(w1_f, g - mp[j], mp[j]);
      float v = vp[j] * b2_f;
      v = v + c2_f * g * g;
      const float denom = std::sqrt(v) / bc2_sqrt_f + eps_f;
      p = p + neg_step_f * m / denom;
      pp[j] = p;
      mp[j] = m;
      vp[j] = v;
      gp[j] = zero_grads ? 0.0f : g;
    }
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
