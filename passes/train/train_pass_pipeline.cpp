//===- train_pass_pipeline.cpp - the training phase as a list of passes ----===//
//
// A *pass pipeline* (an ordered list of compiler passes); pipeline parallelism is
// passes/parallel/pipeline_split.cpp.
//
//===----------------------------------------------------------------------===//
#include "passes/train/Passes.h"

namespace parallora {

void buildTrainPassPipeline(mlir::OpPassManager &pm, const TrainPassPipelineOptions &options) {
  // 1. Add HF's shifted next-token loss; keep an un-differentiated copy for validation.
  pm.addPass(createAppendLoss(options.loss));
  // 2. Reverse-mode gradients for the adapters only (after the loss exists, before the
  //    optimizer needs the list of accumulated gradients).
  pm.addPass(createAutodiff(options.autodiff));
  // 2b. Optionally recompute each layer's forward in the backward instead of keeping it.
  if (options.recompute_layers) pm.addPass(createRecomputeLayers());
  // 3. One fused clip + AdamW step over every accumulated gradient.
  pm.addPass(createAdamW(options.adamw));
}

} // namespace parallora
