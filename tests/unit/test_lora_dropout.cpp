// Tests for LoRA dropout: Philox-4x32-10 (runtime/base/philox.h), the mask's coordinates
// (runtime/lora_dropout.h) and the CPU kernels lora_linear_fwd / lora_linear_bwd with `dropout`.
//   - Philox known answers (Random123's kat_vectors)
//   - mask statistics: keep rate at p = 0.1 over 131072 elements within a 5-sigma binomial
//     bound; masks of two steps / two modules / two samples agree no more than independent
//     masks would (co-drop count within 5 sigma of n p^2)
//   - the kernels against a naive double-precision reference built from DropoutMask::keep
//     (element by element, not the kernel's row-wise Philox groups)
//   - finite differences of the backward with the mask fixed (same step state)
//   - determinism: bit-identical across thread counts and repeated calls; dropout 0 and an
//     absent attr are bit-identical to each other
//   - errors: no step state, x not 3-d, missing module
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "runtime/base/philox.h"
#include "runtime/cpu/kernels.h"
#include "runtime/lora_dropout.h"
#include "tests/unit/host_buffers.h"

// Debian's librandom123-dev, when installed, is a second reference (not a dependency: the
// known answers above come from its test vectors and run everywhere).
#if __has_include(<Random123/philox.h>)
#include <Random123/philox.h>
#define PARALLORA_HAVE_RANDOM123 1
#endif

using namespace parallora;
using namespace parallora::rt;

namespace {

using Attrs = std::map<std::string, plan::AttrValue>;
using test_util::Buf;
using test_util::Rng;
using test_util::zeros;

const KernelRegistry &registry() {
  static const KernelRegistry reg = [] {
    KernelRegistry r;
    cpu::register_kernels(r);
    return r;
  }();
  return reg;
}

Status run(const std::string &op, std::vector<Buf *> in, std::vector<Buf *> out, Attrs attrs, StepState *step) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  instr.loc = "model.layers.1.mlp.down_proj";
  KernelCall call;
  call.instr = &instr;
  call.step = step;
  for (Buf *b : in) call.in.push_back(b ? b->tensor() : Tensor());
  for (Buf *b : out) call.out.push_back(b ? b->tensor() : Tensor());
  return (*registry().find(op))(call);
}

const char *kModule = "model.layers.1.mlp.down_proj";

Attrs dropout_attrs(double p, double scaling = 2.0) {
  return {{"scaling", scaling}, {"dropout", p}, {"module", std::string(kModule)}};
}

StepState state(int64_t step, int64_t first_sample, uint64_t seed = 42) {
  StepState s;
  s.step = step;
  s.first_sample = first_sample;
  s.seed = seed;
  return s;
}

/// Count of dropped elements of a (samples, positions, features) block.
int64_t dropped(const DropoutMask &m, int64_t rows, int64_t K) {
  int64_t n = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = 0; k < K; ++k) n += !m.keep(i, k);
  return n;
}

TEST(Philox, KnownAnswers) {
  // Random123 tests/kat_vectors: counter (4 words), key (2 words) -> output (4 words).
  struct Kat {
    uint32_t c[4], k[2], want[4];
  } kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat &t : kats) {
    Philox4x32 w = philox_4x32_10(t.c[0], t.c[1], t.c[2], t.c[3], t.k[0], t.k[1]);
    for (int j = 0; j < 4; ++j) EXPECT_EQ(w.v[j], t.want[j]) << "word " << j;
  }
}

TEST(Philox, AgreesWithRandom123) {
#ifdef PARALLORA_HAVE_RANDOM123
  r123::Philox4x32_R<10> ref;
  Rng rng(99);
  for (int i = 0; i < 10000; ++i) {
    uint32_t w[6];
    for (uint32_t &v : w) v = static_cast<uint32_t>(rng.gen());
    r123::Philox4x32_R<10>::ctr_type c = {{w[0], w[1], w[2], w[3]}};
    r123::Philox4x32_R<10>::key_type k = {{w[4], w[5]}};
    const auto want = ref(c, k);
    const Philox4x32 got = philox_4x32_10(w[0], w[1], w[2], w[3], w[4], w[5]);
    for (int j = 0; j < 4; ++j) ASSERT_EQ(got.v[j], want.v[j]) << "draw " << i << " word " << j;
  }
#else
  GTEST_SKIP() << "Random123 headers not installed (apt-get install librandom123-dev); the known answers still ran";
#endif
}

