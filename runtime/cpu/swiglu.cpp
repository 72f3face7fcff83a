//===- swiglu.cpp - swiglu_fwd, swiglu_bwd --------------------------------===//
//
// y = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (torch's formula), element-wise.
//   dgate = dy * up * sig(g) * (1 + g (1 - sig(g))),  dup = dy * silu(g)
//
//===----------------------------------------------------------------------===//
#include <cmath>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

Status swiglu_fwd(KernelCall &c) {
  Check ck(c, "swiglu_fwd");
  if (!ck.operands(2, 2, 1)) return ck.status();
  const Tensor &g = c.in[0], &u = c.in[1], &y = c.out[0];
  if (!ck.f32(g, "gate") || !ck.f32(u, "up") || !ck.f32(y, "y") ||
      !ck.same_shape(u, "up", g, "gate") || !ck.same_shape(y, "y", g, "gate"))
    return ck.status();
  const int64_t n = g.numel();
  const float *gp = g.f32(), *up = u.f32();
  float *yp = y.f32();
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float x = gp[i];
    yp[i] = (x / (1.0f + std::exp(-x))) * up[i];
  }
  return Status::ok();
}

Status swiglu_bwd(KernelCall &c) {
  Check ck(c, "swiglu_bwd");
  if (!ck.operands(3, 3, 2)) return ck.status();
  const Tensor &dy = c.in[0], &g = c.in[1], &u = c.in[2], &dg = c.out[0], &du = c.out[1];
  if (!ck.f32(dy, "dy") || !ck.f32(g, "gate") || !ck.f32(u, "up") || !ck.f32(dg, "dgate") ||
      !ck.f32(du, "dup") || !ck.same_shape(u, "up", g, "gate") ||
      !ck.same_shape(dy, "dy", g, "gate") || !ck.same_shape(dg, "dgate", g, "gate") ||
      !ck.same_shape(du, "dup", g, "gate"))
    return ck.status();
  const int64_t n = g.numel();
  const float *dyp = dy.f32(), *gp = g.f32(), *up = u.f32();
  float *dgp = dg.f32(), *dup = du.f32();
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float x = gp[i], sig = 1.0f / (1.0f + std::exp(-x));
    const float d = dyp[i];
    dup[i] = d * (x * sig);
    dgp[i] = d * up[i] * (sig * (1.0f + x * (1.0f - sig)));
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
