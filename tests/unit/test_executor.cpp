// Tests for runtime/core/executor: kernel availability at load, buffer storage (arena
// aliasing, absent operands), feeding, running (error prefixes, profiling), parameter init
// from checkpoints (dtype conversion, shape errors, slices) and init specs, restoring
// trainables / optimizer state, arena slots (pipelines), the communicator in every call, sliced
// (tensor-parallel) init, and a small forward + loss through the real CPU kernels.
#include "runtime/core/executor.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/base/safetensors.h"
#include "runtime/plan/plan_io.h"
#include "runtime/plan/weight_init.h"
#include "runtime/comm/comm.h"
#include "runtime/cpu/kernels.h"

using namespace parallora;
using namespace parallora::rt;
using plan::BufferKind;
using plan::ElemType;

namespace {

struct PlanBuilder {
  plan::Plan p;
  PlanBuilder() {
    p.producer = "test";
    p.global_batch = 1;
    p.seq_len = 3;
    p.vocab_size = 4;
    p.ranks.resize(1);
    p.ranks[0].rank = 0;
    p.ranks[0].programs.push_back({"micro_step", {}});  // every single-stage plan has one
  }
  plan::RankPlan &r() { return p.ranks[0]; }
  int32_t buffer(const std::string &name, BufferKind kind, std::vector<int64_t> shape, ElemType dtype = ElemType::F32,
                 const std::string &init = "", int64_t offset = -1, const std::string &param = "") {
    plan::Buffer b;
    b.id = static_cast<int32_t>(r().buffers.size());
    b.name = name;
    b.kind = kind;
    b.dtype = dtype;
    b.shape = std::move(shape);
    b.init = init;
    b.offset = offset;
    b.param = param;
    if (kind == BufferKind::Activation) r().arena_bytes = std::max(r().arena_bytes, offset + b.nbytes());
    r().buffers.push_back(b);
    return b.id;
  }
  plan::Instr &instr(const std::string &program, const std::string &op, std::vector<int32_t> in,
                     std::vector<int32_t> out, const std::string &loc = "") {
    plan::Program *prog = nullptr;
    for (auto &pr : r().programs)
      if (pr.name == program) prog = &pr;
    if (!prog) {
      r().programs.push_back({program, {}});
      prog = &r().programs.back();
    }
    plan::Instr i;
    i.op = op;
    i.inputs = std::move(in);
    i.outputs = std::move(out);
    i.loc = loc;
    prog->instrs.push_back(i);
    return prog->instrs.back();
  }
};

class ExecutorTest : public testing::Test {
protected:
  void SetUp() override {
    std::string templ = testing::TempDir() + "executor_test_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::string path(const std::string &name) const { return dir_ + "/" + name; }
  std::string dir_;
};

// y = x * scale, elementwise (f32)
Status scale_kernel(KernelCall &c) {
  const Tensor &x = c.in[0];
  const Tensor &y = c.out[0];
  double s = c.attr_f("scale", 1.0);
  for (int64_t i = 0; i < x.numel(); ++i) y.f32()[i] = static_cast<float>(x.f32()[i] * s);
  return Status::ok();
}

TEST_F(ExecutorTest, ReportsAllMissingKernels) {
  PlanBuilder b;
  int32_t x = b.buffer("x", BufferKind::Input, {2});
  int32_t y = b.buffer("%1", BufferKind::Activation, {2}, ElemType::F32, "", 0);
  b.instr("micro_step", "foo", {x}, {y});
  b.instr("micro_step", "scale", {x}, {y});
  b.instr("micro_step", "foo", {x}, {y});
  b.instr("micro_step", "bar", {x}, {y});
  b.instr("eval_step", "foo", {x}, {y});
  KernelRegistry reg;
  reg.add("scale", scale_kernel);
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_FALSE(ex.is_ok());
  EXPECT_EQ(ex.message(), "plan needs kernels not in the cpu backend: foo (3 uses), bar");
  auto ex2 = Executor::create(b.p, 1, reg);
  ASSERT_FALSE(ex2.is_ok());
  EXPECT_NE(ex2.message().find("rank 1 is not in the plan"), std::string::npos);
}

TEST_F(ExecutorTest, RejectsInvalidPlan) {
  PlanBuilder b;
  int32_t x = b.buffer("x", BufferKind::Input, {2});
  b.instr("micro_step", "scale", {x}, {7});
  KernelRegistry reg;
  reg.add("scale", scale_kernel);
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_FALSE(ex.is_ok());
  EXPECT_NE(ex.message().find("invalid plan: rank 0: program 'micro_step' instruction #0"), std::string::npos)
      << ex.message();
}

TEST_F(ExecutorTest, StorageFeedRunProfile) {
  PlanBuilder b;
  int32_t ids = b.buffer("input_ids", BufferKind::Input, {2, 2}, ElemType::I32);
  int32_t a = b.buffer("%a", BufferKind::Activation, {4}, ElemType::F32, "", 0);
  int32_t v = b.buffer("%view", BufferKind::Activation, {2, 2}, ElemType::F32, "", 0);  // same bytes as %a
  int32_t c = b.buffer("%c", BufferKind::Activation, {4}, ElemType::F32, "", 64);
  int32_t loss = b.buffer("loss", BufferKind::Output, {});
  b.r().arena_bytes = 100;
  // "tofloat": ids -> f32; then scale twice; then sum into loss; with an absent operand.
  KernelRegistry reg;
  reg.add("tofloat", [](KernelCall &k) {
    for (int64_t i = 0; i < k.in[0].numel(); ++i) k.out[0].f32()[i] = static_cast<float>(k.in[0].i32()[i]);
    return Status::ok();
  });
  reg.add("scale", scale_kernel);
  reg.add("sum", [](KernelCall &k) {
    if (k.in[1].present()) return Status::error("second operand should be absent");
    float s = 0;
    for (int64_t i = 0; i < k.in[0].numel(); ++i) s += k.in[0].f32()[i];
    k.out[0].f32()[0] = s;
    return Status::ok();
  });
  reg.add("fail", [](KernelCall &k) { return Status::error("token id " + std::to_string(k.in[0].i32()[0]) + " is bad"); });
  b.instr("micro_step", "tofloat", {ids}, {a});
  b.instr("micro_step", "scale", {v}, {c}).attrs["scale"] = 0.5;
  b.instr("micro_step", "sum", {c, -1}, {loss}, "model.norm");
  b.instr("eval_step", "fail", {ids}, {c}, "model.embed_tokens");
  auto ex_or = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;

  EXPECT_EQ(ex.arena_bytes(), 100);
  EXPECT_EQ(ex.persistent_bytes(), 128);  // input_ids (16 B) and loss (4 B), each padded to 64
  EXPECT_EQ(ex.buffer(a).tensor.data, ex.buffer(v).tensor.data);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ex.buffer(a).tensor.data) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ex.buffer(ids).tensor.data) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ex.buffer(loss).tensor.data) % 64, 0u);
  EXPECT_EQ(static_cast<uint8_t *>(ex.buffer(c).tensor.data) - static_cast<uint8_t *>(ex.buffer(a).tensor.data), 64);
  EXPECT_EQ(ex.find("%view")->buffer->id, v);
  EXPECT_EQ(ex.find("nope"), nullptr);
  EXPECT_EQ(ex.buffers(BufferKind::Activation).size(), 3u);

  std::vector<int32_t> data = {1, 2, 3, 4};
  Status s = ex.feed("input_ids", data.data(), 3);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "input 'input_ids' takes 4 values (2x2), got 3");
  s = ex.feed("labels", data.data(), 4);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "the plan has no input 'labels'");
  ASSERT_TRUE(ex.feed("input_ids", data.data(), 4).is_ok());

  ex.enable_profile(true);
  ASSERT_TRUE(ex.run("micro_step", nullptr).is_ok());
  EXPECT_DOUBLE_EQ(ex.loss(), 5.0);
  std::vector<size_t> seen;
  ASSERT_TRUE(ex.run("micro_step", nullptr, [&](size_t i, const KernelCall &k) {
                  seen.push_back(i);
                  if (k.instr->op == "scale") EXPECT_FLOAT_EQ(k.out[0].f32()[3], 2.0f);
                }).is_ok());
  EXPECT_EQ(seen, (std::vector<size_t>{0, 1, 2}));
  ASSERT_EQ(ex.profile().count("scale"), 1u);
  EXPECT_EQ(ex.profile().at("scale").calls, 2);
  EXPECT_EQ(ex.profile().at("sum").calls, 2);
  EXPECT_GE(ex.profile().at("sum").seconds, 0.0);

  s = ex.run("eval_step", nullptr);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "instruction #0 fail (model.embed_tokens): token id 1 is bad");
  s = ex.run("optimizer_step", nullptr);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "the plan has no program 'optimizer_step' (it has: eval_step, micro_step)");
  EXPECT_TRUE(ex.has_program("eval_step"));
  EXPECT_FALSE(ex.has_program("optimizer_step"));
}