TEST(Philox, Fnv1a) {
  // FNV-1a 32 reference values (the FNV authors' test suite: "" and "a").
  EXPECT_EQ(fnv1a32(""), 0x811c9dc5u);
  EXPECT_EQ(fnv1a32("a"), 0xe40c292cu);
}

constexpr int64_t kSamples = 4, kT = 64, kK = 512;  // 131072 elements
constexpr double kP = 0.1;

TEST(LoraDropoutMask, KeepRateWithinBinomialBound) {
  const DropoutMask m = make_dropout_mask(42, 1, kModule, kP, 0, kT, 0);
  const double n = double(kSamples * kT * kK), mean = n * kP, sd = std::sqrt(n * kP * (1 - kP));
  const int64_t d = dropped(m, kSamples * kT, kK);
  std::printf("[MASK] p=%.2f n=%.0f dropped=%lld expected=%.1f +- %.1f (z=%.2f)\n", kP, n, (long long)d, mean, sd,
              (d - mean) / sd);
  EXPECT_LT(std::fabs(d - mean), 5 * sd);
  EXPECT_EQ(m.threshold, 429496729u);  // floor(0.1 * 2^32)
  EXPECT_FLOAT_EQ(m.scale, float(1.0 / 0.9));
}

/// Independence: two masks over the same elements drop the same element about n p^2 times.
void expect_independent(const DropoutMask &a, const DropoutMask &b, const char *what) {
  int64_t both = 0, differ = 0;
  for (int64_t i = 0; i < kSamples * kT; ++i)
    for (int64_t k = 0; k < kK; ++k) {
      bool ka = a.keep(i, k), kb = b.keep(i, k);
      both += !ka && !kb;
      differ += ka != kb;
    }
  const double n = double(kSamples * kT * kK), q = kP * kP, mean = n * q, sd = std::sqrt(n * q * (1 - q));
  std::printf("[INDEP] %-22s co-dropped=%lld expected=%.1f +- %.1f (z=%.2f)\n", what, (long long)both, mean, sd,
              (both - mean) / sd);
  EXPECT_GT(differ, 0) << what << ": identical masks";
  EXPECT_LT(std::fabs(both - mean), 5 * sd) << what;
}

TEST(LoraDropoutMask, IndependentAcrossStepsModulesSamplesSeeds) {
  const DropoutMask base = make_dropout_mask(42, 1, kModule, kP, 0, kT, 0);
  expect_independent(base, make_dropout_mask(42, 2, kModule, kP, 0, kT, 0), "step 1 vs 2");
  expect_independent(base, make_dropout_mask(42, 1, "model.layers.0.mlp.down_proj", kP, 0, kT, 0), "layer 1 vs 0");
  expect_independent(base, make_dropout_mask(42, 1, "model.layers.1.mlp.up_proj", kP, 0, kT, 0), "down vs up_proj");
  expect_independent(base, make_dropout_mask(42, 1, kModule, kP, 4, kT, 0), "samples 0-3 vs 4-7");
  expect_independent(base, make_dropout_mask(43, 1, kModule, kP, 0, kT, 0), "seed 42 vs 43");
}

TEST(LoraDropoutMask, ShardsAndMicroBatchesSeeTheGlobalMask) {
  // A micro-batch starting at sample 2 sees rows 2.. of the whole batch's mask; a tensor-parallel
  // shard starting at feature 256 sees its columns.
  const DropoutMask whole = make_dropout_mask(7, 3, kModule, kP, 0, kT, 0);
  const DropoutMask micro = make_dropout_mask(7, 3, kModule, kP, 2, kT, 0);
  const DropoutMask shard = make_dropout_mask(7, 3, kModule, kP, 0, kT, 256);
  for (int64_t i = 0; i < 2 * kT; ++i)
    for (int64_t k = 0; k < kK; ++k) ASSERT_EQ(micro.keep(i, k), whole.keep(2 * kT + i, k));
  for (int64_t i = 0; i < kSamples * kT; ++i)
    for (int64_t k = 0; k < 256; ++k) ASSERT_EQ(shard.keep(i, k), whole.keep(i, 256 + k));
}

// ------------------------------------------------------------------------------- kernels

