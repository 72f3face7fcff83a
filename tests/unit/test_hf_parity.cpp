// Parity with Hugging Face transformers + PEFT (fixtures by scripts/reference/
// make_train_fixtures.py, committed so CI needs no torch): the tiny LLaMA checkpoint, PEFT's
// initial adapter, the same token batches, AdamW with HF's cosine schedule, 2 micro-batches.
//  * step 1: logits, loss and every adapter gradient of the first micro-batch;
//  * all 20 optimizer steps: the loss of each within 1e-4 relative;
//  * the trained adapter and the trained model's logits on the validation batch.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "frontend/hf_config.h"
#include "runtime/base/safetensors.h"
#include "ir/Dialect.h"
#include "models/llama_builder.h"
#include "passes/lora/Passes.h"
#include "passes/lower/lower_to_plan.h"
#include "passes/train/Passes.h"
#include "runtime/core/executor.h"
#include "runtime/cpu/kernels.h"
#include "runtime/io/metrics.h"
#include "runtime/io/peft_adapter.h"
#include "runtime/io/token_data.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/PassManager.h"

using namespace parallora;

namespace {

const std::string kSrc = PARALLORA_SOURCE_DIR;
const std::string kBase = kSrc + "/tests/fixtures/onnx/tiny_llama.hf";
const std::string kFix = kSrc + "/tests/fixtures/train/tiny";

nlohmann::json reference() {
  std::ifstream f(kFix + "/reference.json");
  return nlohmann::json::parse(f);
}

plan::Plan compile(const nlohmann::json &ref) {
  mlir::MLIRContext ctx;
  ctx.loadDialect<pl::PlDialect, mlir::func::FuncDialect>();
  auto config = load_llama_config(kBase + "/config.json");
  EXPECT_TRUE(config.is_ok());
  int64_t B = ref["global_batch"], T = ref["seq_len"], M = ref["micro_batches"];
  auto module = build_llama_module(ctx, *config, B / M, T);
  mlir::PassManager pm(&ctx);
  InjectLoraOptions lo;
  lo.rank = ref["lora"]["r"];
  lo.alpha = ref["lora"]["alpha"];
  lo.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  buildLoraPassPipeline(pm, lo);
  TrainPassPipelineOptions to;
  to.autodiff.microBatches = M;
  to.adamw.lr = ref["lr"];
  to.adamw.schedule = ref["schedule"].get<std::string>();
  to.adamw.warmupSteps = ref["warmup_steps"];
  to.adamw.totalSteps = ref["total_steps"];
  to.adamw.weightDecay = ref["weight_decay"];
  to.adamw.beta1 = ref["betas"][0];
  to.adamw.beta2 = ref["betas"][1];
  to.adamw.eps = ref["eps"];
  to.adamw.maxGradNorm = ref["max_grad_norm"];
  buildTrainPassPipeline(pm, to);
  EXPECT_TRUE(mlir::succeeded(pm.run(*module)));
  LowerOptions opts;
  opts.global_batch = B;
  opts.micro_batches = M;
  opts.base_weights = kBase;
  auto p = lower_to_plan(*module, opts);
  EXPECT_TRUE(mlir::succeeded(p));
  return *p;
}

std::unique_ptr<SafetensorsFile> open_st(const std::string &path) {
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(f.is_ok()) << path;
  return std::move(*f);
}

std::vector<float> read_f32(const SafetensorsFile &f, const std::string &name) {
  const TensorView *t = f.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<float> out(t->numel());
  EXPECT_TRUE(to_f32(*t, out.data()).is_ok());
  return out;
}

struct Err {
  double max_abs = 0, max_rel = 0, ref_max = 0;
};
Err compare(const float *got, const std::vector<float> &want) {
  Err e;
  for (size_t i = 0; i < want.size(); ++i) {
    double d = std::fabs(double(got[i]) - want[i]);
    e.max_abs = std::max(e.max_abs, d);
    e.max_rel = std::max(e.max_rel, d / (std::fabs(want[i]) + 1e-6));
    e.ref_max = std::max(e.ref_max, double(std::fabs(want[i])));
  }
  return e;
}

class HfParity : public ::testing::Test {
protected:
  void SetUp() override {
    ref_ = reference();
    plan_ = compile(ref_);
    rt::KernelRegistry reg;
    rt::cpu::register_kernels(reg);
    auto e = rt::Executor::create(plan_, 0, reg);
    ASSERT_TRUE(e.is_ok()) << e.status().message();
    exec_ = std::move(*e);
    Status st = exec_->init_parameters(kBase, 0);
    ASSERT_TRUE(st.is_ok()) << st.message();
    auto adapter = rt::read_peft_adapter(kFix + "/adapter_init", nullptr);
    ASSERT_TRUE(adapter.is_ok()) << adapter.status().message();
    st = exec_->set_trainables(*adapter);
    ASSERT_TRUE(st.is_ok()) << st.message();
    auto tf = rt::TokenFile::open(kFix + "/tokens.bin", "auto");
    ASSERT_TRUE(tf.is_ok()) << tf.status().message();
    tokens_ = std::make_unique<rt::TokenFile>(std::move(*tf));
  }

  int64_t micro() const { return plan_.global_batch / plan_.micro_batches; }
  void feed(const int32_t *ids) {
    int64_t n = micro() * plan_.seq_len;
    ASSERT_TRUE(exec_->feed("input_ids", ids, n).is_ok());
    ASSERT_TRUE(exec_->feed("labels", ids, n).is_ok());
  }