TEST_F(ExecutorTest, LossIsNanWithoutLossOutput) {
  PlanBuilder b;
  b.buffer("x", BufferKind::Input, {1});
  KernelRegistry reg;
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  EXPECT_TRUE(std::isnan((*ex)->loss()));
}

uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);  // exact for values with 8 mantissa bits
}

TEST_F(ExecutorTest, InitParameters) {
  // Checkpoint: "w" (2x3, BF16), "big" (4x4, F32) of which the plan takes rows 1..2, cols 2..3.
  std::vector<float> w = {1, -2, 0.5, 3, 0.25, -8};
  std::vector<uint16_t> w_bf16;
  for (float f : w) w_bf16.push_back(to_bf16(f));
  std::vector<float> big(16);
  for (int i = 0; i < 16; ++i) big[i] = static_cast<float>(i);
  ASSERT_TRUE(write_safetensors(path("model.safetensors"), {{"w", DType::BF16, {2, 3}, w_bf16.data()},
                                                            {"big", DType::F32, {4, 4}, big.data()}})
                  .is_ok());

  PlanBuilder b;
  int32_t pw = b.buffer("w", BufferKind::Param, {2, 3}, ElemType::F32, "checkpoint");
  int32_t pbig = b.buffer("big", BufferKind::Param, {2, 2}, ElemType::F32, "checkpoint");
  b.r().buffers[pbig].slice = {{1, 2}, {2, 2}};
  int32_t lora_a = b.buffer("lora_A", BufferKind::Trainable, {2, 3}, ElemType::F32, "kaiming_uniform(a=sqrt(5))");
  int32_t lora_b = b.buffer("lora_B", BufferKind::Trainable, {3, 2}, ElemType::F32, "zeros");
  int32_t g = b.buffer("grad.lora_A", BufferKind::Grad, {2, 3}, ElemType::F32, "", -1, "lora_A");
  b.buffer("lora_A.exp_avg", BufferKind::OptState, {2, 3}, ElemType::F32, "", -1, "lora_A");
  b.buffer("lora_A.exp_avg_sq", BufferKind::OptState, {2, 3}, ElemType::F32, "", -1, "lora_A");
  KernelRegistry reg;
  auto ex_or = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;

  Status s = ex.init_parameters("", 7);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("parameter 'w' (and 1 more) must be loaded from a checkpoint"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("--weights"), std::string::npos) << s.message();

  ex.buffer(g).tensor.f32()[0] = 9;  // zeroed by init
  ASSERT_TRUE(ex.init_parameters(dir_, 7).is_ok());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ex.buffer(pw).tensor.f32()[i], w[i]);
  const float *sl = ex.buffer(pbig).tensor.f32();
  EXPECT_EQ(std::vector<float>(sl, sl + 4), (std::vector<float>{6, 7, 10, 11}));
  EXPECT_EQ(ex.buffer(g).tensor.f32()[0], 0.0f);
  std::vector<float> expect_a(6);
  init_tensor(*parse_init_spec("kaiming_uniform(a=sqrt(5))"), "lora_A", 7, expect_a.data(), {2, 3});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ex.buffer(lora_a).tensor.f32()[i], expect_a[i]);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ex.buffer(lora_b).tensor.f32()[i], 0.0f);

  // Trainables / optimizer state.
  s = ex.set_trainables({{"lora_A", std::vector<float>(6, 1.f)}, {"lora_C", {1.f}}});
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "adapter tensors do not match the plan: missing lora_B; not in the plan lora_C");
  std::map<std::string, std::vector<int64_t>> shapes = {{"lora_A", {3, 2}}, {"lora_B", {3, 2}}};
  s = ex.set_trainables({{"lora_A", std::vector<float>(6, 1.f)}, {"lora_B", std::vector<float>(6, 2.f)}}, &shapes);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "adapter tensors do not match the plan: wrong shape: lora_A is 3x2, the plan needs 2x3");
  s = ex.set_trainables({{"lora_A", std::vector<float>(5, 1.f)}, {"lora_B", std::vector<float>(6, 2.f)}});
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("lora_A has 5 values, the plan needs 6 (2x3)"), std::string::npos) << s.message();
  ASSERT_TRUE(ex.set_trainables({{"lora_A", std::vector<float>(6, 1.f)}, {"lora_B", std::vector<float>(6, 2.f)}}).is_ok());
  EXPECT_EQ(ex.buffer(lora_b).tensor.f32()[5], 2.0f);
  ASSERT_TRUE(ex.set_optimizer_state({{"lora_A.exp_avg", std::vector<float>(6, 3.f)},
                                      {"lora_A.exp_avg_sq", std::vector<float>(6, 4.f)}})
                  .is_ok());
  auto opt = ex.buffers(BufferKind::OptState);
  ASSERT_EQ(opt.size(), 2u);
  EXPECT_EQ(opt[1].tensor.f32()[2], 4.0f);
  EXPECT_FALSE(ex.set_optimizer_state({}).is_ok());
}

