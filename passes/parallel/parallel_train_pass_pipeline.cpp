//===- parallel_train_pass_pipeline.cpp - the training phase with parallelization --===//
//
// A *pass pipeline* (an ordered list of compiler passes). Pipeline parallelism, the
// split into stages, is one of its passes: --pipeline-split (pipeline_split.cpp).
//
//===----------------------------------------------------------------------===//
#include "passes/parallel/Passes.h"

namespace parallora {

void buildParallelTrainPassPipeline(mlir::OpPassManager &pm, const TrainPassPipelineOptions &train,
                                    const ParallelPassPipelineOptions &parallel) {
  // 1. The loss (HF's shifted next-token cross-entropy); @train_step and @eval_step.
  pm.addPass(createAppendLoss(train.loss));
  // 2. Shard over dp x tp and insert the forward collectives (before autodiff, which
  //    differentiates through them: an all-reduce's gradient is the identity, a
  //    copy_to_group's is an all-reduce).
  pm.addPass(createPartition(parallel.partition));
  // 3. Gradients of the adapters, 4. AdamW.
  pm.addPass(createAutodiff(train.autodiff));
  if (train.recompute_layers) pm.addPass(createRecomputeLayers());  // the layer's collectives too
  pm.addPass(createAdamW(train.adamw));
  // 5. Gradient buckets summed over dp (and tp for replicated adapters); global-norm groups.
  pm.addPass(createSyncGrads(parallel.sync));
  // 6. Pipeline stages with send/recv at the cuts.
  pm.addPass(createPipelineSplit(parallel.pipeline));
  // 7. Zero-bubble (zb-h1): each stage's backward in an input- and a weight-gradient part.
  if (parallel.partition.pp > 1 && parallel.pipeline.schedule == "zb-h1") pm.addPass(createSplitWeightGrad());
}

} // namespace parallora
