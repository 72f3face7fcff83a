//===- lora_pass_pipeline.cpp - the LoRA phase as a list of passes --------===//
//
// A *pass pipeline* (an ordered list of compiler passes); pipeline parallelism is
// passes/parallel/pipeline_split.cpp.
//
//===----------------------------------------------------------------------===//
#include "passes/lora/Passes.h"

namespace parallora {

void buildLoraPassPipeline(mlir::OpPassManager &pm, const InjectLoraOptions &options) {
  // 1. Rewrite the targeted pl.linear ops into pl.lora_linear and create the adapter params
  //    (PEFT names, shapes and init), so later phases see the adapters as ordinary params.
  pm.addPass(createInjectLora(options));
  // 2. Fix trainability: adapters train, everything else (including adapters that came with an
  //    imported PEFT graph) is decided here once, before the training phase builds gradients.
  pm.addPass(createFreezeBase());
}

} // namespace parallora
