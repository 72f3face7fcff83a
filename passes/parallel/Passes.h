//===- Passes.h - parallelization phase passes -----------------------------===//
//
// --partition (partition.cpp), --sync-grads (sync_grads.cpp), --pipeline-split
// (pipeline_split.cpp: pipeline parallelism), --split-weight-grad (split_weight_grad.cpp: the
// backward's B / W parts for zb-h1) and the phase's pass pipeline
// (parallel_train_pass_pipeline.cpp: the ordered list of passes).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>
#include <string>

#include "passes/train/Passes.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassManager.h"

namespace parallora {

#define GEN_PASS_DECL
#include "passes/parallel/Passes.h.inc"

/// Module attributes written by the phase.
inline constexpr llvm::StringLiteral kMeshAttr = "pl.mesh";          // {dp, tp, pp}
inline constexpr llvm::StringLiteral kPipelineAttr = "pl.pipeline";  // {schedule, stages}
/// Op / func attributes.
inline constexpr llvm::StringLiteral kShardAttr = "pl.shard";        // on pl.param: {dim, parts}
inline constexpr llvm::StringLiteral kGradPartialAttr = "pl.grad_partial";
inline constexpr llvm::StringLiteral kVocabGroupAttr = "pl.vocab_group";
inline constexpr llvm::StringLiteral kNormGroupAttr = "pl.norm_group";
inline constexpr llvm::StringLiteral kNormDivisorsAttr = "pl.norm_divisors";
inline constexpr llvm::StringLiteral kZeroOwnersAttr = "pl.zero_owners";   // on adamw_step (ZeRO-1)
inline constexpr llvm::StringLiteral kBackwardAttr = "pl.backward";
inline constexpr llvm::StringLiteral kStageAttr = "pl.stage";
/// On backward ops that compute only adapter (weight) gradients, moved by --split-weight-grad
/// after the input-gradient part: the lowering puts them in the "backward_weight" program.
inline constexpr llvm::StringLiteral kWeightGradAttr = "pl.weight_grad";

struct Mesh3 {
  int64_t dp = 1, tp = 1, pp = 1;
};
/// The module's pl.mesh (1 x 1 x 1 when absent).
inline Mesh3 read_mesh(mlir::ModuleOp module) {
  Mesh3 m;
  if (auto d = module->getAttrOfType<mlir::DictionaryAttr>(kMeshAttr)) {
    if (auto a = d.getAs<mlir::IntegerAttr>("dp")) m.dp = a.getInt();
    if (auto a = d.getAs<mlir::IntegerAttr>("tp")) m.tp = a.getInt();
    if (auto a = d.getAs<mlir::IntegerAttr>("pp")) m.pp = a.getInt();
  }
  return m;
}

/// Name of stage `stage`'s copy of function `base` ("train_step_s1").
inline std::string stage_function(llvm::StringRef base, int64_t stage) {
  return base.str() + "_s" + std::to_string(stage);
}

struct ParallelPassPipelineOptions {
  PartitionOptions partition;   // dp, tp, pp
  SyncGradsOptions sync;
  PipelineSplitOptions pipeline;  // --pipeline-split (pipeline parallelism)
};

/// The training phase with parallelization: append-loss, partition, autodiff, adamw,
/// sync-grads, pipeline-split.
void buildParallelTrainPassPipeline(mlir::OpPassManager &pm, const TrainPassPipelineOptions &train,
                                    const ParallelPassPipelineOptions &parallel);

#define GEN_PASS_REGISTRATION
#include "passes/parallel/Passes.h.inc"

} // namespace parallora
