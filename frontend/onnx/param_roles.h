//===- param_roles.h - name imported parameters by their role -------------===//
//
// Exporters rename and de-duplicate initializers (the optimised torch export calls a
// transposed q_proj weight "val_110"). After raising, the graph's structure says what each
// weight is: the linear feeding the query rope of the i-th attention is layer i's q_proj.
// This names every parameter as Hugging Face does, sets `pl.layer` on every op, marks LoRA
// A/B trainable, merges tied embedding/head weights and records the derived config.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <string>
#include <vector>

#include "mlir/IR/BuiltinOps.h"

namespace parallora {
mlir::LogicalResult name_params_by_role(mlir::ModuleOp module, std::vector<std::string> &lora_modules);
} // namespace parallora
