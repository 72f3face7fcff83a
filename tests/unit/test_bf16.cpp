// bf16 storage (--precision bf16): runtime/base/bf16.h conversions and the CPU backend's bf16
// semantics (runtime/cpu/kernels.h, PRECISION): every kernel given bf16 operands returns
// exactly what the f32 kernel returns on the widened values, rounded once to bf16 per stored
// element (accumulate: widened, added in f32, rounded once), with aliased operands staying
// aliased; f32 operands (LoRA A/B and their gradient accumulators) are untouched by the
// conversion.
#include "runtime/base/bf16.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/cpu/kernels.h"

using namespace parallora;
using namespace parallora::rt;

namespace {

uint32_t bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(Bf16, Conversions) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  // Ties to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 -> 1 (even mantissa);
  // 1 + 3*2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 -> 1 + 2^-6.
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  EXPECT_EQ(round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 1.0f + std::ldexp(1.0f, -7));
  // Specials: signed zero, inf, NaN stays NaN (also one whose payload sits in the low bits),
  // overflow past the largest bf16 rounds to inf.
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_TRUE(std::isnan(round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  float low_nan;
  uint32_t nb = 0x7F800001u;
  std::memcpy(&low_nan, &nb, 4);
  EXPECT_TRUE(std::isnan(round_to_bf16(low_nan)));
  EXPECT_TRUE(std::isinf(round_to_bf16(std::numeric_limits<float>::max())));
  // Random values: the result is the nearest bf16 (checked in double against both neighbours).
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1e3f, 1e3f);
  int bad = 0;
  for (int i = 0; i < 100000; ++i) {
    const float f = u(rng) * std::ldexp(1.0f, int(rng() % 40) - 20);
    const float r = round_to_bf16(f);
    const float down = bf16_to_f32(uint16_t(bits(f) >> 16)), up = bf16_to_f32(uint16_t((bits(f) >> 16) + 1));
    const double dd = std::fabs(double(f) - down), du = std::fabs(double(f) - up);
    const float want = dd < du ? down : du < dd ? up : ((bits(down) >> 16) & 1 ? up : down);
    bad += bits(r) != bits(want);
  }
  EXPECT_EQ(bad, 0);
}

/// A host tensor stored as f32 or bf16 (values always kept as the f32 they represent).
struct T {
  std::vector<int64_t> shape;
  plan::ElemType dtype = plan::ElemType::F32;
  std::vector<float> f;
  std::vector<uint16_t> h;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  Tensor tensor() {
    Tensor t;
    t.shape = shape;
    t.dtype = dtype;
    t.data = dtype == plan::ElemType::BF16 ? static_cast<void *>(h.data()) : static_cast<void *>(f.data());
    return t;
  }
  std::vector<float> values() const {
    if (dtype == plan::ElemType::F32) return f;
    std::vector<float> v(h.size());
    bf16_to_f32(h.data(), v.data(), numel());
    return v;
  }
};

T make(std::vector<int64_t> shape, plan::ElemType dt, std::mt19937 &rng, float scale = 1.0f) {
  T t;
  t.shape = std::move(shape);
  t.dtype = dt;
  std::normal_distribution<float> n(0.0f, scale);
  t.f.resize(size_t(t.numel()));
  for (float &v : t.f) v = round_to_bf16(n(rng));  // bf16-representable in both forms
  if (dt == plan::ElemType::BF16) {
    t.h.resize(t.f.size());
    f32_to_bf16(t.f.data(), t.h.data(), t.numel());
  }
  return t;
}

/// The f32 twin of `t`: same values, f32 storage.
T widened(const T &t) {
  T w;
  w.shape = t.shape;
  w.f = t.values();
  return w;
}

using Attrs = std::map<std::string, plan::AttrValue>;

Status call(const KernelRegistry &reg, const std::string &op, std::vector<T *> in, std::vector<T *> out,
            Attrs attrs) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  instr.loc = "test." + op;
  KernelCall c;
  c.instr = &instr;
  for (T *t : in) c.in.push_back(t ? t->tensor() : Tensor());
  for (T *t : out) c.out.push_back(t ? t->tensor() : Tensor());
  return (*reg.find(op))(c);
}

