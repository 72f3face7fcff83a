//===- nonfinite.cpp - find the first NaN / Inf in a rank's buffers --------===//
#include "runtime/train/nonfinite.h"

#include <cmath>
#include <cstdio>

#include "runtime/base/bf16.h"

namespace parallora::rt {

int64_t first_non_finite_index(const float *data, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(data[i])) return i;
  return -1;
}

NonFinite first_non_finite(const Executor &ex, plan::BufferKind kind) {
  NonFinite r;
  for (const BufferTensor &t : ex.buffers(kind)) {
    const int64_t n = t.tensor.numel();
    if (t.tensor.dtype == plan::ElemType::BF16) {
      const uint16_t *p = t.tensor.bf16();
      for (int64_t i = 0; i < n; ++i)
        if ((p[i] & 0x7f80u) == 0x7f80u) {  // exponent all ones: Inf or NaN
          r.buffer = t.buffer->name;
          r.index = i;
          r.value = bf16_to_f32(p[i]);
          return r;
        }
      continue;
    }
    if (t.tensor.dtype != plan::ElemType::F32) continue;
    const int64_t i = first_non_finite_index(t.tensor.f32(), n);
    if (i >= 0) {
      r.buffer = t.buffer->name;
      r.index = i;
      r.value = t.tensor.f32()[i];
      return r;
    }
  }
  return r;
}

std::string NonFinite::str() const {
  if (!*this) return "none";
  const char *v = std::isnan(value) ? "nan" : value > 0 ? "inf" : "-inf";
  return buffer + "[" + std::to_string(index) + "] = " + v;
}

} // namespace parallora::rt
