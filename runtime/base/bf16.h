//===- bf16.h - bfloat16 storage: f32 <-> bf16 conversions -----------------===//
//
// bfloat16 is the top half of an IEEE f32 (1 sign, 8 exponent, 7 mantissa bits). Widening is
// exact (shift left 16). Narrowing rounds to nearest, ties to even, as torch's
// `tensor.to(torch.bfloat16)`, CUDA's __float2bfloat16 and cuBLASLt's bf16 outputs do; a NaN
// stays a (quiet) NaN, +-inf stays +-inf, and values above the largest bf16 round to inf.
//
// Plans compiled with --precision bf16 store frozen weights and activations as bf16
// (plan::ElemType::BF16); every kernel reads them widened to f32, computes in f32 and rounds
// its results once on store. Header-only so that host code of every backend shares it.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <cstring>

namespace parallora::rt {

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even (inf stays inf)
  return static_cast<uint16_t>(bits >> 16);
}

/// f32 -> bf16 -> f32: the value a bf16 store keeps.
inline float round_to_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

inline void bf16_to_f32(const uint16_t *src, float *dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}
inline void f32_to_bf16(const float *src, uint16_t *dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

} // namespace parallora::rt