  nlohmann::json ref_;
  plan::Plan plan_;
  std::unique_ptr<rt::Executor> exec_;
  std::unique_ptr<rt::TokenFile> tokens_;
};

TEST_F(HfParity, FirstMicroBatchLogitsLossAndGradients) {
  rt::SequenceLoader loader(tokens_.get(), plan_.seq_len, 0, /*shuffle=*/false);
  std::vector<int32_t> ids(micro() * plan_.seq_len);
  ASSERT_TRUE(loader.next(micro(), ids.data()).is_ok());
  auto step1 = open_st(kFix + "/step1.safetensors");
  rt::StepState s;
  feed(ids.data());
  ASSERT_TRUE(exec_->run("eval_step", &s).is_ok());
  const rt::BufferTensor *logits = exec_->find("logits");
  ASSERT_NE(logits, nullptr);
  Err el = compare(logits->tensor.f32(), read_f32(*step1, "logits"));
  std::printf("step 1 logits: max abs err %.3e (max |logit| %.3f)\n", el.max_abs, el.ref_max);
  EXPECT_LT(el.max_abs, 1e-4);

  ASSERT_TRUE(exec_->run("micro_step", &s).is_ok());
  double want_loss = read_f32(*step1, "loss")[0];
  std::printf("step 1 loss: ours %.8f, HF %.8f\n", exec_->loss(), want_loss);
  EXPECT_NEAR(exec_->loss(), want_loss, 1e-5 * want_loss);

  double worst = 0;
  int n = 0;
  for (auto &bt : exec_->buffers(plan::BufferKind::Grad)) {
    std::vector<float> want = read_f32(*step1, "grad." + bt.buffer->param);
    ASSERT_EQ(int64_t(want.size()), bt.tensor.numel()) << bt.buffer->param;
    Err e = compare(bt.tensor.f32(), want);
    // fp32 on both sides: relative to the tensor's largest gradient.
    worst = std::max(worst, e.max_abs / e.ref_max);
    EXPECT_LT(e.max_abs, 1e-3 * e.ref_max) << bt.buffer->param;
    ++n;
  }
  EXPECT_EQ(n, 28);
  std::printf("step 1 adapter gradients: %d tensors, worst max-abs error / max |grad| = %.3e\n", n, worst);
}

TEST_F(HfParity, TwentyAdamWStepsLossesAdapterAndLogits) {
  rt::SequenceLoader loader(tokens_.get(), plan_.seq_len, 0, /*shuffle=*/false);
  std::vector<int32_t> ids(micro() * plan_.seq_len);
  const auto &losses = ref_["losses"];
  const auto &norms = ref_["grad_norms"];
  const auto &lrs = ref_["lrs"];
  double worst = 0;
  for (int64_t step = 1; step <= int64_t(losses.size()); ++step) {
    double loss = 0;
    rt::StepState s;
    for (int64_t m = 0; m < plan_.micro_batches; ++m) {
      ASSERT_TRUE(loader.next(micro(), ids.data()).is_ok());
      feed(ids.data());
      ASSERT_TRUE(exec_->run("micro_step", &s).is_ok());
      loss += exec_->loss() / plan_.micro_batches;
    }
    s.step = step;
    s.lr = rt::lr_at_step(plan_.hparams, step, int64_t(losses.size()));
    EXPECT_NEAR(s.lr, lrs[step - 1].get<double>(), 1e-12) << "step " << step;
    ASSERT_TRUE(exec_->run("optimizer_step", &s).is_ok());
    double want = losses[step - 1];
    double rel = std::fabs(loss - want) / want;
    worst = std::max(worst, rel);
    EXPECT_LT(rel, 1e-4) << "step " << step << ": ours " << loss << ", HF " << want;
    EXPECT_NEAR(s.grad_norm, norms[step - 1].get<double>(), 1e-4 * norms[step - 1].get<double>()) << "step " << step;
  }
  std::printf("20 steps: worst relative loss error %.3e\n", worst);

  auto final_adapter = rt::read_peft_adapter(kFix + "/adapter_final", nullptr);
  ASSERT_TRUE(final_adapter.is_ok());
  double worst_w = 0;
  for (auto &bt : exec_->buffers(plan::BufferKind::Trainable)) {
    const auto &want = (*final_adapter)[bt.buffer->name];
    ASSERT_EQ(int64_t(want.size()), bt.tensor.numel()) << bt.buffer->name;
    Err e = compare(bt.tensor.f32(), want);
    worst_w = std::max(worst_w, e.max_abs);
    EXPECT_LT(e.max_abs, 1e-5) << bt.buffer->name;
  }
  std::printf("trained adapter: max abs error %.3e\n", worst_w);

  // The trained model's logits on the validation batch, in micro-batch halves.
  auto fl = open_st(kFix + "/final_logits.safetensors");
  std::vector<float> want = read_f32(*fl, "logits");
  const TensorView *vids = fl->find("input_ids");
  ASSERT_NE(vids, nullptr);
  std::vector<int32_t> val(vids->numel());
  std::memcpy(val.data(), vids->data, vids->nbytes);
  int64_t per = micro() * plan_.seq_len * plan_.vocab_size;
  double worst_l = 0;
  for (int64_t m = 0; m < int64_t(val.size()) / (micro() * plan_.seq_len); ++m) {
    feed(val.data() + m * micro() * plan_.seq_len);
    rt::StepState s;
    ASSERT_TRUE(exec_->run("eval_step", &s).is_ok());
    std::vector<float> part(want.begin() + m * per, want.begin() + (m + 1) * per);
    worst_l = std::max(worst_l, compare(exec_->find("logits")->tensor.f32(), part).max_abs);
  }
  std::printf("trained model logits on the validation batch: max abs error %.3e\n", worst_l);
  EXPECT_LT(worst_l, 1e-4);
}

} // namespace
