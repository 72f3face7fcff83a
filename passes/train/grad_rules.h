//===- grad_rules.h - one reverse-mode gradient rule per `pl` op ------------===//
//
// A rule receives the gradients of an op's results (null where a result has none) and the
// operands that need a gradient, and emits ops computing those operand gradients. Rules are
// looked up by op name; autodiff.cpp owns the traversal, activity analysis and summation.
//
//===----------------------------------------------------------------------===//
#pragma once

#include "mlir/IR/Builders.h"
#include "mlir/IR/Operation.h"
#include "mlir/Support/LogicalResult.h"
#include "llvm/ADT/SmallVector.h"

namespace parallora {

struct GradContext {
  /// d(objective)/d(loss): 1 / micro-batches.
  double loss_seed = 1.0;
};

/// Fills `operand_grads[i]` for every i with `needs_grad[i]` (others stay null).
/// `result_grads[j]` is null when result j does not influence the loss.
using GradRule = mlir::LogicalResult (*)(mlir::Operation *op, llvm::ArrayRef<mlir::Value> result_grads,
                                         llvm::ArrayRef<bool> needs_grad, mlir::OpBuilder &b,
                                         const GradContext &ctx,
                                         llvm::SmallVectorImpl<mlir::Value> &operand_grads);

/// The rule for `op`, or nullptr when the op has none.
GradRule lookup_grad_rule(mlir::Operation *op);

/// Operand indices whose gradient a rule can never produce (frozen-only weights such as a
/// linear's weight): autodiff reports a trainable value flowing there as unsupported.
llvm::SmallVector<unsigned> weight_operands_without_grad(mlir::Operation *op);

} // namespace parallora