TEST_F(ExecutorTest, CheckpointErrors) {
  std::vector<float> w(6, 1.f);
  ASSERT_TRUE(write_safetensors(path("m.safetensors"), {{"w", DType::F32, {3, 2}, w.data()}}).is_ok());
  {
    PlanBuilder b;
    b.buffer("w", BufferKind::Param, {2, 3}, ElemType::F32, "checkpoint");
    KernelRegistry reg;
    auto ex = Executor::create(b.p, 0, reg);
    ASSERT_TRUE(ex.is_ok());
    Status s = (*ex)->init_parameters(path("m.safetensors"), 0);
    ASSERT_FALSE(s.is_ok());
    EXPECT_EQ(s.message(), path("m.safetensors") + ": tensor 'w' has shape 3x2 but the plan needs 2x3");
  }
  {
    PlanBuilder b;
    b.buffer("w", BufferKind::Param, {3, 2}, ElemType::F32, "checkpoint");
    b.buffer("q", BufferKind::Param, {3, 2}, ElemType::F32, "checkpoint");
    b.buffer("k", BufferKind::Param, {3, 2}, ElemType::F32, "");
    KernelRegistry reg;
    auto ex = Executor::create(b.p, 0, reg);
    ASSERT_TRUE(ex.is_ok());
    Status s = (*ex)->init_parameters(path("m.safetensors"), 0);
    ASSERT_FALSE(s.is_ok());
    EXPECT_EQ(s.message(), path("m.safetensors") + " lacks 2 tensor(s) the plan needs: q, k");
    s = (*ex)->init_parameters(path("missing.safetensors"), 0);
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("missing.safetensors"), std::string::npos) << s.message();
  }
  {
    PlanBuilder b;
    b.buffer("t", BufferKind::Trainable, {2}, ElemType::F32, "gaussian(1)");
    KernelRegistry reg;
    auto ex = Executor::create(b.p, 0, reg);
    ASSERT_TRUE(ex.is_ok());
    Status s = (*ex)->init_parameters("", 0);
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("parameter 't'"), std::string::npos) << s.message();
  }
}

// Issue 18 item 1: a plan compiled without --weights has random-init specs on its frozen
// parameters; weights given at run time must replace them (or fail), never be ignored.
TEST_F(ExecutorTest, GivenWeightsOverrideRandomInitOfBaseParameters) {
  std::vector<float> w = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(write_safetensors(path("m.safetensors"), {{"w", DType::F32, {2, 3}, w.data()}}).is_ok());
  std::vector<float> wrong(6, 1.f);
  ASSERT_TRUE(write_safetensors(path("wrong.safetensors"), {{"w", DType::F32, {3, 2}, wrong.data()}}).is_ok());
  std::vector<int32_t> ints(6, 1);
  ASSERT_TRUE(write_safetensors(path("ints.safetensors"), {{"w", DType::I32, {2, 3}, ints.data()}}).is_ok());
  PlanBuilder b;
  int32_t pw = b.buffer("w", BufferKind::Param, {2, 3}, ElemType::F32, "normal(0.0,0.02)");
  int32_t ta = b.buffer("lora_A", BufferKind::Trainable, {2, 3}, ElemType::F32, "zeros");
  KernelRegistry reg;
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  EXPECT_EQ((*ex)->base_weights_used(), "");
  ASSERT_TRUE((*ex)->init_parameters("", 5).is_ok());
  EXPECT_EQ((*ex)->base_weights_used(), "random init, seed 5");
  EXPECT_NE((*ex)->buffer(pw).tensor.f32()[0], 1.0f);

  ASSERT_TRUE((*ex)->init_parameters(path("m.safetensors"), 5).is_ok());
  const float *got = (*ex)->buffer(pw).tensor.f32();
  EXPECT_EQ(std::vector<float>(got, got + 6), w);
  EXPECT_EQ((*ex)->buffer(ta).tensor.f32()[0], 0.0f);  // adapters keep their init spec
  char crc[16];
  std::snprintf(crc, sizeof crc, "%08x", plan::crc32(w.data(), w.size() * 4));
  EXPECT_EQ((*ex)->base_weights_used(),
            path("m.safetensors") + " (crc32 " + crc + " of the 1 tensors read, raw bytes in name order)");

  Status s = (*ex)->init_parameters(path("wrong.safetensors"), 5);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), path("wrong.safetensors") + ": tensor 'w' has shape 3x2 but the plan needs 2x3");
  s = (*ex)->init_parameters(path("missing_dir"), 5);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("missing_dir"), std::string::npos) << s.message();
  s = (*ex)->init_parameters(path("ints.safetensors"), 5);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("ints.safetensors"), std::string::npos) << s.message();
}

