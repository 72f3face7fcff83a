//===- graph_dot.h - Graphviz picture of a `pl` module --------------------===//
#pragma once

#include <ostream>

#include "mlir/IR/BuiltinOps.h"

namespace parallora {
/// Writes the forward function as a DOT digraph: one cluster per decoder layer (`pl.layer`),
/// parameters as small boxes (trainable LoRA weights highlighted), edges labelled by shape.
void write_graph_dot(mlir::ModuleOp module, std::ostream &os);
} // namespace parallora
