//===- weight_init.h - seeded weight initialisation with HF's ranges ------===//
//
// Every tensor draws from its own stream, derived from (seed, FNV-1a hash of its name), so
// the values of a tensor do not depend on which other tensors were initialised or in what
// order; the same seed gives the same bits on every platform (std::mt19937_64 is fully
// specified; the normal and uniform mappings are our own, not <random>'s distributions).
//
// Spec strings:
//   "normal(mean,std)"        e.g. HF Linear/Embedding: normal(0, initializer_range)
//   "zeros" | "ones"          e.g. LoRA B, RMSNorm weight
//   "kaiming_uniform(a=X)"    PEFT LoRA A: a = sqrt(5); X may be written "sqrt(5)".
//                             bound = sqrt(6 / ((1 + a^2) * fan_in)), fan_in = prod(shape[1:])
//   "uniform(lo,hi)"
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/base/status.h"

namespace parallora {

struct InitSpec {
  enum class Kind { Normal, Zeros, Ones, KaimingUniform, Uniform };
  Kind kind = Kind::Zeros;
  double p0 = 0.0;  // normal: mean, uniform: lo, kaiming_uniform: a
  double p1 = 0.0;  // normal: std,  uniform: hi
  /// Canonical spelling, e.g. "normal(0,0.02)"; parse_init_spec(to_string()) round-trips.
  std::string to_string() const;
};

StatusOr<InitSpec> parse_init_spec(const std::string &text);

/// The init transformers/PEFT give a Llama tensor: RMSNorm weights ones, lora_B zeros,
/// lora_A kaiming_uniform(a=sqrt(5)), everything else normal(0, initializer_range).
InitSpec hf_default_init(const std::string &tensor_name, double initializer_range);

/// FNV-1a 64-bit hash, the per-tensor stream selector.
uint64_t fnv1a_64(const std::string &text);

/// Fills `out` (numel(shape) floats). For kaiming_uniform, fan_in = prod(shape[1:]); a
/// rank-1 tensor uses fan_in = shape[0].
void init_tensor(const InitSpec &spec, const std::string &tensor_name, uint64_t seed, float *out,
                 const std::vector<int64_t> &shape);

} // namespace parallora
