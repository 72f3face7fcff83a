//===- structural_hash.h - compare two `pl` modules structurally ----------===//
//
// Two graphs are "structurally identical" when the forward function computes the same DAG:
// same ops, attributes, result types and parameter names, whatever order the ops were
// emitted in and whatever the source (ONNX initializer, checkpoint) of each parameter is.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <map>
#include <string>

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/Hashing.h"
#include "llvm/Support/raw_ostream.h"

namespace parallora::test_util {

inline bool ignored_attr(llvm::StringRef name) {
  return name == "pl.source" || name == "pl.source_perm" || name == "pl.source_folded" || name == "init";
}

/// Hash of the value's whole producing DAG.
inline llvm::hash_code value_hash(mlir::Value v, std::map<mlir::Operation *, llvm::hash_code> &memo) {
  mlir::Operation *op = v.getDefiningOp();
  if (!op) return llvm::hash_combine(std::string("arg"), llvm::cast<mlir::BlockArgument>(v).getArgNumber());
  if (auto it = memo.find(op); it != memo.end())
    return llvm::hash_combine(it->second, llvm::cast<mlir::OpResult>(v).getResultNumber());
  llvm::hash_code h = llvm::hash_value(op->getName().getStringRef());
  for (const mlir::NamedAttribute &a : op->getAttrs()) {
    if (ignored_attr(a.getName().strref())) continue;
    std::string s;
    llvm::raw_string_ostream os(s);
    a.getValue().print(os);
    h = llvm::hash_combine(h, a.getName().strref(), os.str());
  }
  for (mlir::Type t : op->getResultTypes()) {
    std::string s;
    llvm::raw_string_ostream os(s);
    t.print(os);
    h = llvm::hash_combine(h, os.str());
  }
  for (mlir::Value operand : op->getOperands()) h = llvm::hash_combine(h, value_hash(operand, memo));
  memo[op] = h;
  return llvm::hash_combine(h, llvm::cast<mlir::OpResult>(v).getResultNumber());
}

inline llvm::hash_code module_hash(mlir::ModuleOp m) {
  auto f = m.lookupSymbol<mlir::func::FuncOp>("forward");
  std::map<mlir::Operation *, llvm::hash_code> memo;
  llvm::hash_code h = llvm::hash_value(std::string("forward"));
  f.getBody().front().getTerminator()->walk([&](mlir::Operation *ret) {
    for (mlir::Value v : ret->getOperands()) h = llvm::hash_combine(h, value_hash(v, memo));
  });
  return h;
}

/// Op-name histogram, for readable failure messages.
inline std::map<std::string, int> op_counts(mlir::ModuleOp m) {
  std::map<std::string, int> c;
  m.walk([&](mlir::Operation *op) { ++c[op->getName().getStringRef().str()]; });
  return c;
}

} // namespace parallora::test_util
