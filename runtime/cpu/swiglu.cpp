//===- swiglu.cpp - swiglu_fwd, swiglu_bwd --------------------------------===//
//
// y = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (torch's formula), element-wise;
// exp is vexp (vexp.h), so the loops vectorise.
//   dgate = dy * up * sig(g) * (1 + g (1 - sig(g))),  dup = dy * silu(g)
//
//===----------------------------------------------------------------------===//
#include <cmath>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"
#include "runtime/cpu/vexp.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

Status swiglu_fwd(KernelCall &c) {
  Check ck(c, "swiglu_fwd");
  if (!parse_swiglu_args(c, ck, /*backward=*/false, /*bf16_ok=*/false)) return ck.status();
  const Tensor &g = c.in[0], &u = c.in[1], &y = c.out[0];
  const int64_t n = g.numel();
  const float *gp = g.f32(), *up = u.f32();
  float *yp = y.f32();
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float x = gp[i];
    yp[i] = (x / (1.0f + detail::vexp(-x))) * up[i];
  }
  return Status::ok();
}

Status swiglu_bwd(KernelCall &c) {
  Check ck(c, "swiglu_bwd");
  if (!parse_swiglu_args(c, ck, /*backward=*/true, /*bf16_ok=*/false)) return ck.status();
  const Tensor &dy = c.in[0], &g = c.in[1], &u = c.in[2], &dg = c.out[0], &du = c.out[1];
  const int64_t n = g.numel();
  const float *dyp = dy.f32(), *gp = g.f32(), *up = u.f32();
  float *dgp = dg.f32(), *dup = du.f32();
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float x = gp[i], sig = 1.0f / (1.0f + detail::vexp(-x));
    const float d = dyp[i];
    dup[i] = d * (x * sig);
    dgp[i] = d * up[i] * (sig * (1.0f + x * (1.0f - sig)));
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
