//===- lower_to_plan.h - training module -> runtime plan --------------------===//
//
// The last compiler phase: turns the module the training phase produced (@train_step,
// @eval_step, @optimizer_step; see passes/train) into a plan::Plan (runtime/plan/plan.h):
// one instruction per op (reshapes become views), buffers for params, gradients, AdamW
// moments, inputs and the loss, and temporaries placed in one arena by the liveness-based
// memory planner (memory_plan.h), with in-place residual adds where the input dies.
//
// Parallel modules (pl.mesh, passes/parallel): each pipeline stage's functions are lowered
// once (SPMD over dp x tp) and copied to every rank of the stage, with that rank's slices of
// the tp-sharded parameters and the world ranks of its send/recv peers. Per rank the plan
// records the predicted bytes sent by collective, the arena slots and the bubble fraction.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <string>

#include "runtime/plan/plan.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Support/LogicalResult.h"

namespace parallora {

struct LowerOptions {
  int64_t global_batch = 1;
  int64_t micro_batches = 1;
  std::string base_weights;     // recorded in the plan; frozen params then read "checkpoint"
  plan::LoraInfo lora;
  std::string producer = "lora-compile";
  std::string strategy = "single";  // recorded in the plan: single | data | tensor | pipeline | hybrid
  bool inplace_add = true;      // residual adds (and cross_entropy_bwd) write over an input that dies there
  // Storage precision: "fp32", or "bf16" = frozen weights and activations stored as bf16
  // (adapters, gradients, AdamW moments and the loss stay f32; kernels compute in f32).
  std::string precision = "fp32";
  // Gradient buckets start their all-reduce in the backward as soon as their last gradient is
  // written (all_reduce_start / all_reduce_wait) instead of all at once before the optimizer.
  bool overlap_grad_sync = true;
};

/// Fails with a diagnostic naming the op (and its module path) that cannot be lowered.
mlir::FailureOr<plan::Plan> lower_to_plan(mlir::ModuleOp module, const LowerOptions &options);

} // namespace parallora