// The hash of the base weights read is the CRC32 chained over the tensors' raw bytes in name
// order, whatever the order of the plan's buffers or of the file (each tensor's CRC is taken
// before its pages are released and the chain assembled with crc32_combine: checked here
// against plan::crc32 chained directly, on tensors of different sizes, the file in another order).
TEST_F(ExecutorTest, BaseWeightsHashChainsTheTensorsInNameOrder) {
  std::vector<float> z(1000), a(7), m(4096);
  for (size_t i = 0; i < z.size(); ++i) z[i] = float(i) * 0.5f - 3.0f;
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) + 0.25f;
  for (size_t i = 0; i < m.size(); ++i) m[i] = std::sin(float(i));
  ASSERT_TRUE(write_safetensors(path("three.safetensors"), {{"z", DType::F32, {10, 100}, z.data()},
                                                            {"m", DType::F32, {64, 64}, m.data()},
                                                            {"a", DType::F32, {7}, a.data()}})
                  .is_ok());
  PlanBuilder b;
  const int32_t pm = b.buffer("m", BufferKind::Param, {64, 64}, ElemType::F32, "checkpoint");
  const int32_t pz = b.buffer("z", BufferKind::Param, {10, 100}, ElemType::F32, "checkpoint");
  const int32_t pa = b.buffer("a", BufferKind::Param, {7}, ElemType::F32, "checkpoint");
  KernelRegistry reg;
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  ASSERT_TRUE((*ex)->init_parameters(path("three.safetensors"), 5).is_ok());
  for (auto [id, want] : {std::pair{pm, &m}, std::pair{pz, &z}, std::pair{pa, &a}}) {
    const float *got = (*ex)->buffer(id).tensor.f32();
    EXPECT_EQ(std::vector<float>(got, got + want->size()), *want);
  }
  uint32_t chain = plan::crc32(a.data(), a.size() * 4);
  chain = plan::crc32(m.data(), m.size() * 4, chain);
  chain = plan::crc32(z.data(), z.size() * 4, chain);
  char crc[16];
  std::snprintf(crc, sizeof crc, "%08x", chain);
  EXPECT_EQ((*ex)->base_weights_used(),
            path("three.safetensors") + " (crc32 " + crc + " of the 3 tensors read, raw bytes in name order)");
}

// Issue 18 item 9: a PEFT ONNX export's adapter values travel in Plan::adapter_weights; they
// are the Trainables' init whatever base weights are given (--weights overrides only those).
TEST_F(ExecutorTest, TrainablesWithCheckpointInitComeFromThePlansAdapterWeights) {
  std::vector<float> w = {1, 2, 3, 4, 5, 6}, a = {7, 8, 9, 10, 11, 12};
  ASSERT_TRUE(write_safetensors(path("plan.weights.safetensors"),
                                {{"w", DType::F32, {2, 3}, w.data()}, {"lora_A", DType::F32, {2, 3}, a.data()}})
                  .is_ok());
  std::vector<float> w2(6, 0.5f);
  ASSERT_TRUE(write_safetensors(path("hf.safetensors"), {{"w", DType::F32, {2, 3}, w2.data()}}).is_ok());
  PlanBuilder b;
  b.p.adapter_weights = path("plan.weights.safetensors");
  int32_t pw = b.buffer("w", BufferKind::Param, {2, 3}, ElemType::F32, "checkpoint");
  int32_t ta = b.buffer("lora_A", BufferKind::Trainable, {2, 3}, ElemType::F32, "checkpoint");
  KernelRegistry reg;
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  ASSERT_TRUE((*ex)->init_parameters(path("hf.safetensors"), 0).is_ok());
  const float *gw = (*ex)->buffer(pw).tensor.f32(), *ga = (*ex)->buffer(ta).tensor.f32();
  EXPECT_EQ(std::vector<float>(gw, gw + 6), w2);
  EXPECT_EQ(std::vector<float>(ga, ga + 6), a);
  ASSERT_TRUE((*ex)->init_parameters(path("plan.weights.safetensors"), 0).is_ok());
  EXPECT_EQ(std::vector<float>(gw, gw + 6), w);

  PlanBuilder bad;
  bad.p.adapter_weights = path("hf.safetensors");  // no lora_A in it
  bad.buffer("lora_A", BufferKind::Trainable, {2, 3}, ElemType::F32, "checkpoint");
  auto ex2 = Executor::create(bad.p, 0, reg);
  ASSERT_TRUE(ex2.is_ok()) << ex2.message();
  Status s = (*ex2)->init_parameters("", 0);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "the plan's adapter init " + path("hf.safetensors") +
                             " lacks 1 tensor(s) the plan needs: lora_A; the adapters' values come from --init-adapter "
                             "<PEFT adapter dir>, or recompile the ONNX export with lora-compile -o, which carries its "
                             "adapter values in the plan");
  // A version-2 plan of a PEFT export (no adapter_weights): the hint names --init-adapter.
  PlanBuilder old;
  old.buffer("lora_A", BufferKind::Trainable, {2, 3}, ElemType::F32, "checkpoint");
  auto ex3 = Executor::create(old.p, 0, reg);
  ASSERT_TRUE(ex3.is_ok()) << ex3.message();
  s = (*ex3)->init_parameters("", 0);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("--init-adapter"), std::string::npos) << s.message();
}

