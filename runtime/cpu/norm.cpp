//===- norm.cpp - rms_norm_fwd, rms_norm_bwd ------------------------------===//
//
// HF LlamaRMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)), one row (last dim) at a time.
// The sum of squares is accumulated in double; each row is independent (deterministic).
//
//===----------------------------------------------------------------------===//
#include <cmath>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

static double inv_rms(const float *x, int64_t D, double eps) {
  double ss = 0.0;
  for (int64_t j = 0; j < D; ++j) ss += double(x[j]) * double(x[j]);
  return 1.0 / std::sqrt(ss / double(D) + eps);
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
    double dot = 0.0;
    for (int64_t j = 0; j < D; ++j) dot += double(dyr[j]) * double(wp[j]) * double(xr[j]);
    const double coef = r * r * r * dot / double(D);
    for (int64_t j = 0; j < D; ++j)
      dxr[j] = float(r * (double(dyr[j]) * double(wp[j])) - coef * double(xr[j]));
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
