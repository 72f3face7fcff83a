//===- lora_dropout.h - the LoRA dropout mask of one kernel call -------------===//
//
// lora_linear_fwd / lora_linear_bwd with the attr `dropout` = p > 0 apply inverted dropout to
// the adapter's input (runtime/base/philox.h defines the mask). Attributes (written by the
// lowering for training programs only; eval programs have none):
//   dropout                 (f64) p in [0, 1); absent or 0: no dropout, the kernel is unchanged
//   module                  (str) the adapted module's path: the mask's stream
//   dropout_feature_group   (str, optional) the group over which x's features are sharded
//                           (row-parallel projections under tensor parallelism: "tp"); shard c
//                           holds features [c K, (c+1) K)
// and from the StepState: seed, step (1-based), first_sample (global index of the micro-batch's
// first sequence). x must be (samples, positions, K).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <optional>

#include "runtime/base/philox.h"
#include "runtime/kernel.h"

namespace parallora::rt {

/// The mask of this call, std::nullopt when the call has no dropout (p absent or 0), or an error
/// naming the kernel and what is missing (no StepState, x not 3-d, a bad p or group).
StatusOr<std::optional<DropoutMask>> lora_dropout_mask(const KernelCall &c, const char *kernel, const Tensor &x);

/// The mask of (seed, step, module, p) for a call whose first sample is `first_sample`, whose x
/// has `positions` rows per sample and whose first feature is `feature0` (tests, references).
DropoutMask make_dropout_mask(uint64_t seed, int64_t step, const std::string &module, double p, int64_t first_sample,
                              int64_t positions, int64_t feature0);

} // namespace parallora::rt