// embedding -> linear (lm head) -> shifted cross-entropy through the real CPU kernels.
TEST_F(ExecutorTest, ForwardAndLossWithCpuKernels) {
  const int64_t V = 4, D = 2, T = 3;
  PlanBuilder b;
  int32_t ids = b.buffer("input_ids", BufferKind::Input, {1, T}, ElemType::I32);
  int32_t labels = b.buffer("labels", BufferKind::Input, {1, T}, ElemType::I32);
  int32_t emb = b.buffer("model.embed_tokens.weight", BufferKind::Param, {V, D}, ElemType::F32, "normal(0,1)");
  int32_t head = b.buffer("lm_head.weight", BufferKind::Param, {V, D}, ElemType::F32, "normal(0,1)");
  int32_t h = b.buffer("%h", BufferKind::Activation, {1, T, D}, ElemType::F32, "", 0);
  int32_t logits = b.buffer("logits", BufferKind::Activation, {1, T, V}, ElemType::F32, "", 64);
  int32_t loss = b.buffer("loss", BufferKind::Output, {});
  b.instr("micro_step", "embedding_fwd", {ids, emb}, {h}, "model.embed_tokens");
  b.instr("micro_step", "linear_fwd", {h, head, -1}, {logits}, "lm_head");
  auto &ce = b.instr("micro_step", "cross_entropy_fwd", {logits, labels}, {loss});
  ce.attrs["ignore_index"] = int64_t{-100};
  ce.attrs["shift"] = int64_t{1};
  KernelRegistry reg;
  cpu::register_kernels(reg);
  auto ex_or = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;
  ASSERT_TRUE(ex.init_parameters("", 3).is_ok());
  std::vector<int32_t> tokens = {1, 3, 2};
  ASSERT_TRUE(ex.feed("input_ids", tokens.data(), T).is_ok());
  ASSERT_TRUE(ex.feed("labels", tokens.data(), T).is_ok());
  Status s = ex.run("micro_step", nullptr);
  ASSERT_TRUE(s.is_ok()) << s.message();

  const float *E = ex.buffer(emb).tensor.f32(), *W = ex.buffer(head).tensor.f32();
  double expect = 0;
  for (int t = 0; t + 1 < T; ++t) {
    std::vector<double> z(V);
    double mx = -1e30;
    for (int v = 0; v < V; ++v) {
      z[v] = 0;
      for (int d = 0; d < D; ++d) z[v] += double(E[tokens[t] * D + d]) * W[v * D + d];
      mx = std::max(mx, z[v]);
    }
    double lse = 0;
    for (double x : z) lse += std::exp(x - mx);
    lse = mx + std::log(lse);
    expect += lse - z[tokens[t + 1]];
  }
  expect /= (T - 1);
  EXPECT_NEAR(ex.loss(), expect, 1e-5);
  EXPECT_NEAR(ex.buffer(logits).tensor.f32()[V + 2],
              double(E[tokens[1] * D]) * W[2 * D] + double(E[tokens[1] * D + 1]) * W[2 * D + 1], 1e-5);

  // A bad token id comes back with the instruction's prefix.
  std::vector<int32_t> bad = {1, 9, 2};
  ASSERT_TRUE(ex.feed("input_ids", bad.data(), T).is_ok());
  s = ex.run("micro_step", nullptr);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message().rfind("instruction #0 embedding_fwd (model.embed_tokens): ", 0), 0u) << s.message();
  EXPECT_NE(s.message().find("9"), std::string::npos) << s.message();
}