const KernelRegistry &full() {
  static KernelRegistry r = [] {
    KernelRegistry x;
    cpu::register_kernels(x);
    return x;
  }();
  return r;
}
const KernelRegistry &f32_only() {
  static KernelRegistry r = [] {
    KernelRegistry x;
    cpu::register_f32_kernels(x);
    return x;
  }();
  return r;
}

/// out (as stored) must be bit-identical to the f32 result rounded as its dtype rounds.
void expect_rounded(const T &got, const T &f32_result, const char *what) {
  std::vector<float> g = got.values();
  ASSERT_EQ(g.size(), f32_result.f.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const float want = got.dtype == plan::ElemType::BF16 ? round_to_bf16(f32_result.f[i]) : f32_result.f[i];
    bad += bits(g[i]) != bits(want);
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << g.size() << " elements differ";
}

constexpr auto BF = plan::ElemType::BF16;
constexpr auto F = plan::ElemType::F32;

TEST(Bf16Kernels, LoraLinearForwardAndBackward) {
  std::mt19937 rng(11);
  const int64_t M = 6, K = 16, N = 12, r = 4;
  T x = make({2, 3, K}, BF, rng), W = make({N, K}, BF, rng, 0.2f), A = make({r, K}, F, rng, 0.3f),
    B = make({N, r}, F, rng, 0.3f), y = make({2, 3, N}, BF, rng);
  T xw = widened(x), Ww = widened(W), yw = widened(y);
  Attrs at{{"scaling", 2.0}};
  ASSERT_TRUE(call(full(), "lora_linear_fwd", {&x, &W, &A, &B, nullptr}, {&y}, at).is_ok());
  ASSERT_TRUE(call(f32_only(), "lora_linear_fwd", {&xw, &Ww, &A, &B, nullptr}, {&yw}, at).is_ok());
  expect_rounded(y, yw, "y");

  // Backward: bf16 dy, x, W -> bf16 dx; dA, dB accumulate into f32 gradient buffers.
  T dy = make({M, N}, BF, rng), dx = make({M, K}, BF, rng), dA = make({r, K}, F, rng), dB = make({N, r}, F, rng);
  T dyw = widened(dy), dxw = widened(dx), dAw = dA, dBw = dB;
  T x2 = make({M, K}, BF, rng);
  T x2w = widened(x2);
  Attrs ab{{"scaling", 2.0}, {"accumulate", int64_t(1)}};
  ASSERT_TRUE(call(full(), "lora_linear_bwd", {&dy, &x2, &W, &A, &B}, {&dx, &dA, &dB}, ab).is_ok());
  ASSERT_TRUE(call(f32_only(), "lora_linear_bwd", {&dyw, &x2w, &Ww, &A, &B}, {&dxw, &dAw, &dBw}, ab).is_ok());
  expect_rounded(dx, dxw, "dx");
  expect_rounded(dA, dAw, "dA (f32 accumulator)");
  expect_rounded(dB, dBw, "dB (f32 accumulator)");
}

TEST(Bf16Kernels, NormAttentionSwigluCrossEntropy) {
  std::mt19937 rng(12);
  {
    T x = make({4, 8}, BF, rng), w = make({8}, BF, rng), y = make({4, 8}, BF, rng);
    T xw = widened(x), ww = widened(w), yw = widened(y);
    ASSERT_TRUE(call(full(), "rms_norm_fwd", {&x, &w}, {&y}, {{"eps", 1e-6}}).is_ok());
    ASSERT_TRUE(call(f32_only(), "rms_norm_fwd", {&xw, &ww}, {&yw}, {{"eps", 1e-6}}).is_ok());
    expect_rounded(y, yw, "rms_norm y");
  }
  {
    T q = make({1, 4, 5, 8}, BF, rng), k = make({1, 2, 5, 8}, BF, rng), v = make({1, 2, 5, 8}, BF, rng),
      o = make({1, 4, 5, 8}, BF, rng);
    T qw = widened(q), kw = widened(k), vw = widened(v), ow = widened(o);
    Attrs at{{"scale", 0.35}, {"causal", int64_t(1)}};
    ASSERT_TRUE(call(full(), "attention_fwd", {&q, &k, &v}, {&o}, at).is_ok());
    ASSERT_TRUE(call(f32_only(), "attention_fwd", {&qw, &kw, &vw}, {&ow}, at).is_ok());
    expect_rounded(o, ow, "attention o");
  }
  {
    T g = make({3, 7}, BF, rng), u = make({3, 7}, BF, rng), y = make({3, 7}, BF, rng);
    T gw = widened(g), uw = widened(u), yw = widened(y);
    ASSERT_TRUE(call(full(), "swiglu_fwd", {&g, &u}, {&y}, {}).is_ok());
    ASSERT_TRUE(call(f32_only(), "swiglu_fwd", {&gw, &uw}, {&yw}, {}).is_ok());
    expect_rounded(y, yw, "swiglu y");
  }
  {
    // Cross entropy reads bf16 logits; the loss output stays f32.
    T logits = make({2, 4, 9}, BF, rng, 3.0f), loss = make({}, F, rng);
    T lw = widened(logits), lossw = loss;
    T labels;
    labels.shape = {2, 4};
    labels.dtype = plan::ElemType::I32;
    std::vector<int32_t> ids = {1, 8, 0, 3, -100, 5, 2, 7};
    Tensor lt;
    lt.shape = labels.shape;
    lt.dtype = plan::ElemType::I32;
    lt.data = ids.data();
    plan::Instr instr;
    instr.op = "cross_entropy_fwd";
    instr.attrs = {{"shift", int64_t(1)}, {"ignore_index", int64_t(-100)}};
    for (int pass = 0; pass < 2; ++pass) {
      KernelCall c;
      c.instr = &instr;
      c.in = {pass == 0 ? logits.tensor() : lw.tensor(), lt};
      c.out = {pass == 0 ? loss.tensor() : lossw.tensor()};
      ASSERT_TRUE((*(pass == 0 ? full() : f32_only()).find("cross_entropy_fwd"))(c).is_ok());
    }
    expect_rounded(loss, lossw, "loss (f32)");
  }
}

TEST(Bf16Kernels, InPlaceAndAccumulate) {
  std::mt19937 rng(13);
  // In-place residual add: y is a's storage.
  T a = make({5, 6}, BF, rng), b = make({5, 6}, BF, rng);
  T aw = widened(a), bw = widened(b);
  ASSERT_TRUE(call(full(), "add", {&a, &b}, {&a}, {}).is_ok());
  ASSERT_TRUE(call(f32_only(), "add", {&aw, &bw}, {&aw}, {}).is_ok());
  expect_rounded(a, aw, "in-place add");
  // accumulate into bf16: the stored value is widened, added to, rounded once.
  T acc = make({5, 6}, BF, rng), x = make({5, 6}, BF, rng);
  T accw = widened(acc), xw = widened(x);
  ASSERT_TRUE(call(full(), "accumulate", {&x}, {&acc}, {}).is_ok());
  ASSERT_TRUE(call(f32_only(), "accumulate", {&xw}, {&accw}, {}).is_ok());
  expect_rounded(acc, accw, "accumulate");
  // linear_bwd_input with accumulate = 1 into bf16 dx.
  T dy = make({3, 4}, BF, rng), W = make({4, 6}, BF, rng), dx = make({3, 6}, BF, rng);
  T dyw = widened(dy), Ww = widened(W), dxw = widened(dx);
  ASSERT_TRUE(call(full(), "linear_bwd_input", {&dy, &W}, {&dx}, {{"accumulate", int64_t(1)}}).is_ok());
  ASSERT_TRUE(call(f32_only(), "linear_bwd_input", {&dyw, &Ww}, {&dxw}, {{"accumulate", int64_t(1)}}).is_ok());
  expect_rounded(dx, dxw, "linear_bwd_input accumulate");
}

TEST(Bf16Kernels, F32OnlyKernelsRefuseBf16) {
  std::mt19937 rng(14);
  // The f32 registry alone refuses bf16 operands with a message naming the operand...
  T x = make({2, 3}, BF, rng), y = make({2, 3}, BF, rng), z = make({2, 3}, F, rng);
  Status s = call(f32_only(), "add", {&x, &z}, {&y}, {});
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("f32"), std::string::npos) << s.message();
  // ... and adamw_step (the fp32 master state) refuses bf16 in the full registry too.
  T p = make({4}, BF, rng), g = make({4}, F, rng), m = make({4}, F, rng), v = make({4}, F, rng);
  Status sa = call(full(), "adamw_step", {&p, &g, &m, &v}, {},
                   {{"n", int64_t(1)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}});
  EXPECT_FALSE(sa.is_ok());
}

} // namespace
