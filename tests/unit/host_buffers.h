//===- host_buffers.h - host tensors for the kernel tests (shared) ----------===//
//
// Buf owns a tensor's data on the host (f32 or i32) and hands out an rt::Tensor view of it;
// zeros / ints build them; Rng draws portable uniform values (no std::*_distribution, so the
// numbers do not depend on the standard library). Used by test_comm and, through
// kernel_test_util.h, by the CPU kernel tests.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/kernel.h"

namespace parallora::rt::test_util {

/// A host tensor that owns its data.
struct Buf {
  std::vector<int64_t> shape;
  std::vector<float> f;
  std::vector<int32_t> i;
  bool is_i32 = false;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  Tensor tensor() {
    Tensor t;
    t.shape = shape;
    t.dtype = is_i32 ? plan::ElemType::I32 : plan::ElemType::F32;
    t.data = is_i32 ? static_cast<void *>(i.data()) : static_cast<void *>(f.data());
    return t;
  }
};

inline Buf zeros(std::vector<int64_t> shape, float fill = 0.0f) {
  Buf b;
  b.shape = std::move(shape);
  b.f.assign(size_t(b.numel()), fill);
  return b;
}

inline Buf ints(std::vector<int64_t> shape, std::vector<int32_t> values) {
  Buf b;
  b.shape = std::move(shape);
  b.is_i32 = true;
  b.i = std::move(values);
  EXPECT_EQ(int64_t(b.i.size()), b.numel());
  return b;
}

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  float uniform(float lo, float hi) {
    // Fixed construction (no std::uniform_real_distribution) so values are portable.
    const double u = double(gen() >> 11) * (1.0 / 9007199254740992.0);
    return float(lo + (hi - lo) * u);
  }
  Buf buf(std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f) {
    Buf b = zeros(std::move(shape));
    for (float &v : b.f) v = uniform(lo, hi);
    return b;
  }
};

} // namespace parallora::rt::test_util
