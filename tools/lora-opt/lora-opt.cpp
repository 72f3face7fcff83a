//===- lora-opt.cpp - run Parallora passes on .mlir files ------------------===//
#include "ir/Dialect.h"
#include "passes/lora/Passes.h"
#include "passes/parallel/Passes.h"
#include "passes/train/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  // Only the dialects our graphs use: registering every upstream dialect costs a 27 s TU.
  registry.insert<parallora::pl::PlDialect, mlir::func::FuncDialect>();
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  mlir::registerSymbolDCEPass();
  parallora::registerLoraPasses();
  parallora::registerTrainPasses();
  parallora::registerParallelPasses();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "Parallora pass driver\n", registry));
}
