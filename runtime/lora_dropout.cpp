//===- lora_dropout.cpp - the LoRA dropout mask of one kernel call -----------===//
#include "runtime/lora_dropout.h"

#include <cmath>

#include "runtime/comm/comm.h"
#include "runtime/kernel_check.h"

namespace parallora::rt {

DropoutMask make_dropout_mask(uint64_t seed, int64_t step, const std::string &module, double p, int64_t first_sample,
                              int64_t positions, int64_t feature0) {
  DropoutMask m;
  m.key0 = static_cast<uint32_t>(seed);
  m.key1 = static_cast<uint32_t>(seed >> 32) ^ fnv1a32(module.c_str());
  m.step = static_cast<uint32_t>(step);
  m.sample0 = static_cast<uint32_t>(first_sample);
  m.positions = positions;
  m.feature0 = feature0;
  m.threshold = static_cast<uint32_t>(std::min(std::floor(p * 4294967296.0), 4294967295.0));
  m.scale = static_cast<float>(1.0 / (1.0 - p));
  return m;
}

StatusOr<std::optional<DropoutMask>> lora_dropout_mask(const KernelCall &c, const char *kernel, const Tensor &x) {
  const double p = c.attr_f("dropout", 0.0);
  if (p == 0.0) return std::optional<DropoutMask>();
  auto err = [&](const std::string &m) { return kernel_error(c, kernel, "LoRA dropout: " + m); };
  if (!(p > 0.0 && p < 1.0)) return err("dropout must be in [0, 1), got " + std::to_string(p));
  if (!c.step)
    return err("the call has no step state (seed, step, first sample); dropout runs only in training programs");
  if (c.step->step < 1 || c.step->first_sample < 0)
    return err("step " + std::to_string(c.step->step) + " / first sample " + std::to_string(c.step->first_sample) +
               " out of range (step >= 1, sample >= 0)");
  if (x.rank() != 3) return err("x must be (samples, positions, features), got rank " + std::to_string(x.rank()));
  const std::string module = c.attr_s("module", "");
  if (module.empty()) return err("attr 'module' (the mask's stream) is missing");
  int64_t feature0 = 0;
  const std::string group = c.attr_s("dropout_feature_group", "");
  if (!group.empty() && c.comm) {
    StatusOr<int> g = c.comm->group_rank(group);
    if (!g) return err("dropout_feature_group '" + group + "': " + g.message());
    feature0 = static_cast<int64_t>(*g) * x.dim(2);
  }
  return std::optional<DropoutMask>(
      make_dropout_mask(c.step->seed, c.step->step, module, p, c.step->first_sample, x.dim(1), feature0));
}

} // namespace parallora::rt
