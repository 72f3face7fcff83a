//===- Dialect.h - the `pl` dialect and its ops ----------------------------===//
#pragma once

#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "ir/PlDialect.h.inc"

#define GET_OP_CLASSES
#include "ir/PlOps.h.inc"

namespace parallora::pl {
/// Name of the discardable attribute carrying an op's decoder-layer index.
inline constexpr llvm::StringLiteral kLayerAttr = "pl.layer";
/// An op's decoder layer (its kLayerAttr), -1 outside layers or for a null op.
inline int64_t layer_of(mlir::Operation *op) {
  if (!op) return -1;
  if (auto l = op->getAttrOfType<mlir::IntegerAttr>(kLayerAttr)) return l.getInt();
  return -1;
}
/// Unit attr on a forward op cloned into the backward by --recompute-layers.
inline constexpr llvm::StringLiteral kRecomputeAttr = "pl.recompute";
/// On pl.lora_linear_grad split by --split-weight-grad: "input" computes only dx (its dA, dB
/// results are unused), "weight" only dA and dB (its dx is unused). Absent: all three.
inline constexpr llvm::StringLiteral kGradPartAttr = "pl.grad_part";
/// Name of the module attribute carrying the model config dictionary.
inline constexpr llvm::StringLiteral kModelAttr = "pl.model";
} // namespace parallora::pl
