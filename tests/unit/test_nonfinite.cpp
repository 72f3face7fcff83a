// runtime/train/nonfinite.h: finding and naming the first NaN / Inf.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "runtime/train/nonfinite.h"

using namespace parallora::rt;

TEST(NonFinite, FirstIndex) {
  std::vector<float> v = {1, 2, 3, 4};
  EXPECT_EQ(first_non_finite_index(v.data(), 4), -1);
  v[2] = std::numeric_limits<float>::infinity();
  v[3] = std::nanf("");
  EXPECT_EQ(first_non_finite_index(v.data(), 4), 2);
  EXPECT_EQ(first_non_finite_index(v.data(), 2), -1);
  v[0] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(first_non_finite_index(v.data(), 4), 0);
}

TEST(NonFinite, Names) {
  NonFinite n;
  EXPECT_FALSE(n);
  EXPECT_EQ(n.str(), "none");
  n.buffer = "layers.0.q_proj.lora_B";
  n.index = 17;
  n.value = std::nanf("");
  EXPECT_TRUE(n);
  EXPECT_EQ(n.str(), "layers.0.q_proj.lora_B[17] = nan");
  n.value = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(n.str(), "layers.0.q_proj.lora_B[17] = -inf");
}
