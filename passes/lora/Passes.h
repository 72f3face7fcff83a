//===- Passes.h - LoRA phase passes ----------------------------------------===//
//
// --inject-lora (inject_lora.cpp), --freeze-base (freeze_base.cpp) and the phase's pass
// pipeline (lora_pass_pipeline.cpp). Declarations are generated from Passes.td: InjectLoraOptions,
// createInjectLora(), createFreezeBase(), registerLoraPasses().
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>
#include <string>

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassManager.h"

namespace parallora {

#define GEN_PASS_DECL
#include "passes/lora/Passes.h.inc"

/// Removes `trainable` from every param that is not a LoRA adapter (a lora_a / lora_b operand
/// of a pl.lora_linear) and sets it on every adapter param. Shared by both passes.
void freeze_base_params(mlir::ModuleOp module);

/// The LoRA phase: inject adapters, then freeze the base weights.
void buildLoraPassPipeline(mlir::OpPassManager &pm, const InjectLoraOptions &options);

#define GEN_PASS_REGISTRATION
#include "passes/lora/Passes.h.inc"

} // namespace parallora