struct Case {
  int64_t Bn = 3, T = 5, K = 12, N = 7, r = 3;
  Buf x, W, A, B, R;
  explicit Case(uint64_t seed) {
    Rng rng(seed);
    x = rng.buf({Bn, T, K});
    W = rng.buf({N, K});
    A = rng.buf({r, K});
    B = rng.buf({N, r});
    R = rng.buf({Bn, T, N});
  }
};

TEST(LoraDropoutKernels, ForwardMatchesNaiveReference) {
  Case c(11);
  StepState st = state(5, 8);
  Buf y = zeros({c.Bn, c.T, c.N});
  ASSERT_TRUE(run("lora_linear_fwd", {&c.x, &c.W, &c.A, &c.B}, {&y}, dropout_attrs(0.3), &st).is_ok());
  const DropoutMask m = make_dropout_mask(42, 5, kModule, 0.3, 8, c.T, 0);
  double err = 0;
  int64_t kept = 0;
  const int64_t M = c.Bn * c.T;
  for (int64_t i = 0; i < M; ++i) {
    std::vector<double> xd(c.K);
    for (int64_t k = 0; k < c.K; ++k) {
      xd[k] = m.keep(i, k) ? double(c.x.f[i * c.K + k]) * double(m.scale) : 0.0;
      kept += m.keep(i, k);
    }
    for (int64_t n = 0; n < c.N; ++n) {
      double base = 0, lora = 0;
      for (int64_t k = 0; k < c.K; ++k) base += double(c.x.f[i * c.K + k]) * c.W.f[n * c.K + k];
      for (int64_t j = 0; j < c.r; ++j) {
        double xa = 0;
        for (int64_t k = 0; k < c.K; ++k) xa += xd[k] * c.A.f[j * c.K + k];
        lora += xa * c.B.f[n * c.r + j];
      }
      err = std::max(err, std::fabs(double(y.f[i * c.N + n]) - (base + 2.0 * lora)));
    }
  }
  std::printf("[FWD] lora_linear_fwd dropout 0.3: kept %lld of %lld, max_abs_err=%.3e\n", (long long)kept,
              (long long)(M * c.K), err);
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, M * c.K);  // something was dropped
  EXPECT_LT(err, 1e-4);
}

double project(const Buf &out, const Buf &R) {
  double s = 0;
  for (size_t i = 0; i < out.f.size(); ++i) s += double(out.f[i]) * double(R.f[i]);
  return s;
}

double fd_rel(std::vector<float> &v, const std::vector<float> &analytic, const std::function<double()> &loss,
              const char *label) {
  double max_abs = 0, max_grad = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const float save = v[i], vp = float(double(save) + 1e-3), vm = float(double(save) - 1e-3);
    v[i] = vp;
    const double lp = loss();
    v[i] = vm;
    const double lm = loss();
    v[i] = save;
    const double fd = (lp - lm) / (double(vp) - double(vm));
    max_abs = std::max(max_abs, std::fabs(fd - analytic[i]));
    max_grad = std::max(max_grad, std::fabs(double(analytic[i])));
  }
  std::printf("[FD] %-30s max|grad|=%.3e rel_err=%.3e\n", label, max_grad, max_abs / max_grad);
  EXPECT_GT(max_grad, 1e-6) << label;
  return max_abs / std::max(max_grad, 1e-12);
}

TEST(LoraDropoutKernels, BackwardMatchesFiniteDifferencesWithTheMaskFixed) {
  Case c(12);
  StepState st = state(3, 4);
  const Attrs at = dropout_attrs(0.25);
  Buf y = zeros({c.Bn, c.T, c.N}), dx = zeros({c.Bn, c.T, c.K}), dA = zeros({c.r, c.K}), dB = zeros({c.N, c.r});
  ASSERT_TRUE(run("lora_linear_bwd", {&c.R, &c.x, &c.W, &c.A, &c.B}, {&dx, &dA, &dB}, at, &st).is_ok());
  auto loss = [&] {
    EXPECT_TRUE(run("lora_linear_fwd", {&c.x, &c.W, &c.A, &c.B}, {&y}, at, &st).is_ok());
    return project(y, c.R);
  };
  EXPECT_LT(fd_rel(c.x.f, dx.f, loss, "dropout dx"), 1e-2);
  EXPECT_LT(fd_rel(c.A.f, dA.f, loss, "dropout dA"), 1e-2);
  EXPECT_LT(fd_rel(c.B.f, dB.f, loss, "dropout dB"), 1e-2);

  // The mask matters: without dropout dA differs.
  Buf dx0 = zeros({c.Bn, c.T, c.K}), dA0 = zeros({c.r, c.K}), dB0 = zeros({c.N, c.r});
  ASSERT_TRUE(run("lora_linear_bwd", {&c.R, &c.x, &c.W, &c.A, &c.B}, {&dx0, &dA0, &dB0}, {{"scaling", 2.0}}, &st).is_ok());
  EXPECT_NE(std::memcmp(dA.f.data(), dA0.f.data(), dA.f.size() * sizeof(float)), 0);
}