// Two slots: separate arenas and Input/Output copies, shared parameters and gradients.
TEST_F(ExecutorTest, SlotsKeepSeparateActivationsAndInputs) {
  PlanBuilder b;
  b.r().slots = 2;
  int32_t ids = b.buffer("input_ids", BufferKind::Input, {3}, ElemType::I32);
  int32_t w = b.buffer("w", BufferKind::Trainable, {3}, ElemType::F32, "zeros");
  int32_t g = b.buffer("w.grad", BufferKind::Grad, {3}, ElemType::F32, "", -1, "w");
  int32_t act = b.buffer("%act", BufferKind::Activation, {3}, ElemType::F32, "", 0);
  int32_t loss = b.buffer("loss", BufferKind::Output, {});
  KernelRegistry reg;
  reg.add("tofloat", [](KernelCall &k) {  // act = ids + w
    for (int64_t i = 0; i < k.in[0].numel(); ++i) k.out[0].f32()[i] = static_cast<float>(k.in[0].i32()[i]) + k.in[1].f32()[i];
    return Status::ok();
  });
  reg.add("sum", [](KernelCall &k) {  // loss = sum(act); grad += act
    float s = 0;
    for (int64_t i = 0; i < k.in[0].numel(); ++i) {
      s += k.in[0].f32()[i];
      k.out[1].f32()[i] += k.in[0].f32()[i];
    }
    k.out[0].f32()[0] = s;
    return Status::ok();
  });
  b.instr("forward", "tofloat", {ids, w}, {act});
  b.instr("backward", "sum", {act}, {loss, g});
  b.r().programs.erase(b.r().programs.begin());  // forward/backward instead of micro_step...
  b.p.mesh = {1, 1, 2};                            // ...which needs a pipelined plan: stage 0 of 2
  b.p.world_size = 2;
  b.p.pipeline_schedule = "gpipe";
  b.instr("optimizer_step", "sum", {act}, {loss, g});
  plan::RankPlan stage1 = b.r();
  stage1.rank = 1;
  stage1.pp_stage = 1;
  stage1.slots = 1;
  b.p.ranks.push_back(stage1);
  auto ex_or = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;
  ASSERT_EQ(ex.slots(), 2);
  ASSERT_TRUE(ex.init_parameters("", 1).is_ok());

  // Storage: activations and Input/Output per slot, Trainable/Grad shared.
  EXPECT_NE(ex.buffer(act, 0).tensor.data, ex.buffer(act, 1).tensor.data);
  EXPECT_NE(ex.buffer(ids, 0).tensor.data, ex.buffer(ids, 1).tensor.data);
  EXPECT_NE(ex.buffer(loss, 0).tensor.data, ex.buffer(loss, 1).tensor.data);
  EXPECT_EQ(ex.buffer(w, 0).tensor.data, ex.buffer(w, 1).tensor.data);
  EXPECT_EQ(ex.buffer(g, 0).tensor.data, ex.buffer(g, 1).tensor.data);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ex.buffer(act, 1).tensor.data) % 64, 0u);
  EXPECT_EQ(ex.find("input_ids", 1)->tensor.data, ex.buffer(ids, 1).tensor.data);
  EXPECT_EQ(ex.buffers(BufferKind::Input, 1)[0].tensor.data, ex.buffer(ids, 1).tensor.data);
  // input_ids x2, w, w.grad, loss x2: six 64-byte blocks.
  EXPECT_EQ(ex.persistent_bytes(), 6 * 64);

  // GPipe order: both forwards, then both backwards; each slot keeps its own micro-batch.
  std::vector<int32_t> a = {1, 2, 3}, c = {10, 20, 30};
  ASSERT_TRUE(ex.feed("input_ids", a.data(), 3, 0).is_ok());
  ASSERT_TRUE(ex.run("forward", nullptr, 0).is_ok());
  ASSERT_TRUE(ex.feed("input_ids", c.data(), 3, 1).is_ok());
  ASSERT_TRUE(ex.run("forward", nullptr, 1).is_ok());
  EXPECT_EQ(ex.buffer(ids, 0).tensor.i32()[2], 3);
  EXPECT_EQ(ex.buffer(act, 0).tensor.f32()[2], 3.0f);  // not overwritten by slot 1's forward
  EXPECT_EQ(ex.buffer(act, 1).tensor.f32()[2], 30.0f);
  ASSERT_TRUE(ex.run("backward", nullptr, 0).is_ok());
  EXPECT_DOUBLE_EQ(ex.loss(0), 6.0);
  EXPECT_DOUBLE_EQ(ex.loss(1), 0.0);
  ASSERT_TRUE(ex.run("backward", nullptr, 1).is_ok());
  EXPECT_DOUBLE_EQ(ex.loss(1), 60.0);
  EXPECT_DOUBLE_EQ(ex.loss(0), 6.0);
  EXPECT_EQ(ex.buffer(g).tensor.f32()[0], 11.0f);  // gradients accumulate across slots
  EXPECT_EQ(ex.buffer(g, 1).tensor.f32()[2], 33.0f);

  // Out-of-range slots.
  Status s = ex.run("forward", nullptr, 2);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "program 'forward': slot 2 is out of range (the rank has 2 slots)");
  s = ex.feed("input_ids", a.data(), 3, -1);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "feed 'input_ids': slot -1 is out of range (the rank has 2 slots)");
  EXPECT_TRUE(std::isnan(ex.loss(5)));
  EXPECT_EQ(ex.find("input_ids", 2), nullptr);
}

TEST_F(ExecutorTest, CommunicatorReachesEveryCall) {
  PlanBuilder b;
  b.r().slots = 2;
  int32_t x = b.buffer("x", BufferKind::Input, {1}, ElemType::F32);
  std::vector<Communicator *> seen;
  KernelRegistry reg;
  reg.add("probe", [&](KernelCall &k) {
    seen.push_back(k.comm);
    return Status::ok();
  });
  b.instr("micro_step", "probe", {x}, {});
  b.instr("eval_step", "probe", {x}, {});
  auto comm = make_local_communicator();
  auto ex = Executor::create(b.p, 0, reg, "cpu", comm.get());
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  EXPECT_EQ((*ex)->communicator(), comm.get());
  ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
  ASSERT_TRUE((*ex)->run("micro_step", nullptr, 1).is_ok());
  ASSERT_TRUE((*ex)->run("eval_step", nullptr).is_ok());
  EXPECT_EQ(seen, (std::vector<Communicator *>{comm.get(), comm.get(), comm.get()}));
  auto ex2 = Executor::create(b.p, 0, reg);  // default: no communicator
  ASSERT_TRUE(ex2.is_ok());
  seen.clear();
  ASSERT_TRUE((*ex2)->run("micro_step", nullptr).is_ok());
  EXPECT_EQ(seen, (std::vector<Communicator *>{nullptr}));
}

