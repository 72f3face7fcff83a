//===- Dialect.cpp - `pl` dialect registration, verifiers, folders ---------===//
#include "ir/Dialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/OpImplementation.h"

using namespace mlir;
using namespace parallora::pl;

#include "ir/PlDialect.cpp.inc"

void PlDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ir/PlOps.cpp.inc"
      >();
}

// Verifiers: TODO (filled in with shape checks).
LogicalResult ParamOp::verify() { return success(); }
LogicalResult ConstantOp::verify() { return success(); }
OpFoldResult ConstantOp::fold(FoldAdaptor) { return getValue(); }
LogicalResult EmbeddingOp::verify() { return success(); }
LogicalResult RMSNormOp::verify() { return success(); }
LogicalResult LinearOp::verify() { return success(); }
LogicalResult LoraLinearOp::verify() { return success(); }
LogicalResult MatMulOp::verify() { return success(); }
LogicalResult RopeOp::verify() { return success(); }
LogicalResult AttentionOp::verify() { return success(); }
LogicalResult ReshapeOp::verify() { return success(); }
LogicalResult TransposeOp::verify() { return success(); }
LogicalResult SoftmaxOp::verify() { return success(); }
LogicalResult CrossEntropyOp::verify() { return success(); }

#define GET_OP_CLASSES
#include "ir/PlOps.cpp.inc"
