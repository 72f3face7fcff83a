//===- llama_builder.h - LlamaConfig -> canonical `pl` IR ------------------===//
//
// Builds the canonical forward graph of LlamaForCausalLM in the `pl` dialect: the same IR the
// ONNX importer raises an HF export to (docs/ir.md is the contract; a test compares the two
// structurally). One `func.func @forward(%input_ids) -> logits`, params named with HF's
// state-dict keys, every op located by a NameLoc carrying its HF module path and tagged with
// `pl.layer` (-1 outside the decoder layers).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>

#include "frontend/hf_config.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"

namespace parallora {

/// Builds the module for `config`. `batch` and `seq_len` are static sizes or
/// mlir::ShapedType::kDynamic. Loads the `pl` and `func` dialects into `ctx`. Returns a null
/// module (after emitting an error) when the config is inconsistent (e.g. heads that do not
/// divide, non-positive sizes).
mlir::OwningOpRef<mlir::ModuleOp> build_llama_module(mlir::MLIRContext &ctx, const LlamaConfig &config,
                                                     int64_t batch, int64_t seq_len);

} // namespace parallora
