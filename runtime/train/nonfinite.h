//===- nonfinite.h - find the first NaN / Inf in a rank's buffers ----------===//
//
// Non-finite training stops by default (SessionOptions::nonfinite = "stop"): the session names
// the step and the first non-finite tensor (the loss, an adapter weight, a gradient, an AdamW
// moment, a base weight) and never saves an adapter holding NaN or Inf. "skip" keeps training
// through a transient non-finite gradient (the optimizer already skips that update) as long as
// every weight stays finite.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>

#include "runtime/core/executor.h"

namespace parallora::rt {

struct NonFinite {
  std::string buffer;  // empty: every value finite
  int64_t index = -1;  // flat index of the first non-finite element
  float value = 0;     // NaN, +Inf or -Inf
  explicit operator bool() const { return !buffer.empty(); }
  /// "lora_B of layers.0.q_proj[17] = nan" style text.
  std::string str() const;
};

/// The first non-finite element of the buffers of `kind` (f32 or bf16), in plan order.
NonFinite first_non_finite(const Executor &ex, plan::BufferKind kind);

/// The same for raw float data (tests, loss values).
int64_t first_non_finite_index(const float *data, int64_t n);

} // namespace parallora::rt
