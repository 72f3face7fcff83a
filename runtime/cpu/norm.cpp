//===- norm.cpp - rms_norm_fwd, rms_norm_bwd ------------------------------===//
//
// HF LlamaRMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)), one row (last dim) at a time.
// The sums (of squares; the backward's dot product) are accumulated in double in 4 interleaved
// partial sums, ((s0 + s1) + (s2 + s3)) with s_j over i = j mod 4: a fixed order that depends on
// D alone (any thread count gives the same bits) and that GCC vectorises; each row is
// independent.
//
//===----------------------------------------------------------------------===//
#include <cmath>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

// sum_j a_j b_j in double, in the partial sums above.
static double dot4(const float *a, const float *b, int64_t n) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += double(a[i + j]) * double(b[i + j]);
  for (int j = 0; i < n; ++i, ++j) s[j] += double(a[i]) * double(b[i]);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// sum_j a_j b_j c_j in double, in the same partial sums.
static double dot4(const float *a, const float *b, const float *c, int64_t n) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += double(a[i + j]) * double(b[i + j]) * double(c[i + j]);
  for (int j = 0; i < n; ++i, ++j) s[j] += double(a[i]) * double(b[i]) * double(c[i]);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

static double inv_rms(const float *x, int64_t D, double eps) {
  return 1.0 / std::sqrt(dot4(x, x, D) / double(D) + eps);
}

Status rms_norm_fwd(KernelCall &c) {
  Check ck(c, "rms_norm_fwd");
  RmsNormArgs args;
  if (!parse_rms_norm_args(c, ck, /*backward=*/false, /*bf16_ok=*/false, &args)) return ck.status();
  const Tensor &x = c.in[0], &w = c.in[1], &y = c.out[0];
  const int64_t D = args.D, M = args.M;
  const double eps = args.eps;
  const float *xp = x.f32(), *wp = w.f32();
  float *yp = y.f32();
#pragma omp parallel for schedule(static) if (M * D >= detail::kParallelWork)
  for (int64_t i = 0; i < M; ++i) {
    const float *xr = xp + i * D;
    float *yr = yp + i * D;
    const float r = float(inv_rms(xr, D, eps));
    for (int64_t j = 0; j < D; ++j) yr[j] = wp[j] * (xr[j] * r);
  }
  return Status::ok();
}

// dx_j = r (dy_j w_j) - r^3 / D * x_j * sum_i (dy_i w_i x_i),  r = (mean(x^2) + eps)^(-1/2).
// The weight is frozen: no dw.
Status rms_norm_bwd(KernelCall &c) {
  Check ck(c, "rms_norm_bwd");
  RmsNormArgs args;
  if (!parse_rms_norm_args(c, ck, /*backward=*/true, /*bf16_ok=*/false, &args)) return ck.status();
  const Tensor &dy = c.in[0], &x = c.in[1], &w = c.in[2], &dx = c.out[0];
  const int64_t D = args.D, M = args.M;
  const double eps = args.eps;
  const float *dyp = dy.f32(), *xp = x.f32(), *wp = w.f32();
  float *dxp = dx.f32();
#pragma omp parallel for schedule(static) if (M * D >= detail::kParallelWork)
  for (int64_t i = 0; i < M; ++i) {
    const float *xr = xp + i * D, *dyr = dyp + i * D;
    float *dxr = dxp + i * D;
    const double r = inv_rms(xr, D, eps);
    const double dot = dot4(dyr, wp, xr, D);
    const double coef = r * r * r * dot / double(D);
    for (int64_t j = 0; j < D; ++j)
      dxr[j] = float(r * (double(dyr[j]) * double(wp[j])) - coef * double(xr[j]));
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