// A tensor-parallel shard drawn from an init spec equals that slice of the single-device init.
TEST_F(ExecutorTest, SlicedInitEqualsSliceOfFullInit) {
  const std::vector<int64_t> full = {4, 6};
  for (const std::string spec : {"kaiming_uniform(a=sqrt(5))", "normal(0.0,0.02)"}) {
    std::vector<float> whole(24);
    init_tensor(*parse_init_spec(spec), "lora_A", 11, whole.data(), full);
    // Column shards [0:3) and [3:6) of all rows, and a row shard [2:4) of all columns.
    std::vector<std::vector<std::pair<int64_t, int64_t>>> slices = {
        {{0, 4}, {0, 3}}, {{0, 4}, {3, 3}}, {{2, 2}, {0, 6}}};
    for (const auto &slice : slices) {
      PlanBuilder b;
      int32_t id = b.buffer("lora_A", BufferKind::Trainable, {slice[0].second, slice[1].second}, ElemType::F32, spec);
      b.r().buffers[id].slice = slice;
      b.r().buffers[id].full_shape = full;
      KernelRegistry reg;
      auto ex = Executor::create(b.p, 0, reg);
      ASSERT_TRUE(ex.is_ok()) << ex.message();
      ASSERT_TRUE((*ex)->init_parameters("", 11).is_ok());
      const float *got = (*ex)->buffer(id).tensor.f32();
      for (int64_t r = 0; r < slice[0].second; ++r)
        for (int64_t c = 0; c < slice[1].second; ++c)
          EXPECT_EQ(got[r * slice[1].second + c], whole[(slice[0].first + r) * 6 + slice[1].first + c])
              << spec << " slice row " << slice[0].first << " col " << slice[1].first << " at " << r << "," << c;
    }
  }
  // A slice without full_shape cannot be drawn.
  PlanBuilder b;
  int32_t id = b.buffer("lora_A", BufferKind::Trainable, {2, 6}, ElemType::F32, "normal(0.0,0.02)");
  b.r().buffers[id].slice = {{0, 2}, {0, 6}};
  KernelRegistry reg;
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  Status s = (*ex)->init_parameters("", 11);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "parameter 'lora_A' is a slice with init 'normal(0.0,0.02)' but the plan gives no full_shape to draw it from");
}

TEST_F(ExecutorTest, SlicedCheckpointChecksFullShape) {
  std::vector<float> big(16);
  for (int i = 0; i < 16; ++i) big[i] = static_cast<float>(i);
  ASSERT_TRUE(write_safetensors(path("m.safetensors"), {{"big", DType::F32, {4, 4}, big.data()}}).is_ok());
  PlanBuilder b;
  int32_t id = b.buffer("big", BufferKind::Param, {4, 2}, ElemType::F32, "checkpoint");
  b.r().buffers[id].slice = {{0, 4}, {2, 2}};
  b.r().buffers[id].full_shape = {4, 4};
  KernelRegistry reg;
  {
    auto ex = Executor::create(b.p, 0, reg);
    ASSERT_TRUE(ex.is_ok()) << ex.message();
    ASSERT_TRUE((*ex)->init_parameters(path("m.safetensors"), 0).is_ok());
    const float *got = (*ex)->buffer(id).tensor.f32();
    EXPECT_EQ(std::vector<float>(got, got + 8), (std::vector<float>{2, 3, 6, 7, 10, 11, 14, 15}));
  }
  b.r().buffers[id].full_shape = {4, 5};
  auto ex = Executor::create(b.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  Status s = (*ex)->init_parameters(path("m.safetensors"), 0);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), path("m.safetensors") + ": tensor 'big' has shape 4x4 but the plan was compiled for 4x5");
}

} // namespace

// Time split: all_reduce (real collective kernel, local communicator, group "" of one rank) and
// a sleeping broadcast count as communication, the other kernels (also one with attr vocab_group) as
// compute; compute + comm <= the wall time of the runs.
TEST_F(ExecutorTest, TimeSplitSeparatesCommunicationFromCompute) {
  EXPECT_TRUE(is_comm_op("all_reduce"));
  EXPECT_TRUE(is_comm_op("send"));
  EXPECT_TRUE(is_comm_op("recv"));
  EXPECT_TRUE(is_comm_op("broadcast"));
  EXPECT_TRUE(is_comm_op("all_reduce_start"));
  EXPECT_TRUE(is_comm_op("all_reduce_wait"));
  EXPECT_FALSE(is_comm_op("cross_entropy_fwd"));
  EXPECT_FALSE(is_comm_op("adamw_step"));

  PlanBuilder b;
  int32_t x = b.buffer("x", BufferKind::Input, {1024});
  int32_t y = b.buffer("%y", BufferKind::Activation, {1024}, ElemType::F32, "", 0);
  KernelRegistry reg;
  register_collective_kernels(reg);  // the real all_reduce
  reg.add("scale", [](KernelCall &k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return scale_kernel(k);
  });
  reg.add("broadcast", [](KernelCall &) {  // a collective that waits for its peers: communication
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    return Status::ok();
  });
  b.instr("micro_step", "scale", {x}, {y});
  b.instr("micro_step", "all_reduce", {y}, {y}).attrs["group"] = std::string("");
  b.instr("micro_step", "scale", {y}, {y}).attrs["vocab_group"] = std::string("");  // reduces internally: compute
  b.instr("micro_step", "broadcast", {}, {}).attrs["group"] = std::string("");
  auto comm = make_local_communicator();
  auto ex_or = Executor::create(b.p, 0, reg, "cpu", comm.get());
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;
  EXPECT_EQ(ex.time_split().runs, 0);
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(ex.run("micro_step", nullptr).is_ok());
  ASSERT_TRUE(ex.run("micro_step", nullptr).is_ok());
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const TimeSplit &t = ex.time_split();
  EXPECT_EQ(t.runs, 2);
  EXPECT_EQ(t.comm_calls, 4);  // all_reduce and broadcast, twice
  EXPECT_GT(t.comm_s, 0.0);
  EXPECT_GT(t.compute_s, 0.0);
  EXPECT_GE(t.compute_s, 4 * 0.050);  // both scale kernels, twice (sleeps never end early)
  EXPECT_GE(t.comm_s, 2 * 0.030);     // the broadcast twice (plus the all_reduces)
  EXPECT_LT(t.comm_s, t.compute_s);   // 60 ms vs 200 ms: a scale counted as comm would add 50 ms
  EXPECT_LE(t.compute_s + t.comm_s, t.run_s);
  EXPECT_LE(t.run_s, wall);
  ex.reset_time_split();
  EXPECT_EQ(ex.time_split().comm_s, 0.0);
  EXPECT_EQ(ex.time_split().runs, 0);
}

