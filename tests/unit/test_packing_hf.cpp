// Sequence packing against Hugging Face transformers + PEFT (fixture by scripts/reference/
// make_packing_fixtures.py, committed so CI needs no torch): the tiny LLaMA with the committed
// PEFT adapter, one batch of two rows packing five examples and padding, fed to a plan compiled
// with --pack-sequences (lora-compile --packing) as input_ids, labels, position_ids and
// segment_ids. HF ran it with position_ids and a 4D block-diagonal causal mask (eager attention)
// and checked that each example's logits equal the example run alone.
//  * logits (eval_step), loss and all 28 adapter gradients (micro_step) equal HF's;
//  * the same batch through a plan without packing, or with the packing inputs of one unpacked
//    sequence, gives HF's unpacked numbers instead: the inputs are read, and they matter.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/core/executor.h"
#include "runtime/cpu/kernels.h"
#include "runtime/io/peft_adapter.h"
#include "tests/unit/packing_fixture.h"

using namespace parallora;

namespace {

const std::string kSrc = PARALLORA_SOURCE_DIR;
const std::string kBase = test_util::tiny_llama_dir();
const std::string kFix = test_util::packing_fixture_dir();
constexpr int64_t kB = test_util::kPackB, kT = test_util::kPackT;

plan::Plan compile(bool packing) {
  test_util::TinyLoraPlanOptions o;
  o.packing = packing;
  return test_util::compile_tiny_lora(o);
}

using Fixture = test_util::SafetensorsFixture;
Fixture fixture() { return test_util::packing_batch(); }

std::unique_ptr<rt::Executor> executor(const plan::Plan &p) {
  rt::KernelRegistry reg;
  rt::cpu::register_kernels(reg);
  auto e = rt::Executor::create(p, 0, reg);
  EXPECT_TRUE(e.is_ok()) << e.status().message();
  if (!e.is_ok()) return nullptr;
  std::unique_ptr<rt::Executor> ex = std::move(*e);
  EXPECT_TRUE(ex->init_parameters(kBase, 0).is_ok());
  auto adapter = rt::read_peft_adapter(kSrc + "/tests/fixtures/train/tiny/adapter_init", nullptr);
  EXPECT_TRUE(adapter.is_ok()) << adapter.status().message();
  EXPECT_TRUE(ex->set_trainables(*adapter).is_ok());
  return ex;
}

/// max |got - want|, and max |want|.
std::pair<double, double> diff(const float *got, const std::vector<float> &want) {
  double m = 0, r = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    m = std::max(m, std::fabs(double(got[i]) - want[i]));
    r = std::max(r, std::fabs(double(want[i])));
  }
  return {m, r};
}

TEST(PackingHfParity, LogitsLossAndAdapterGradientsOfAPackedBatch) {
  const nlohmann::json ref = nlohmann::json::parse(std::ifstream(kFix + "/reference.json"));
  Fixture fx = fixture();
  plan::Plan p = compile(true);
  auto ex = executor(p);
  ASSERT_NE(ex, nullptr);
  const int64_t n = kB * kT;
  for (const char *name : {"input_ids", "labels", "position_ids", "segment_ids"})
    ASSERT_TRUE(ex->feed(name, fx.i32(name).data(), n).is_ok()) << name;

  rt::StepState s;
  ASSERT_TRUE(ex->run("eval_step", &s).is_ok());
  auto [el, lmax] = diff(ex->find("logits")->tensor.f32(), fx.f32("logits"));
  std::printf("packed logits: max abs err %.3e (max |logit| %.3f)\n", el, lmax);
  EXPECT_LT(el, 1e-4);

  ASSERT_TRUE(ex->run("micro_step", &s).is_ok());
  const double want = ref["loss"];
  std::printf("packed loss: ours %.8f, HF %.8f (%d scored tokens)\n", ex->loss(), want, ref["scored_tokens"].get<int>());
  EXPECT_NEAR(ex->loss(), want, 1e-5 * want);

  double worst = 0;
  int grads = 0;
  for (auto &bt : ex->buffers(plan::BufferKind::Grad)) {
    std::vector<float> g = fx.f32("grad." + bt.buffer->param);
    ASSERT_EQ(int64_t(g.size()), bt.tensor.numel()) << bt.buffer->param;
    auto [e, gmax] = diff(bt.tensor.f32(), g);
    EXPECT_GT(gmax, 0.0) << bt.buffer->param;
    EXPECT_LT(e, 1e-3 * gmax) << bt.buffer->param;
    worst = std::max(worst, e / gmax);
    ++grads;
  }
  EXPECT_EQ(grads, ref["adapter_tensors"].get<int>());
  std::printf("packed adapter gradients: %d tensors, worst max-abs error / max |grad| = %.3e\n", grads, worst);
}

TEST(PackingHfParity, WithoutThePackingInputsTheBatchIsNotPacked) {
  Fixture fx = fixture();
  const int64_t n = kB * kT;
  const std::vector<float> want = fx.f32("logits");
  // One sequence per row: positions 0..T-1 and a single segment. That is the unpacked model,
  // which attends across the examples: far from HF's packed logits.
  std::vector<int32_t> pos(n), seg(n, 0);
  for (int64_t i = 0; i < n; ++i) pos[i] = int32_t(i % kT);
  plan::Plan packed = compile(true), plain = compile(false);
  auto a = executor(packed), b = executor(plain);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(a->feed("input_ids", fx.i32("input_ids").data(), n).is_ok());
  ASSERT_TRUE(a->feed("labels", fx.i32("labels").data(), n).is_ok());
  ASSERT_TRUE(a->feed("position_ids", pos.data(), n).is_ok());
  ASSERT_TRUE(a->feed("segment_ids", seg.data(), n).is_ok());
  ASSERT_TRUE(b->feed("input_ids", fx.i32("input_ids").data(), n).is_ok());
  ASSERT_TRUE(b->feed("labels", fx.i32("labels").data(), n).is_ok());
  EXPECT_EQ(b->find("position_ids"), nullptr);  // nothing else changes without --packing
  rt::StepState s;
  ASSERT_TRUE(a->run("eval_step", &s).is_ok());
  ASSERT_TRUE(b->run("eval_step", &s).is_ok());
  const float *la = a->find("logits")->tensor.f32(), *lb = b->find("logits")->tensor.f32();
  EXPECT_EQ(0, std::memcmp(la, lb, want.size() * sizeof(float))) << "one segment must be the unpacked plan, bit for bit";
  auto [e, lmax] = diff(lb, want);
  std::printf("unpacked plan on the packed batch: max abs diff from HF's packed logits %.3e\n", e);
  EXPECT_GT(e, 1e-2);
  // The first example of each row sees only itself either way: equal to HF's packed logits.
  const int64_t V = int64_t(want.size()) / n;
  auto [e0, m0] = diff(lb, std::vector<float>(want.begin(), want.begin() + 5 * V));
  EXPECT_LT(e0, 1e-4) << "row 0's first example (5 tokens) does not depend on packing";
}

} // namespace