bool bit_equal(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(LoraDropoutKernels, SameMaskForEveryThreadCountSameBitsForEveryCall) {
  // Large enough for the OpenMP loops to split (M * K >= 2^15).
  Rng rng(13);
  const int64_t Bn = 4, T = 64, K = 256, N = 8, r = 4;
  Buf x = rng.buf({Bn, T, K}), W = rng.buf({N, K}), A = rng.buf({r, K}), B = rng.buf({N, r}), R = rng.buf({Bn, T, N});
  StepState st = state(2, 0);
  auto fwd_bwd = [&](int threads) {
    omp_set_num_threads(threads);
    Buf y = zeros({Bn, T, N}), dx = zeros({Bn, T, K}), dA = zeros({r, K}), dB = zeros({N, r});
    EXPECT_TRUE(run("lora_linear_fwd", {&x, &W, &A, &B}, {&y}, dropout_attrs(0.1), &st).is_ok());
    EXPECT_TRUE(run("lora_linear_bwd", {&R, &x, &W, &A, &B}, {&dx, &dA, &dB}, dropout_attrs(0.1), &st).is_ok());
    std::vector<float> all = y.f;
    for (auto *v : {&dx.f, &dA.f, &dB.f}) all.insert(all.end(), v->begin(), v->end());
    return all;
  };
  const int saved = omp_get_max_threads();
  const std::vector<float> one = fwd_bwd(1), four = fwd_bwd(4), again = fwd_bwd(4);
  omp_set_num_threads(saved);
  // The mask is a pure function of global coordinates, so the thread count cannot change which
  // elements are dropped, and the GEMMs around it are cut into tiles by shape alone
  // (runtime/cpu/gemm.cpp): the same bits with 1 and 4 threads.
  EXPECT_TRUE(bit_equal(one, four)) << "1 vs 4 threads";
  EXPECT_TRUE(bit_equal(four, again)) << "two calls";
}

TEST(LoraDropoutKernels, DropoutZeroIsTheOldKernel) {
  Case c(14);
  StepState st = state(1, 0);
  Buf y0 = zeros({c.Bn, c.T, c.N}), y1 = zeros({c.Bn, c.T, c.N});
  ASSERT_TRUE(run("lora_linear_fwd", {&c.x, &c.W, &c.A, &c.B}, {&y0}, {{"scaling", 2.0}}, nullptr).is_ok());
  ASSERT_TRUE(run("lora_linear_fwd", {&c.x, &c.W, &c.A, &c.B}, {&y1}, dropout_attrs(0.0), &st).is_ok());
  EXPECT_TRUE(bit_equal(y0.f, y1.f));
}

TEST(LoraDropoutKernels, ClearErrors) {
  Case c(15);
  Buf y = zeros({c.Bn, c.T, c.N});
  Status s = run("lora_linear_fwd", {&c.x, &c.W, &c.A, &c.B}, {&y}, dropout_attrs(0.1), nullptr);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("lora_linear_fwd"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("no step state"), std::string::npos) << s.message();

  StepState st = state(1, 0);
  Buf x2 = c.x;
  x2.shape = {c.Bn * c.T, c.K};
  Buf y2 = zeros({c.Bn * c.T, c.N});
  s = run("lora_linear_fwd", {&x2, &c.W, &c.A, &c.B}, {&y2}, dropout_attrs(0.1), &st);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("(samples, positions, features)"), std::string::npos) << s.message();

  s = run("lora_linear_fwd", {&c.x, &c.W, &c.A, &c.B}, {&y}, {{"scaling", 2.0}, {"dropout", 0.1}}, &st);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("module"), std::string::npos) << s.message();
}

} // namespace