// Asynchronous backend (MemoryHooks::sync set, like CUDA): a compute kernel only queues work
// that sync() completes. The wait before a collective counts as compute, the collective itself
// (timed between syncs) as communication, and compute = run wall - comm.
TEST_F(ExecutorTest, TimeSplitWithAsyncBackend) {
  PlanBuilder b;
  int32_t x = b.buffer("x", BufferKind::Input, {4});
  double queued_ms = 0;  // "device" work launched and not finished
  MemoryHooks hooks;
  hooks.alloc = [](size_t n) { return std::aligned_alloc(64, n); };
  hooks.free = [](void *p) { std::free(p); };
  hooks.sync = [&] {
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(queued_ms));
    queued_ms = 0;
    return Status::ok();
  };
  KernelRegistry reg;
  reg.add("launch", [&](KernelCall &) {  // returns at once, queues 100 ms of work
    queued_ms += 100;
    return Status::ok();
  });
  reg.add("all_reduce", [&](KernelCall &) {
    EXPECT_EQ(queued_ms, 0.0);  // the executor synced before the collective
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return Status::ok();
  });
  b.instr("micro_step", "launch", {x}, {});
  b.instr("micro_step", "all_reduce", {x}, {}).attrs["group"] = std::string("");
  b.instr("micro_step", "launch", {x}, {});
  auto ex_or = Executor::create(b.p, 0, reg, "cuda-like", nullptr, &hooks);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;
  ASSERT_TRUE(ex.run("micro_step", nullptr).is_ok());
  const TimeSplit &t = ex.time_split();
  EXPECT_GE(t.comm_s, 0.010);
  EXPECT_LT(t.comm_s, 0.080);     // the first launch's 100 ms are not communication
  EXPECT_GE(t.compute_s, 0.200);  // both launches' work, waited for before the collective and at the end
  EXPECT_NEAR(t.compute_s + t.comm_s, t.run_s, 1e-9);
}

// MemoryHooks::run_program (a backend that runs whole programs, e.g. CUDA graph replay): it gets
// programs without collectives only, and not while profiling or with an InstrHook; a run it
// replays without calling `eager` is accounted as compute; eager errors come back with the
// program's name.
TEST_F(ExecutorTest, RunProgramHook) {
  PlanBuilder b;
  int32_t x = b.buffer("x", BufferKind::Input, {4});
  int kernel_calls = 0;
  KernelRegistry reg;
  register_collective_kernels(reg);
  reg.add("work", [&](KernelCall &) {
    ++kernel_calls;
    return Status::ok();
  });
  reg.add("fail", [](KernelCall &) { return Status::error("boom"); });
  b.instr("micro_step", "work", {x}, {});
  b.instr("eval_step", "work", {x}, {});
  b.instr("eval_step", "all_reduce", {x}, {x}).attrs["group"] = std::string("");
  b.instr("optimizer_step", "fail", {}, {});
  std::map<std::string, int> seen;
  std::map<std::string, bool> captured;
  MemoryHooks hooks;
  hooks.alloc = [](size_t n) { return std::aligned_alloc(64, n); };
  hooks.free = [](void *p) { std::free(p); };
  hooks.run_program = [&](const std::string &program, int slot, const std::function<Status()> &eager) -> Status {
    ++seen[program + "/" + std::to_string(slot)];
    if (captured[program]) return Status::ok();  // "replay"
    Status s = eager();
    captured[program] = s.is_ok();
    return s;
  };
  auto comm = make_local_communicator();
  auto ex_or = Executor::create(b.p, 0, reg, "graph-like", comm.get(), &hooks);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ex.run("micro_step", nullptr).is_ok());
  EXPECT_EQ(seen["micro_step/0"], 3);
  EXPECT_EQ(kernel_calls, 1);  // eager once, replayed twice
  EXPECT_EQ(ex.time_split().runs, 3);
  ASSERT_TRUE(ex.run("eval_step", nullptr).is_ok());  // has a collective: never handed over
  EXPECT_EQ(seen.count("eval_step/0"), 0u);
  EXPECT_EQ(kernel_calls, 2);
  ex.enable_profile(true);  // profiling times every kernel: runs eagerly
  ASSERT_TRUE(ex.run("micro_step", nullptr).is_ok());
  EXPECT_EQ(kernel_calls, 3);
  ex.enable_profile(false);
  ASSERT_TRUE(ex.run("micro_step", nullptr, [](size_t, const KernelCall &) {}).is_ok());  // InstrHook: eager
  EXPECT_EQ(kernel_calls, 4);
  EXPECT_EQ(seen["micro_step/0"], 3);
  Status s = ex.run("optimizer_step", nullptr);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("program 'optimizer_step'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("boom"), std::string::npos) << s.message();
}

// MemoryHooks::zeroed: hooks that hand out zeroed memory (CUDA: cleared on the device) are not
// cleared again from the host; other hooks' memory is.
TEST_F(ExecutorTest, ZeroedHooksAreNotClearedAgain) {
  PlanBuilder b;
  int32_t x = b.buffer("x", BufferKind::Input, {4});
  int32_t y = b.buffer("%y", BufferKind::Activation, {4}, ElemType::F32, "", 0);
  KernelRegistry reg;
  reg.add("noop", [](KernelCall &) { return Status::ok(); });
  b.instr("micro_step", "noop", {x}, {y});
  for (bool zeroed : {false, true}) {
    MemoryHooks hooks;
    hooks.alloc = [](size_t n) {
      void *p = std::aligned_alloc(64, n);
      std::memset(p, 0xAB, n);  // "dirty" memory
      return p;
    };
    hooks.free = [](void *p) { std::free(p); };
    hooks.zeroed = zeroed;
    auto ex_or = Executor::create(b.p, 0, reg, "hooks", nullptr, &hooks);
    ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
    uint8_t first;
    std::memcpy(&first, (*ex_or)->buffer(y).tensor.data, 1);
    EXPECT_EQ(first, zeroed ? 0xAB : 0x00) << "zeroed = " << zeroed;
  }
}
