// The packed batch and its tiny LoRA plan, shared by test_packing_hf and test_packing_strategies
// (packing_fixture.h).
#include "tests/unit/packing_fixture.h"

#include <cstring>

#include <gtest/gtest.h>

#include "frontend/hf_config.h"
#include "ir/Dialect.h"
#include "models/llama_builder.h"
#include "passes/lora/Passes.h"
#include "passes/lower/lower_to_plan.h"
#include "passes/parallel/Passes.h"
#include "passes/train/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/PassManager.h"

namespace parallora::test_util {

std::string tiny_llama_dir() { return std::string(PARALLORA_SOURCE_DIR) + "/tests/fixtures/onnx/tiny_llama.hf"; }
std::string packing_fixture_dir() { return std::string(PARALLORA_SOURCE_DIR) + "/tests/fixtures/train/packing"; }

plan::Plan compile_tiny_lora(const TinyLoraPlanOptions &o) {
  mlir::MLIRContext ctx;
  ctx.loadDialect<pl::PlDialect, mlir::func::FuncDialect>();
  auto config = load_llama_config(tiny_llama_dir() + "/config.json");
  EXPECT_TRUE(config.is_ok());
  auto module = build_llama_module(ctx, *config, kPackB, kPackT);
  mlir::PassManager pm(&ctx);
  InjectLoraOptions lo;
  lo.rank = 4;
  lo.alpha = 8;
  lo.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  buildLoraPassPipeline(pm, lo);
  if (o.packing) pm.addPass(createPackSequences());
  TrainPassPipelineOptions to;
  if (o.lr) to.adamw.lr = *o.lr;
  if (o.dp * o.tp * o.pp > 1) {
    ParallelPassPipelineOptions po;
    po.partition.dp = o.dp;
    po.partition.tp = o.tp;
    po.partition.pp = o.pp;
    buildParallelTrainPassPipeline(pm, to, po);
  } else {
    buildTrainPassPipeline(pm, to);
  }
  EXPECT_TRUE(mlir::succeeded(pm.run(*module)));
  LowerOptions opts;
  opts.global_batch = kPackB;
  opts.micro_batches = 1;
  opts.base_weights = tiny_llama_dir();
  auto p = lower_to_plan(*module, opts);
  EXPECT_TRUE(mlir::succeeded(p));
  return *p;
}

SafetensorsFixture SafetensorsFixture::open(const std::string &path) {
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(f.is_ok()) << f.status().message();
  if (!f.is_ok()) return {};
  return SafetensorsFixture{std::move(*f)};
}

std::vector<float> SafetensorsFixture::f32(const std::string &name) const {
  const TensorView *t = file ? file->find(name) : nullptr;
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<float> out(t->numel());
  EXPECT_TRUE(to_f32(*t, out.data()).is_ok());
  return out;
}

std::vector<int32_t> SafetensorsFixture::i32(const std::string &name) const {
  const TensorView *t = file ? file->find(name) : nullptr;
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<int32_t> out(t->numel());
  std::memcpy(out.data(), t->data, t->nbytes);
  return out;
}

} // namespace parallora::test_util
