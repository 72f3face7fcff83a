//===- onnx_importer.h - ONNX (HF/PyTorch export) -> `pl` IR --------------===//
//
// Imports what torch.onnx.export writes for Hugging Face LlamaForCausalLM (with or without
// PEFT LoRA adapters): loads and folds the graph (onnx_graph.h), then raises primitive
// subgraphs to `pl` ops on demand from the graph outputs:
//   Gather(table, ids)                                   -> pl.embedding
//   w * (x * 1/sqrt(mean(x^2) + eps))                     -> pl.rms_norm
//   MatMul(x, W^T)                                       -> pl.linear
//   MatMul(x,W^T) + s * MatMul(MatMul(x, A^T), B^T)      -> pl.lora_linear (PEFT)
//   x*cos + cat(-x[h:], x[:h])*sin                       -> pl.rope (theta fitted, verified)
//   softmax(q k^T * s + causal_mask) v (repeat_kv'd)     -> pl.attention (GQA, causal)
//   silu(g) * u, g * sigmoid(g)                          -> pl.swiglu, pl.silu
// Everything else becomes pl.add/mul/reshape/transpose/softmax/matmul or, failing that,
// pl.generic. Parameters are then named by their role (HF names, e.g.
// "model.layers.3.self_attn.q_proj.weight") whatever the exporter called the initializer.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "frontend/hf_config.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"

namespace parallora {

struct OnnxImportOptions {
  int64_t batch = -1;   // fixes a symbolic batch dim
  int64_t seq_len = -1; // fixes a symbolic sequence dim
  /// Micro-batches per step: `batch` is the global --batch / micro_batches (for the message when
  /// a static-shape export's batch differs).
  int64_t micro_batches = 1;
  /// Optional HF config: supplies rope scaling, which cannot be read back from the tables.
  std::optional<LlamaConfig> config;
};

struct OnnxImportReport {
  int64_t onnx_nodes = 0;
  int64_t folded_nodes = 0;
  std::vector<std::string> generic_nodes; // nodes kept as pl.generic
  std::vector<std::string> lora_modules;  // PEFT adapters recognised
};

/// Imports `path`. On failure, diagnostics naming the file, node and op were emitted on `ctx`.
mlir::FailureOr<mlir::OwningOpRef<mlir::ModuleOp>>
import_onnx(mlir::MLIRContext &ctx, const std::string &path, const OnnxImportOptions &options,
            OnnxImportReport *report = nullptr);

/// One parameter's values read back from the ONNX file, in the layout the IR uses.
struct OnnxParamValues {
  std::string name;             // the pl.param's name (HF role name)
  std::vector<int64_t> shape;
  std::vector<float> values;    // row-major f32 (bf16/f16 initializers widen exactly)
  bool trainable = false;       // a PEFT adapter (lora_A / lora_B)
};

/// Reads every pl.param of `module` that was imported from `path` (it carries pl.source and,
/// for a transposed view, pl.source_perm) from the ONNX initializers: inline in the protobuf or
/// memory-mapped external data. `options` must be those of the import (symbolic dims).
/// `visit` is called once per parameter, in module order; its error stops the walk. Errors
/// name the file and the parameter. Parameters without a source (e.g. adapters added by
/// inject-lora) are skipped.
Status read_onnx_parameters(mlir::ModuleOp module, const std::string &path, const OnnxImportOptions &options,
                            const std::function<Status(OnnxParamValues &)> &visit);

} // namespace parallora
