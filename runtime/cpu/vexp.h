//===- vexp.h - exp(x) for float in a form that loops vectorise -----------===//
//
// glibc's expf is a call per element (errno, no vector variant without -ffast-math), about 20
// cycles: with ~12 M of them per step of the bench_cpu.sh model (softmax, cross-entropy, SiLU)
// it was a tenth of the step. vexp is Cephes' expf (range reduction by ln 2 in two parts, a
// degree-6 polynomial, 2^n from the exponent bits) written branch-free, so the loops that call
// it vectorise (SSE2 in the portable build, AVX2 / AVX-512 in exp_shifted's clones). Plain IEEE
// operations in a fixed order (the kernels build with -ffp-contract=off): the same bits on every
// target and for any thread count. Error: within 2 ulp of exp over the range below
// (tests/unit/test_cpu_kernels.cpp, VectorExp.*).
//   x > 88.72283 (exp overflows float)   -> +inf
//   x < -86.0    (exp < 2.2e-38)         -> 0 (flushed; the kernels add these to sums >= 1)
//   NaN                                  -> NaN
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace parallora::rt::cpu::detail {

inline float vexp(float x) {
  const float hi = 88.72283f, lo = -86.0f;
  float xc = x < hi ? x : hi;  // NaN -> hi here; restored at the end
  xc = xc > lo ? xc : lo;
  // n = round(xc / ln 2) by the 1.5 * 2^23 trick (round to nearest under the default mode)
  const float shifter = 12582912.0f;
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = xc - n * 0.693359375f;  // ln 2 = C1 + C2, C1 exact in 9 bits
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  // 2^n as 2^(n-1) * 2, so n = 128 (x near the top of the range) stays representable.
  const int32_t bits = (int32_t(n) + 126) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  float y = (p * scale) * 2.0f;
  y = x > hi ? std::numeric_limits<float>::infinity() : y;
  y = x < lo ? 0.0f : y;
  return x != x ? x : y;
}

/// e[i] = vexp(x[i] - m) for i < n (e may equal x). Built for SSE2, AVX2 and AVX-512 (chosen
/// at load time); every clone gives the same bits.
void exp_shifted(const float *x, float m, float *e, int64_t n);

} // namespace parallora::rt::cpu::detail
