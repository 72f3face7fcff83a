//===- Passes.h - training-step phase passes -------------------------------===//
//
// --append-loss (append_loss.cpp), --autodiff (autodiff.cpp, rules in grad_rules.cpp),
// --adamw (adamw.cpp) and the phase's pass pipeline (train_pass_pipeline.cpp).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassManager.h"

namespace parallora {

#define GEN_PASS_DECL
#include "passes/train/Passes.h.inc"

/// Names of the functions the training phase produces.
inline constexpr llvm::StringLiteral kTrainStep = "train_step";
inline constexpr llvm::StringLiteral kEvalStep = "eval_step";
inline constexpr llvm::StringLiteral kOptimizerStep = "optimizer_step";
/// Module attribute with the optimizer hyperparameters and LR schedule.
inline constexpr llvm::StringLiteral kTrainAttr = "pl.train";

struct TrainPassPipelineOptions {
  AppendLossOptions loss;
  AutodiffOptions autodiff;
  AdamWOptions adamw;
  bool recompute_layers = false;  // --recompute-layers after autodiff
};

/// The training phase: loss, gradients, optimizer.
void buildTrainPassPipeline(mlir::OpPassManager &pm, const TrainPassPipelineOptions &options);

#define GEN_PASS_REGISTRATION
#include "passes/train/Passes.h.inc"

} // namespace parallora
