// vexp (runtime/cpu/vexp.h), the exp of the CPU softmax, cross-entropy and SiLU, against glibc's
// expf, and exp_shifted (the cloned loop the kernels call) against vexp, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "runtime/cpu/vexp.h"

using parallora::rt::cpu::detail::exp_shifted;
using parallora::rt::cpu::detail::vexp;

namespace {

double ulps(float got, float want) {
  const double step = double(std::nextafter(want, std::numeric_limits<float>::infinity())) - double(want);
  return std::fabs(double(got) - double(want)) / step;
}

} // namespace

TEST(VectorExp, WithinTwoUlpOfLibmOverTheRange) {
  double worst = 0.0;
  float worst_x = 0.0f;
  int64_t n = 0;
  for (float x = -86.0f; x < 88.72f; x += 1e-4f + std::fabs(x) * 3e-6f, ++n) {
    const double u = ulps(vexp(x), std::exp(x));
    if (u > worst) worst = u, worst_x = x;
  }
  for (float x : {0.0f, -0.0f, 1e-30f, -1e-30f, 1.0f, -1.0f, 0.5f, 88.0f, 88.7f, -85.9f}) {
    const double u = ulps(vexp(x), std::exp(x));
    if (u > worst) worst = u, worst_x = x;
  }
  EXPECT_GT(n, 100000);
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
  EXPECT_EQ(vexp(0.0f), 1.0f);
}

TEST(VectorExp, EdgesOfTheRange) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(vexp(89.0f), inf);
  EXPECT_EQ(vexp(inf), inf);
  EXPECT_EQ(vexp(-inf), 0.0f);
  EXPECT_EQ(vexp(-87.0f), 0.0f);  // flushed: exp(-87) = 1.6e-38
  EXPECT_TRUE(std::isnan(vexp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isfinite(vexp(88.72f)));
  EXPECT_LE(ulps(vexp(88.72f), std::exp(88.72f)), 2.0);
}

TEST(VectorExp, ShiftedLoopEqualsScalarBitForBit) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-40.0f, 10.0f);
  for (int64_t n : {1, 3, 15, 16, 17, 64, 1000}) {
    std::vector<float> x(static_cast<size_t>(n)), e(static_cast<size_t>(n));
    for (auto &v : x) v = d(rng);
    x[0] = -std::numeric_limits<float>::infinity();
    const float m = 2.5f;
    exp_shifted(x.data(), m, e.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(e[size_t(i)], vexp(x[size_t(i)] - m)) << "n " << n << " i " << i;
    exp_shifted(x.data(), m, x.data(), n);  // in place
    EXPECT_EQ(x, e);
  }
}
