// The training phase end to end on the CPU backend: the tiny LLaMA (tests/fixtures/onnx/
// tiny_llama.hf) with LoRA on every linear layer, through append-loss, autodiff, adamw and the
// lowering, executed by the runtime. Executable tests of the passes:
//  * autodiff: every adapter gradient agrees with central finite differences of the loss
//    computed by @eval_step (the un-differentiated copy), directional and per element;
//  * append-loss/autodiff keep the forward: micro_step's loss equals eval_step's, bit for bit;
//  * lowering: in-place adds and the memory plan change no number (plans with and without
//    in-place adds give identical losses and gradients);
//  * micro-batches: M=2 accumulation equals one batch of the same sequences.
#include <cmath>
#include <cstdio>
#include <random>

#include <gtest/gtest.h>

#include "frontend/hf_config.h"
#include "ir/Dialect.h"
#include "models/llama_builder.h"
#include "passes/lora/Passes.h"
#include "passes/lower/lower_to_plan.h"
#include "passes/train/Passes.h"
#include "runtime/core/executor.h"
#include "runtime/cpu/kernels.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/Pass/PassManager.h"

using namespace parallora;

namespace {

const std::string kModelDir = std::string(PARALLORA_SOURCE_DIR) + "/tests/fixtures/onnx/tiny_llama.hf";

plan::Plan compile(int64_t batch, int64_t seq, int64_t micro_batches, bool inplace = true, bool recompute = false) {
  mlir::MLIRContext ctx;
  ctx.loadDialect<pl::PlDialect, mlir::func::FuncDialect>();
  auto config = load_llama_config(kModelDir + "/config.json");
  EXPECT_TRUE(config.is_ok());
  auto module = build_llama_module(ctx, *config, batch / micro_batches, seq);
  mlir::PassManager pm(&ctx);
  InjectLoraOptions lo;
  lo.rank = 4;
  lo.alpha = 8;
  lo.targets = "all-linear";
  buildLoraPassPipeline(pm, lo);
  TrainPassPipelineOptions to;
  to.autodiff.microBatches = micro_batches;
  to.adamw.lr = 1e-3;
  to.recompute_layers = recompute;
  buildTrainPassPipeline(pm, to);
  EXPECT_TRUE(mlir::succeeded(pm.run(*module)));
  // PEFT starts B at zero, which makes every A gradient zero: give B values so both matter.
  mlir::OpBuilder b(&ctx);
  module->walk([&](pl::ParamOp p) {
    if (p.getName().endswith("lora_B.weight")) p.setInitAttr(b.getStringAttr("normal(0.0,0.05)"));
  });
  LowerOptions opts;
  opts.global_batch = batch;
  opts.micro_batches = micro_batches;
  opts.base_weights = kModelDir;
  opts.inplace_add = inplace;
  auto p = lower_to_plan(*module, opts);
  EXPECT_TRUE(mlir::succeeded(p));
  return *p;
}

struct Session {
  std::unique_ptr<rt::Executor> exec;
  std::vector<int32_t> ids;
};

Session load(const plan::Plan &p, uint64_t data_seed = 3) {
  rt::KernelRegistry reg;
  rt::cpu::register_kernels(reg);
  auto e = rt::Executor::create(p, 0, reg);
  EXPECT_TRUE(e.is_ok()) << e.status().message();
  Session r{std::move(*e), {}};
  Status st = r.exec->init_parameters(kModelDir, 11);
  EXPECT_TRUE(st.is_ok()) << st.message();
  std::mt19937 rng(data_seed);
  r.ids.resize(p.global_batch * p.seq_len);
  for (auto &t : r.ids) t = static_cast<int32_t>(rng() % p.vocab_size);
  return r;
}

/// Loss of `program` on rows [first, first + micro) of the batch.
double run_loss(Session &r, const plan::Plan &p, const std::string &program, int64_t first_row) {
  int64_t micro = p.global_batch / p.micro_batches, n = micro * p.seq_len;
  const int32_t *ids = r.ids.data() + first_row * p.seq_len;
  EXPECT_TRUE(r.exec->feed("input_ids", ids, n).is_ok());
  EXPECT_TRUE(r.exec->feed("labels", ids, n).is_ok());
  rt::StepState s;
  Status st = r.exec->run(program, &s);
  EXPECT_TRUE(st.is_ok()) << st.message();
  return r.exec->loss();
}

std::map<std::string, std::vector<float>> grads(const Session &r) {
  std::map<std::string, std::vector<float>> out;
  for (auto &bt : r.exec->buffers(plan::BufferKind::Grad)) {
    const float *d = bt.tensor.f32();
    out[bt.buffer->param].assign(d, d + bt.tensor.numel());
  }
  return out;
}

TEST(TrainStep, MicroStepLossEqualsEvalLoss) {
  plan::Plan p = compile(2, 16, 1);
  Session r = load(p);
  double eval = run_loss(r, p, "eval_step", 0);
  double train = run_loss(r, p, "micro_step", 0);
  EXPECT_EQ(eval, train);
  EXPECT_GT(eval, 4.0);  // ~ln(256) for a random small model
}

TEST(TrainStep, AdapterGradientsMatchFiniteDifferences) {
  plan::Plan p = compile(2, 16, 1);
  Session r = load(p);
  run_loss(r, p, "micro_step", 0);
  auto g = grads(r);
  ASSERT_EQ(g.size(), 28u);  // 2 layers x 7 linear layers x (A, B)

  auto trainables = r.exec->buffers(plan::BufferKind::Trainable);
  // Directional derivative along the gradient: d/dt L(theta + t g) = |g|^2.
  double gnorm2 = 0;
  for (auto &kv : g)
    for (float v : kv.second) gnorm2 += double(v) * v;
  ASSERT_GT(gnorm2, 0);
  const double h = 1e-2 / std::sqrt(gnorm2);
  auto shift_all = [&](double t) {
    for (auto &bt : trainables) {
      float *d = bt.tensor.f32();
      const auto &gv = g[bt.buffer->name];
      for (int64_t i = 0; i < bt.tensor.numel(); ++i) d[i] += static_cast<float>(t * gv[i]);
    }
  };
  shift_all(h);
  double lp = run_loss(r, p, "eval_step", 0);
  shift_all(-2 * h);
  double lm = run_loss(r, p, "eval_step", 0);
  shift_all(h);
  double fd = (lp - lm) / (2 * h);
  std::printf("directional derivative: autodiff %.6e, finite differences %.6e, rel err %.2e\n", gnorm2, fd,
              std::fabs(fd - gnorm2) / gnorm2);
  EXPECT_NEAR(fd, gnorm2, 2e-2 * gnorm2);

  // Per element: the 3 largest-magnitude entries of every adapter tensor.
  double worst = 0;
  for (auto &bt : trainables) {
    const auto &gv = g[bt.buffer->name];
    std::vector<int64_t> idx(gv.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
    std::partial_sort(idx.begin(), idx.begin() + 3, idx.end(),
                      [&](int64_t a, int64_t b) { return std::fabs(gv[a]) > std::fabs(gv[b]); });
    float *d = bt.tensor.f32();
    for (int k = 0; k < 3; ++k) {
      int64_t i = idx[k];
      float saved = d[i];
      const float eh = 1e-2f;
      d[i] = saved + eh;
      double a = run_loss(r, p, "eval_step", 0);
      d[i] = saved - eh;
      double b = run_loss(r, p, "eval_step", 0);
      d[i] = saved;
      double fd_i = (a - b) / (2.0 * eh);
      double err = std::fabs(fd_i - gv[i]);
      worst = std::max(worst, err / (std::fabs(gv[i]) + 1e-4));
      EXPECT_NEAR(fd_i, gv[i], 3e-4 + 3e-2 * std::fabs(gv[i])) << bt.buffer->name << "[" << i << "]";
    }
  }
  std::printf("per-element finite differences: worst relative error %.2e over %zu tensors\n", worst, trainables.size());
}

TEST(TrainStep, InPlaceAddsAndMemoryPlanChangeNoNumber) {
  plan::Plan a = compile(2, 16, 1, /*inplace=*/true), b = compile(2, 16, 1, /*inplace=*/false);
  EXPECT_LE(a.ranks[0].arena_bytes, b.ranks[0].arena_bytes);
  // cross_entropy_bwd writes the logits' gradient over the logits (they die there).
  auto ce_offsets = [](const plan::Plan &p) {
    for (const plan::Program &prog : p.ranks[0].programs)
      for (const plan::Instr &in : prog.instrs)
        if (in.op == "cross_entropy_bwd")
          return std::make_pair(p.ranks[0].buffers[in.inputs[0]].offset, p.ranks[0].buffers[in.outputs[0]].offset);
    return std::make_pair(int64_t(-1), int64_t(-2));
  };
  EXPECT_EQ(ce_offsets(a).first, ce_offsets(a).second);
  EXPECT_NE(ce_offsets(b).first, ce_offsets(b).second);
  Session ra = load(a), rb = load(b);
  EXPECT_EQ(run_loss(ra, a, "micro_step", 0), run_loss(rb, b, "micro_step", 0));
  auto ga = grads(ra), gb = grads(rb);
  for (auto &kv : ga) EXPECT_EQ(kv.second, gb[kv.first]) << kv.first;
  // The arena is much smaller than the sum of all temporaries (buffers are reused).
  int64_t sum = 0;
  for (auto &buf : a.ranks[0].buffers)
    if (buf.kind == plan::BufferKind::Activation) sum += buf.nbytes();
  std::printf("arena %lld bytes (in-place) / %lld bytes (no in-place), sum of temporaries %lld bytes\n",
              (long long)a.ranks[0].arena_bytes, (long long)b.ranks[0].arena_bytes, (long long)sum);
  EXPECT_LT(a.ranks[0].arena_bytes * 3, sum);
}

// --recompute-layers: the backward recomputes each layer's forward from the layer's input; the
// loss and every adapter gradient are bit-identical, and the arena shrinks.
TEST(TrainStep, RecomputeLayersChangesNoNumber) {
  plan::Plan a = compile(2, 16, 1, true, /*recompute=*/true), b = compile(2, 16, 1, true, false);
  int64_t clones = 0;
  for (const plan::Instr &in : a.ranks[0].programs[0].instrs) clones += in.flops == 0 && in.op == "lora_linear_fwd";
  EXPECT_GT(a.ranks[0].programs[0].instrs.size(), b.ranks[0].programs[0].instrs.size());
  // Per layer 6 of the 7 adapted projections are recomputed (with no model FLOPs): down_proj's
  // output only feeds the residual add that makes the layer's checkpoint, so nothing needs it.
  EXPECT_EQ(clones, 12);
  EXPECT_EQ(a.ranks[0].flops_per_step, b.ranks[0].flops_per_step);  // model FLOPs exclude recomputation
  EXPECT_LT(a.ranks[0].arena_bytes, b.ranks[0].arena_bytes);
  Session ra = load(a), rb = load(b);
  EXPECT_EQ(run_loss(ra, a, "micro_step", 0), run_loss(rb, b, "micro_step", 0));
  auto ga = grads(ra), gb = grads(rb);
  ASSERT_EQ(ga.size(), gb.size());
  for (auto &kv : ga) EXPECT_EQ(kv.second, gb[kv.first]) << kv.first;
  std::printf("arena %lld bytes with recomputation, %lld without\n", (long long)a.ranks[0].arena_bytes,
              (long long)b.ranks[0].arena_bytes);
}

TEST(TrainStep, MicroBatchAccumulationEqualsOneBatch) {
  plan::Plan one = compile(4, 16, 1), two = compile(4, 16, 2);
  Session r1 = load(one), r2 = load(two);
  double l1 = run_loss(r1, one, "micro_step", 0);
  double l2 = 0.5 * (run_loss(r2, two, "micro_step", 0) + run_loss(r2, two, "micro_step", 2));
  EXPECT_NEAR(l1, l2, 1e-5 * std::fabs(l1));
  auto g1 = grads(r1), g2 = grads(r2);
  double worst = 0;
  for (auto &kv : g1)
    for (size_t i = 0; i < kv.second.size(); ++i) {
      double d = std::fabs(kv.second[i] - g2[kv.first][i]);
      worst = std::max(worst, d);
      ASSERT_NEAR(kv.second[i], g2[kv.first][i], 1e-6 + 1e-4 * std::fabs(kv.second[i])) << kv.first << "[" << i << "]";
    }
  std::printf("M=2 vs M=1: loss %.8f vs %.8f, max abs grad diff %.3e\n", l2, l1, worst);
}

} // namespace
