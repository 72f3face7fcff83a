//===- flops.h - model FLOPs of one `pl` op ----------------------------------===//
//
// The FLOP count the plan records per instruction and the pipeline balancer weighs stages by:
// GEMMs (2 M N K), LoRA's extra matmuls, attention (q k^T and P v; causal counts half),
// rms_norm (4 per element); 0 for data movement and element-wise ops.
//
//===----------------------------------------------------------------------===//
#pragma once

#include "mlir/IR/Operation.h"

namespace parallora {

double op_flops(mlir::Operation *op);

} // namespace parallora
