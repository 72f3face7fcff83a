// Tests for runtime/cpu: the CPU reference kernels of the contract in runtime/cpu/kernels.h.
//   - finite-difference gradient checks of every backward kernel (central differences on a
//     scalar projection L = sum(out * R), R random; max errors are printed)
//   - forward kernels against naive double-precision loops and hand-computed cases
//   - adamw_step against a scalar re-implementation of torch's clip_grad_norm_ + AdamW
//   - validation errors (operand counts, shapes, out-of-range ids and labels, attrs)
//   - determinism: bit-identical results on a second run and for another thread count
//   - KernelCall's attribute accessors
#include "runtime/cpu/blas_core.h"
#include "runtime/cpu/common.h"  // detail::sgemm
#include "runtime/cpu/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/host_buffers.h"

using namespace parallora;
using namespace parallora::rt;

namespace {

using Attrs = std::map<std::string, plan::AttrValue>;

using test_util::Buf;
using test_util::ints;
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

constexpr const char *kLoc = "model.layers.3.self_attn.test";

/// Runs kernel `op`; a null Buf* is an absent operand.
Status run(const std::string &op, std::vector<Buf *> in, std::vector<Buf *> out,
           Attrs attrs = {}, StepState *step = nullptr) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  instr.loc = kLoc;
  KernelCall call;
  call.instr = &instr;
  call.step = step;
  for (Buf *b : in) call.in.push_back(b ? b->tensor() : Tensor());
  for (Buf *b : out) call.out.push_back(b ? b->tensor() : Tensor());
  const KernelFn *fn = registry().find(op);
  if (!fn) return Status::error("no kernel named " + op);
  return (*fn)(call);
}

#define RUN_OK(...)                                                                              \
  do {                                                                                           \
    Status s_ = run(__VA_ARGS__);                                                                \
    ASSERT_TRUE(s_.is_ok()) << s_.message();                                                     \
  } while (0)

/// Expects an error whose message contains every needle.
void expect_error(const Status &s, std::vector<std::string> needles) {
  ASSERT_FALSE(s.is_ok()) << "expected an error containing " << needles[0];
  for (const std::string &n : needles)
    EXPECT_NE(s.message().find(n), std::string::npos)
        << "message '" << s.message() << "' lacks '" << n << "'";
}

double project(const Buf &out, const Buf &R) {
  double s = 0.0;
  for (size_t i = 0; i < out.f.size(); ++i) s += double(out.f[i]) * double(R.f[i]);
  return s;
}

/// Central-difference check of `analytic` (dL/dx) against L = loss() as x varies.
/// Returns max|fd - analytic| / max|analytic| and prints the margins.
double fd_check(const std::string &label, std::vector<float> &x,
                const std::vector<float> &analytic, const std::function<double()> &loss,
                double h = 1e-3) {
  EXPECT_EQ(x.size(), analytic.size());
  double max_abs = 0.0, max_grad = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float save = x[i];
    const float xp = float(double(save) + h), xm = float(double(save) - h);
    x[i] = xp;
    const double lp = loss();
    x[i] = xm;
    const double lm = loss();
    x[i] = save;
    const double fd = (lp - lm) / (double(xp) - double(xm));
    max_abs = std::max(max_abs, std::fabs(fd - double(analytic[i])));
    max_grad = std::max(max_grad, std::fabs(double(analytic[i])));
  }
  const double rel = max_abs / std::max(max_grad, 1e-12);
  std::printf("[FD] %-44s n=%4zu max|grad|=%.3e max_abs_err=%.3e rel_err=%.3e\n", label.c_str(),
              x.size(), max_grad, max_abs, rel);
  EXPECT_GT(max_grad, 1e-6) << label << ": the gradient is identically zero";
  return rel;
}

constexpr double kFdTol = 1e-2;

double max_abs_diff(const std::vector<float> &a, const std::vector<double> &b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

bool bit_equal(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ------------------------------------------------------------------- naive references

std::vector<double> ref_linear(const Buf &x, const Buf &W, const Buf *bias) {
  const int64_t N = W.shape[0], K = W.shape[1], M = x.numel() / K;
  std::vector<double> y(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? bias->f[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += double(x.f[m * K + k]) * W.f[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}

/// HF's inv_freq (with llama3 scaling when factor > 0), in double.
std::vector<double> ref_inv_freq(double theta, int64_t Dh, double factor, double low,
                                 double high, double old_ctx) {
  std::vector<double> inv(size_t(Dh / 2));
  for (int64_t i = 0; i < Dh / 2; ++i) {
    double f = 1.0 / std::pow(theta, double(2 * i) / double(Dh));
    if (factor > 0) {
      const double wavelen = 2 * M_PI / f;
      const double low_wl = old_ctx / low, high_wl = old_ctx / high;
      if (wavelen < high_wl) {
        // high frequency: unchanged
      } else if (wavelen > low_wl) {
        f = f / factor;
      } else {
        const double smooth = (old_ctx / wavelen - low) / (high - low);
        f = (1 - smooth) * f / factor + smooth * f;
      }
    }
    inv[size_t(i)] = f;
  }
  return inv;
}

std::vector<double> ref_rope(const Buf &x, const std::vector<double> &inv) {
  const int64_t B = x.shape[0], H = x.shape[1], T = x.shape[2], Dh = x.shape[3], h2 = Dh / 2;
  std::vector<double> y(x.f.size());
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t t = 0; t < T; ++t) {
      const float *xr = &x.f[size_t((bh * T + t) * Dh)];
      double *yr = &y[size_t((bh * T + t) * Dh)];
      for (int64_t i = 0; i < h2; ++i) {
        const double a = double(t) * inv[size_t(i)], c = std::cos(a), s = std::sin(a);
        yr[i] = xr[i] * c - xr[i + h2] * s;
        yr[i + h2] = xr[i + h2] * c + xr[i] * s;
      }
    }
  return y;
}

std::vector<double> ref_attention(const Buf &q, const Buf &k, const Buf &v, double scale,
                                  bool causal) {
  const int64_t B = q.shape[0], Hq = q.shape[1], T = q.shape[2], Dh = q.shape[3];
  const int64_t Hkv = k.shape[1], S = k.shape[2], G = Hq / Hkv;
  std::vector<double> o(q.f.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t kvh = b * Hkv + h / G;
        std::vector<double> sc(size_t(S), -INFINITY);
        double m = -INFINITY;
        for (int64_t s = 0; s < S; ++s) {
          if (causal && s > t) continue;
          double d = 0;
          for (int64_t j = 0; j < Dh; ++j)
            d += double(q.f[((b * Hq + h) * T + t) * Dh + j]) * k.f[(kvh * S + s) * Dh + j];
          sc[s] = d * scale;
          m = std::max(m, sc[s]);
        }
        double sum = 0;
        for (int64_t s = 0; s < S; ++s) sum += std::exp(sc[s] - m);
        for (int64_t s = 0; s < S; ++s) {
          const double p = std::exp(sc[s] - m) / sum;
          for (int64_t j = 0; j < Dh; ++j)
            o[((b * Hq + h) * T + t) * Dh + j] += p * v.f[(kvh * S + s) * Dh + j];
        }
      }
  return o;
}

Attrs rope_attrs(bool llama3) {
  Attrs a{{"theta", 10000.0}};
  if (llama3) {
    // Dh = 16, theta = 1e4: wavelengths 6.3 .. 19869 cover the high (< 256), medium
    // (256..1024) and low (> 1024) frequency bands of original_max_position_embeddings 1024.
    a["rope_type"] = std::string("llama3");
    a["factor"] = 8.0;
    a["low_freq_factor"] = 1.0;
    a["high_freq_factor"] = 4.0;
    a["original_max_position_embeddings"] = int64_t(1024);
  }
  return a;
}

// ------------------------------------------------------------------- registry

TEST(CpuKernels, RegistryHasEveryContractKernel) {
  const char *names[] = {"embedding_fwd",    "rms_norm_fwd",      "rms_norm_bwd",
                         "linear_fwd",       "linear_bwd_input",  "lora_linear_fwd",
                         "lora_linear_bwd",  "rope_fwd",          "rope_bwd",
                         "attention_fwd",    "attention_bwd",     "swiglu_fwd",
                         "swiglu_bwd",       "add",               "transpose",
                         "copy",             "accumulate",        "cross_entropy_fwd",
                         "cross_entropy_bwd", "adamw_step",       "fill_zero"};
  for (const char *n : names) EXPECT_NE(registry().find(n), nullptr) << n;
  EXPECT_EQ(registry().names().size(), sizeof(names) / sizeof(names[0]));
}

TEST(CpuKernels, FillZeroClearsEveryOutput) {
  std::vector<float> a(5, 1.5f), b(3, -2.0f);
  plan::Instr instr;
  instr.op = "fill_zero";
  KernelCall c;
  c.instr = &instr;
  c.out = {Tensor{a.data(), plan::ElemType::F32, {5}}, Tensor{b.data(), plan::ElemType::F32, {3}}};
  ASSERT_TRUE(registry().find("fill_zero")->operator()(c));
  for (float v : a) EXPECT_EQ(v, 0.0f);
  for (float v : b) EXPECT_EQ(v, 0.0f);
  c.in = {Tensor{a.data(), plan::ElemType::F32, {5}}};
  EXPECT_FALSE(registry().find("fill_zero")->operator()(c));  // no inputs allowed
}

// ------------------------------------------------------------------- attribute accessors

TEST(KernelCallAttrs, ConversionsAndDefaults) {
  plan::Instr instr;
  instr.attrs = {{"i", int64_t(7)},          {"d_int", 3.0},     {"d_frac", 2.5},
                 {"s", std::string("llama3")}, {"perm", std::vector<int64_t>{0, 2, 1}}};
  KernelCall c;
  c.instr = &instr;
  EXPECT_EQ(c.attr_i("i", -1), 7);
  EXPECT_EQ(c.attr_i("d_int", -1), 3);      // integral double accepted
  EXPECT_EQ(c.attr_i("d_frac", -1), -1);    // non-integral: default
  EXPECT_EQ(c.attr_i("s", -1), -1);         // wrong type: default
  EXPECT_EQ(c.attr_i("missing", 42), 42);
  EXPECT_DOUBLE_EQ(c.attr_f("i", 0.0), 7.0);  // int64 accepted
  EXPECT_DOUBLE_EQ(c.attr_f("d_frac", 0.0), 2.5);
  EXPECT_DOUBLE_EQ(c.attr_f("missing", 1.5), 1.5);
  EXPECT_EQ(c.attr_s("s", "x"), "llama3");
  EXPECT_EQ(c.attr_s("i", "dflt"), "dflt");
  EXPECT_EQ(c.attr_ints("perm"), (std::vector<int64_t>{0, 2, 1}));
  EXPECT_TRUE(c.attr_ints("missing").empty());
  EXPECT_TRUE(c.has_attr("perm"));
  EXPECT_FALSE(c.has_attr("missing"));
  KernelCall none;  // no instruction at all
  EXPECT_EQ(none.attr_i("i", 5), 5);
  EXPECT_FALSE(none.has_attr("i"));
}

// ------------------------------------------------------------------- gradient checks

TEST(CpuKernelsGrad, RmsNormBwd) {
  Rng rng(1);
  Buf x = rng.buf({2, 3, 8}), w = rng.buf({8}, 0.5f, 1.5f), R = rng.buf({2, 3, 8});
  Buf y = zeros({2, 3, 8}), dx = zeros({2, 3, 8});
  const Attrs at{{"eps", 1e-5}};
  RUN_OK("rms_norm_bwd", {&R, &x, &w}, {&dx}, at);
  auto loss = [&] {
    EXPECT_TRUE(run("rms_norm_fwd", {&x, &w}, {&y}, at).is_ok());
    return project(y, R);
  };
  EXPECT_LT(fd_check("rms_norm_bwd dx", x.f, dx.f, loss), kFdTol);
}

TEST(CpuKernelsGrad, LinearBwdInput) {
  Rng rng(2);
  Buf x = rng.buf({2, 3, 6}), W = rng.buf({4, 6}), bias = rng.buf({4}), R = rng.buf({2, 3, 4});
  Buf y = zeros({2, 3, 4}), dx = zeros({2, 3, 6});
  RUN_OK("linear_bwd_input", {&R, &W}, {&dx});
  auto loss = [&] {
    EXPECT_TRUE(run("linear_fwd", {&x, &W, &bias}, {&y}).is_ok());
    return project(y, R);
  };
  EXPECT_LT(fd_check("linear_bwd_input dx", x.f, dx.f, loss), kFdTol);

  // accumulate = 1 adds into dx.
  Buf acc = rng.buf({2, 3, 6});
  const Buf before = acc;
  RUN_OK("linear_bwd_input", {&R, &W}, {&acc}, {{"accumulate", int64_t(1)}});
  for (size_t i = 0; i < acc.f.size(); ++i)
    EXPECT_NEAR(acc.f[i], before.f[i] + dx.f[i], 1e-5) << i;
}

TEST(CpuKernelsGrad, LoraLinearBwd) {
  Rng rng(3);
  const int64_t K = 6, N = 5, r = 3;
  Buf x = rng.buf({2, 3, K}), W = rng.buf({N, K}), A = rng.buf({r, K}), B = rng.buf({N, r}),
      bias = rng.buf({N}), R = rng.buf({2, 3, N});
  Buf y = zeros({2, 3, N}), dx = zeros({2, 3, K}), dA = zeros({r, K}), dB = zeros({N, r});
  const Attrs at{{"scaling", 2.0}};
  RUN_OK("lora_linear_bwd", {&R, &x, &W, &A, &B}, {&dx, &dA, &dB}, at);
  auto loss = [&] {
    EXPECT_TRUE(run("lora_linear_fwd", {&x, &W, &A, &B, &bias}, {&y}, at).is_ok());
    return project(y, R);
  };
  EXPECT_LT(fd_check("lora_linear_bwd dx", x.f, dx.f, loss), kFdTol);
  EXPECT_LT(fd_check("lora_linear_bwd dA", A.f, dA.f, loss), kFdTol);
  EXPECT_LT(fd_check("lora_linear_bwd dB", B.f, dB.f, loss), kFdTol);

  // accumulate = 1: dA and dB accumulate, dx is overwritten.
  Buf dx2 = zeros({2, 3, K}, 123.0f), dA2 = rng.buf({r, K}), dB2 = rng.buf({N, r});
  const Buf dA0 = dA2, dB0 = dB2;
  Attrs acc = at;
  acc["accumulate"] = int64_t(1);
  RUN_OK("lora_linear_bwd", {&R, &x, &W, &A, &B}, {&dx2, &dA2, &dB2}, acc);
  for (size_t i = 0; i < dx.f.size(); ++i) EXPECT_NEAR(dx2.f[i], dx.f[i], 1e-5) << i;
  for (size_t i = 0; i < dA.f.size(); ++i) EXPECT_NEAR(dA2.f[i], dA0.f[i] + dA.f[i], 1e-5) << i;
  for (size_t i = 0; i < dB.f.size(); ++i) EXPECT_NEAR(dB2.f[i], dB0.f[i] + dB.f[i], 1e-5) << i;

  // part = "input" / "weight" (zb-h1's B and W): each writes only its outputs (the others keep
  // their fill), and together they give the whole kernel's (finite-difference-checked) results.
  Attrs in_part = at, w_part = at;
  in_part["part"] = std::string("input");
  w_part["part"] = std::string("weight");
  Buf dx3 = zeros({2, 3, K}), dA3 = zeros({r, K}, 7.0f), dB3 = zeros({N, r}, 7.0f);
  RUN_OK("lora_linear_bwd", {&R, &x, &W, &A, &B}, {&dx3, &dA3, &dB3}, in_part);
  Buf dx4 = zeros({2, 3, K}, 5.0f), dA4 = zeros({r, K}), dB4 = zeros({N, r});
  RUN_OK("lora_linear_bwd", {&R, &x, &W, &A, &B}, {&dx4, &dA4, &dB4}, w_part);
  for (size_t i = 0; i < dx.f.size(); ++i) EXPECT_EQ(dx3.f[i], dx.f[i]) << i;
  for (size_t i = 0; i < dx.f.size(); ++i) EXPECT_EQ(dx4.f[i], 5.0f) << i;
  for (size_t i = 0; i < dA.f.size(); ++i) EXPECT_EQ(dA3.f[i], 7.0f) << i;
  for (size_t i = 0; i < dA.f.size(); ++i) EXPECT_EQ(dA4.f[i], dA.f[i]) << i;
  for (size_t i = 0; i < dB.f.size(); ++i) EXPECT_EQ(dB3.f[i], 7.0f) << i;
  for (size_t i = 0; i < dB.f.size(); ++i) EXPECT_EQ(dB4.f[i], dB.f[i]) << i;
  Attrs bad = at;
  bad["part"] = std::string("both");
  Status st = run("lora_linear_bwd", {&R, &x, &W, &A, &B}, {&dx4, &dA4, &dB4}, bad);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("attr part = 'both' (expected all, input or weight)"), std::string::npos) << st.message();
}

TEST(CpuKernelsGrad, RopeBwd) {
  for (bool llama3 : {false, true}) {
    Rng rng(4);
    Buf x = rng.buf({2, 3, 5, 16}), R = rng.buf({2, 3, 5, 16});
    Buf y = zeros({2, 3, 5, 16}), dx = zeros({2, 3, 5, 16});
    const Attrs at = rope_attrs(llama3);
    RUN_OK("rope_bwd", {&R}, {&dx}, at);
    auto loss = [&] {
      EXPECT_TRUE(run("rope_fwd", {&x}, {&y}, at).is_ok());
      return project(y, R);
    };
    EXPECT_LT(fd_check(llama3 ? "rope_bwd dx (llama3)" : "rope_bwd dx", x.f, dx.f, loss), kFdTol);
  }
}

TEST(CpuKernelsGrad, AttentionBwd) {
  for (bool causal : {true, false}) {
    Rng rng(causal ? 5 : 6);
    const int64_t B = 2, Hq = 4, Hkv = 2, T = 5, S = causal ? 5 : 6, Dh = 4;
    Buf q = rng.buf({B, Hq, T, Dh}), k = rng.buf({B, Hkv, S, Dh}), v = rng.buf({B, Hkv, S, Dh});
    Buf R = rng.buf({B, Hq, T, Dh}), o = zeros({B, Hq, T, Dh});
    Buf dq = zeros({B, Hq, T, Dh}), dk = zeros({B, Hkv, S, Dh}), dv = zeros({B, Hkv, S, Dh});
    const Attrs at{{"scale", 0.7}, {"causal", int64_t(causal)}};
    RUN_OK("attention_bwd", {&R, &q, &k, &v}, {&dq, &dk, &dv}, at);
    auto loss = [&] {
      EXPECT_TRUE(run("attention_fwd", {&q, &k, &v}, {&o}, at).is_ok());
      return project(o, R);
    };
    const std::string tag = causal ? " (causal)" : " (non-causal, S != T)";
    EXPECT_LT(fd_check("attention_bwd dq" + tag, q.f, dq.f, loss), kFdTol);
    EXPECT_LT(fd_check("attention_bwd dk" + tag, k.f, dk.f, loss), kFdTol);
    EXPECT_LT(fd_check("attention_bwd dv" + tag, v.f, dv.f, loss), kFdTol);
  }
}

TEST(CpuKernelsGrad, SwigluBwd) {
  Rng rng(7);
  Buf g = rng.buf({3, 7}, -3.0f, 3.0f), u = rng.buf({3, 7}), R = rng.buf({3, 7});
  Buf y = zeros({3, 7}), dg = zeros({3, 7}), du = zeros({3, 7});
  RUN_OK("swiglu_bwd", {&R, &g, &u}, {&dg, &du});
  auto loss = [&] {
    EXPECT_TRUE(run("swiglu_fwd", {&g, &u}, {&y}).is_ok());
    return project(y, R);
  };
  EXPECT_LT(fd_check("swiglu_bwd dgate", g.f, dg.f, loss), kFdTol);
  EXPECT_LT(fd_check("swiglu_bwd dup", u.f, du.f, loss), kFdTol);
}

TEST(CpuKernelsGrad, CrossEntropyBwd) {
  for (int64_t shift : {1, 0}) {
    Rng rng(8);
    const int64_t B = 2, T = 4, V = 7;
    Buf logits = rng.buf({B, T, V}, -2.0f, 2.0f);
    // Ignored positions at (0, 2) and (1, 1); labels[:, 0] is unused when shift = 1.
    Buf labels = ints({B, T}, {3, 6, -100, 0, 5, -100, 2, 4});
    Buf loss = zeros({}), dl = zeros({B, T, V}, 99.0f);
    const double grad_scale = 0.5;
    const Attrs at{{"ignore_index", int64_t(-100)},
                   {"shift", shift},
                   {"grad_scale", grad_scale}};
    RUN_OK("cross_entropy_bwd", {&logits, &labels}, {&dl}, at);
    // Rows that predict nothing have zero gradient: (0,1) -> label (0,2) ignored, (1,0) ->
    // (1,1) ignored, and t = T-1 when shifting; without the shift, (0,2) and (1,1).
    std::vector<std::pair<int, int>> zero_rows =
        shift ? std::vector<std::pair<int, int>>{{0, 1}, {1, 0}, {0, 3}, {1, 3}}
              : std::vector<std::pair<int, int>>{{0, 2}, {1, 1}};
    for (auto [b, t] : zero_rows)
      for (int64_t j = 0; j < V; ++j) EXPECT_EQ(dl.f[(b * T + t) * V + j], 0.0f);
    auto L = [&] {
      EXPECT_TRUE(run("cross_entropy_fwd", {&logits, &labels}, {&loss}, at).is_ok());
      return grad_scale * double(loss.f[0]);
    };
    // The loss is a single fp32 value: a wider step keeps its rounding out of the difference.
    EXPECT_LT(fd_check(shift ? "cross_entropy_bwd dlogits (shift=1)"
                             : "cross_entropy_bwd dlogits (shift=0)",
                       logits.f, dl.f, L, 1e-2),
              kFdTol);
  }
}

// ------------------------------------------------------------------- forward kernels

TEST(CpuKernelsFwd, Embedding) {
  Rng rng(10);
  Buf table = rng.buf({5, 3}), ids = ints({2, 2}, {4, 0, 2, 4}), y = zeros({2, 2, 3});
  RUN_OK("embedding_fwd", {&ids, &table}, {&y});
  for (int i = 0; i < 4; ++i)
    for (int d = 0; d < 3; ++d) EXPECT_EQ(y.f[i * 3 + d], table.f[ids.i[i] * 3 + d]);

  Buf bad = ints({2, 2}, {1, 2, 3, 5});
  expect_error(run("embedding_fwd", {&bad, &table}, {&y}),
               {"embedding_fwd", kLoc, "token id 5", "b=1, t=1", "[0, 5)"});
  Buf neg = ints({2, 2}, {1, -1, 3, 0});
  expect_error(run("embedding_fwd", {&neg, &table}, {&y}), {"token id -1", "b=0, t=1"});
}

TEST(CpuKernelsFwd, RmsNorm) {
  Rng rng(11);
  Buf x = rng.buf({3, 2, 10}), w = rng.buf({10}), y = zeros({3, 2, 10});
  const double eps = 1e-6;
  RUN_OK("rms_norm_fwd", {&x, &w}, {&y}, {{"eps", eps}});
  std::vector<double> ref(x.f.size());
  for (int r = 0; r < 6; ++r) {
    double ss = 0;
    for (int j = 0; j < 10; ++j) ss += double(x.f[r * 10 + j]) * x.f[r * 10 + j];
    const double inv = 1.0 / std::sqrt(ss / 10 + eps);
    for (int j = 0; j < 10; ++j) ref[r * 10 + j] = double(w.f[j]) * x.f[r * 10 + j] * inv;
  }
  const double err = max_abs_diff(y.f, ref);
  std::printf("[FWD] rms_norm_fwd max_abs_err=%.3e\n", err);
  EXPECT_LT(err, 1e-5);
}

TEST(CpuKernelsFwd, LinearWithAndWithoutBias) {
  Rng rng(12);
  Buf x = rng.buf({2, 5, 7}), W = rng.buf({3, 7}), bias = rng.buf({3}), y = zeros({2, 5, 3});
  RUN_OK("linear_fwd", {&x, &W, &bias}, {&y});
  EXPECT_LT(max_abs_diff(y.f, ref_linear(x, W, &bias)), 1e-5);
  Buf y2 = zeros({10, 3}, 7.0f);  // absent bias operand; y with other leading dims
  RUN_OK("linear_fwd", {&x, &W, nullptr}, {&y2});
  EXPECT_LT(max_abs_diff(y2.f, ref_linear(x, W, nullptr)), 1e-5);
  Buf y3 = zeros({2, 5, 3}, 7.0f);  // bias left out of the input list
  RUN_OK("linear_fwd", {&x, &W}, {&y3});
  EXPECT_TRUE(bit_equal(y2.f, y3.f));
}

TEST(CpuKernelsFwd, LoraLinear) {
  Rng rng(13);
  const int64_t K = 9, N = 4, r = 2;
  Buf x = rng.buf({3, 2, K}), W = rng.buf({N, K}), A = rng.buf({r, K}), B = rng.buf({N, r}),
      bias = rng.buf({N}), y = zeros({3, 2, N});
  const double s = 0.75;
  RUN_OK("lora_linear_fwd", {&x, &W, &A, &B, &bias}, {&y}, {{"scaling", s}});
  std::vector<double> ref = ref_linear(x, W, &bias);
  for (int64_t m = 0; m < 6; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t j = 0; j < r; ++j) {
        double xa = 0;
        for (int64_t k = 0; k < K; ++k) xa += double(x.f[m * K + k]) * A.f[j * K + k];
        acc += xa * B.f[n * r + j];
      }
      ref[m * N + n] += s * acc;
    }
  const double err = max_abs_diff(y.f, ref);
  std::printf("[FWD] lora_linear_fwd max_abs_err=%.3e\n", err);
  EXPECT_LT(err, 1e-5);
  // Without bias, as an absent operand.
  Buf y2 = zeros({3, 2, N});
  RUN_OK("lora_linear_fwd", {&x, &W, &A, &B, nullptr}, {&y2}, {{"scaling", s}});
  for (size_t i = 0; i < y.f.size(); ++i) EXPECT_NEAR(y2.f[i], y.f[i] - bias.f[i % N], 1e-5);
}

TEST(CpuKernelsFwd, RopeMatchesHfFormulaAndIsIdentityAtPositionZero) {
  Rng rng(14);
  const int64_t B = 1, H = 2, T = 40, Dh = 16;
  Buf x = rng.buf({B, H, T, Dh});
  for (bool llama3 : {false, true}) {
    Buf y = zeros({B, H, T, Dh});
    RUN_OK("rope_fwd", {&x}, {&y}, rope_attrs(llama3));
    // Position 0 is the identity, bit for bit.
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < Dh; ++j)
        EXPECT_EQ(y.f[(h * T) * Dh + j], x.f[(h * T) * Dh + j]) << h << "," << j;
    const auto inv = llama3 ? ref_inv_freq(10000.0, Dh, 8.0, 1.0, 4.0, 1024.0)
                            : ref_inv_freq(10000.0, Dh, 0, 0, 0, 0);
    const double err = max_abs_diff(y.f, ref_rope(x, inv));
    std::printf("[FWD] rope_fwd%s max_abs_err=%.3e\n", llama3 ? " (llama3)" : "", err);
    EXPECT_LT(err, 2e-5);
  }
  // The llama3 scaling changes the low and medium frequencies only: dims 0..3 (high
  // frequency) are equal to the unscaled rotation, dims 4..7 (and their pairs) differ.
  Buf y0 = zeros({B, H, T, Dh}), y3 = zeros({B, H, T, Dh});
  RUN_OK("rope_fwd", {&x}, {&y0}, rope_attrs(false));
  RUN_OK("rope_fwd", {&x}, {&y3}, rope_attrs(true));
  double high_diff = 0, low_diff = 0;
  for (int64_t row = 0; row < B * H * T; ++row)
    for (int64_t j = 0; j < Dh; ++j) {
      const double d = std::fabs(double(y0.f[row * Dh + j]) - y3.f[row * Dh + j]);
      (j % 8 < 4 ? high_diff : low_diff) = std::max(j % 8 < 4 ? high_diff : low_diff, d);
    }
  EXPECT_EQ(high_diff, 0.0);
  EXPECT_GT(low_diff, 1e-3);
}

TEST(CpuKernelsFwd, Llama3InvFreqBands) {
  // One rotation pair per test through rope_fwd at position 1: y = (x1 c - x2 s, x2 c + x1 s)
  // with x = (1, 0) gives (cos f, sin f), i.e. the scaled inv_freq f itself.
  const int64_t Dh = 16;
  Buf x = zeros({1, 1, 2, Dh});
  for (int64_t i = 0; i < Dh / 2; ++i) x.f[Dh + i] = 1.0f;  // position 1, first half
  Buf y = zeros({1, 1, 2, Dh});
  RUN_OK("rope_fwd", {&x}, {&y}, rope_attrs(true));
  const auto inv = ref_inv_freq(10000.0, Dh, 8.0, 1.0, 4.0, 1024.0);
  for (int64_t i = 0; i < Dh / 2; ++i) {
    const double f = std::atan2(double(y.f[Dh + Dh / 2 + i]), double(y.f[Dh + i]));
    EXPECT_NEAR(f, inv[size_t(i)], 1e-6 * std::max(1.0, inv[size_t(i)])) << i;
  }
  // Hand values: i = 5 (wavelen 1987 > 1024): inv_freq / 8; i = 4 (wavelen 628, medium):
  // smooth = (1024/628.3 - 1) / 3.
  const double f4 = 1.0 / std::pow(1e4, 8.0 / 16), f5 = 1.0 / std::pow(1e4, 10.0 / 16);
  const double sm = (1024.0 / (2 * M_PI / f4) - 1.0) / 3.0;
  EXPECT_NEAR(inv[5], f5 / 8, 1e-12);
  EXPECT_NEAR(inv[4], (1 - sm) * f4 / 8 + sm * f4, 1e-12);
}

TEST(CpuKernelsFwd, Attention) {
  for (bool causal : {true, false}) {
    Rng rng(15);
    const int64_t B = 2, Hq = 6, Hkv = 2, T = 7, S = causal ? 7 : 9, Dh = 5;
    Buf q = rng.buf({B, Hq, T, Dh}, -2, 2), k = rng.buf({B, Hkv, S, Dh}, -2, 2),
        v = rng.buf({B, Hkv, S, Dh}), o = zeros({B, Hq, T, Dh});
    const double scale = 1.0 / std::sqrt(double(Dh));
    RUN_OK("attention_fwd", {&q, &k, &v}, {&o}, {{"scale", scale}, {"causal", int64_t(causal)}});
    const double err = max_abs_diff(o.f, ref_attention(q, k, v, scale, causal));
    std::printf("[FWD] attention_fwd%s max_abs_err=%.3e\n", causal ? " (causal)" : "", err);
    EXPECT_LT(err, 1e-5);
    if (causal) {  // row t = 0 attends to key 0 only: o = v[0]
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t j = 0; j < Dh; ++j)
          EXPECT_NEAR(o.f[(h * T) * Dh + j], v.f[(h / 3) * S * Dh + j], 1e-6);
    }
  }
}

TEST(CpuKernelsFwd, SwigluAddAccumulate) {
  Rng rng(16);
  Buf g = rng.buf({4, 5}, -4, 4), u = rng.buf({4, 5}), y = zeros({4, 5});
  RUN_OK("swiglu_fwd", {&g, &u}, {&y});
  std::vector<double> ref(g.f.size());
  for (size_t i = 0; i < ref.size(); ++i)
    ref[i] = double(g.f[i]) / (1.0 + std::exp(-double(g.f[i]))) * u.f[i];
  EXPECT_LT(max_abs_diff(y.f, ref), 1e-6);

  Buf s = zeros({4, 5});
  RUN_OK("add", {&g, &u}, {&s});
  for (size_t i = 0; i < s.f.size(); ++i) EXPECT_EQ(s.f[i], g.f[i] + u.f[i]);

  Buf acc = rng.buf({4, 5});
  const Buf before = acc;
  RUN_OK("accumulate", {&u}, {&acc});
  for (size_t i = 0; i < acc.f.size(); ++i) EXPECT_EQ(acc.f[i], before.f[i] + u.f[i]);
}

TEST(CpuKernelsFwd, TransposeAndCopy) {
  Rng rng(17);
  const int64_t B = 2, T = 3, H = 4, Dh = 5;
  Buf x = rng.buf({B, T, H, Dh}), y = zeros({B, H, T, Dh});
  RUN_OK("transpose", {&x}, {&y}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < Dh; ++d)
          EXPECT_EQ(y.f[((b * H + h) * T + t) * Dh + d], x.f[((b * T + t) * H + h) * Dh + d]);

  // A 3-d rotation on int32 data.
  std::vector<int32_t> vals(24);
  for (int i = 0; i < 24; ++i) vals[size_t(i)] = i * 3 + 1;
  Buf xi = ints({2, 3, 4}, vals), yi = ints({4, 2, 3}, std::vector<int32_t>(24, 0));
  RUN_OK("transpose", {&xi}, {&yi}, {{"perm", std::vector<int64_t>{2, 0, 1}}});
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 3; ++b)
      for (int c = 0; c < 4; ++c) EXPECT_EQ(yi.i[(c * 2 + a) * 3 + b], xi.i[(a * 3 + b) * 4 + c]);

  Buf z = zeros({B * T, H * Dh});
  RUN_OK("copy", {&x}, {&z});
  EXPECT_TRUE(bit_equal(x.f, z.f));
}

TEST(CpuKernelsFwd, CrossEntropyHandComputed) {
  // Uniform logits: the loss is log V for every counted position.
  Buf logits = zeros({2, 3, 4}), labels = ints({2, 3}, {0, 1, 2, 3, -100, 1}), loss = zeros({});
  RUN_OK("cross_entropy_fwd", {&logits, &labels}, {&loss}, {{"shift", int64_t(1)}});
  EXPECT_NEAR(loss.f[0], std::log(4.0), 1e-6);

  // One counted position with shift = 1: logits[0, 0] = (1, 2, 3) predicts labels[0, 1] = 2.
  Buf l2 = zeros({1, 3, 3}), lab2 = ints({1, 3}, {0, 2, -100});
  l2.f = {1, 2, 3, 9, -9, 4, 0.5f, 0.25f, 7};
  RUN_OK("cross_entropy_fwd", {&l2, &lab2}, {&loss},
         {{"shift", int64_t(1)}, {"ignore_index", int64_t(-100)}});
  const double lse = 3.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2.0));
  EXPECT_NEAR(loss.f[0], lse - 3.0, 1e-6);  // 0.40760596
  EXPECT_NEAR(loss.f[0], 0.40760596, 1e-6);
  // Its gradient: softmax - onehot at row 0 only (count 1, grad_scale 1).
  Buf d2 = zeros({1, 3, 3}, 5.0f);
  RUN_OK("cross_entropy_bwd", {&l2, &lab2}, {&d2}, {{"shift", int64_t(1)}});
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_NEAR(d2.f[0], std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(d2.f[1], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(d2.f[2], std::exp(3.0) / z - 1.0, 1e-6);
  for (int j = 3; j < 9; ++j) EXPECT_EQ(d2.f[j], 0.0f);

  // Every position ignored: loss 0 and zero gradient (not NaN).
  Buf lab3 = ints({1, 3}, {-100, -100, -100});
  RUN_OK("cross_entropy_fwd", {&l2, &lab3}, {&loss}, {{"shift", int64_t(0)}});
  EXPECT_EQ(loss.f[0], 0.0f);
  RUN_OK("cross_entropy_bwd", {&l2, &lab3}, {&d2}, {{"shift", int64_t(0)}});
  for (float v : d2.f) EXPECT_EQ(v, 0.0f);

  // Numerically stable for huge logits: (1000, 0) with label 1 -> loss 1000.
  Buf l4 = zeros({1, 1, 2}), lab4 = ints({1, 1}, {1}), d4 = zeros({1, 1, 2});
  l4.f = {1000.0f, 0.0f};
  RUN_OK("cross_entropy_fwd", {&l4, &lab4}, {&loss}, {{"shift", int64_t(0)}});
  EXPECT_NEAR(loss.f[0], 1000.0f, 1e-3);
  RUN_OK("cross_entropy_bwd", {&l4, &lab4}, {&d4}, {{"shift", int64_t(0)}});
  EXPECT_NEAR(d4.f[0], 1.0f, 1e-6);
  EXPECT_NEAR(d4.f[1], -1.0f, 1e-6);
}

// ------------------------------------------------------------------- adamw_step

struct AdamRef {  // torch.optim.AdamW + clip_grad_norm_, scalar, double precision
  std::vector<std::vector<double>> p, m, v;
  double grad_norm = 0;
  void step(const std::vector<std::vector<double>> &g_in, int64_t t, double lr, double b1,
            double b2, double eps, double wd, double max_norm) {
    double ss = 0;
    for (auto &g : g_in)
      for (double x : g) ss += x * x;
    grad_norm = std::sqrt(ss);
    double coef = 1.0;
    if (max_norm > 0) coef = std::min(1.0, max_norm / (grad_norm + 1e-6));
    for (size_t i = 0; i < p.size(); ++i)
      for (size_t j = 0; j < p[i].size(); ++j) {
        const double g = g_in[i][j] * coef;
        p[i][j] *= 1 - lr * wd;
        m[i][j] = b1 * m[i][j] + (1 - b1) * g;
        v[i][j] = b2 * v[i][j] + (1 - b2) * g * g;
        const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
        p[i][j] -= lr / bc1 * m[i][j] / (std::sqrt(v[i][j]) / std::sqrt(bc2) + eps);
      }
  }
};

struct AdamCase {
  const char *name;
  double max_norm, wd, eps;
  bool expect_clip;
};

TEST(CpuKernelsAdamW, MatchesTorchOverThreeSteps) {
  const AdamCase cases[] = {{"clipping active", 0.5, 0.1, 1e-8, true},
                            {"clipping inactive", 100.0, 0.1, 1e-8, false},
                            {"clipping off, no decay, large eps", 0.0, 0.0, 1e-3, false}};
  for (const AdamCase &cs : cases) {
    SCOPED_TRACE(cs.name);
    Rng rng(20);
    std::vector<Buf> P = {rng.buf({3, 4}), rng.buf({5})};
    std::vector<Buf> G = {zeros({3, 4}), zeros({5})}, M = G, Vv = G;
    AdamRef ref;
    for (auto &b : P) {
      ref.p.emplace_back(b.f.begin(), b.f.end());
      ref.m.emplace_back(b.f.size(), 0.0);
      ref.v.emplace_back(b.f.size(), 0.0);
    }
    const double b1 = 0.9, b2 = 0.999;
    const Attrs at{{"n", int64_t(2)},        {"beta1", b1},
                   {"beta2", b2},            {"eps", cs.eps},
                   {"weight_decay", cs.wd},  {"max_grad_norm", cs.max_norm},
                   {"zero_grads", int64_t(1)}};
    for (int64_t t = 1; t <= 3; ++t) {
      std::vector<std::vector<double>> gd;
      for (auto &g : G) {
        for (float &x : g.f) x = rng.uniform(-1.0f, 1.0f);
        gd.emplace_back(g.f.begin(), g.f.end());
      }
      StepState st;
      st.step = t;
      st.lr = 1e-2 * double(t);  // a schedule: lr changes per step
      RUN_OK("adamw_step", {&P[0], &P[1], &G[0], &G[1], &M[0], &M[1], &Vv[0], &Vv[1]}, {}, at,
             &st);
      ref.step(gd, t, st.lr, b1, b2, cs.eps, cs.wd, cs.max_norm);
      EXPECT_TRUE(st.grad_norm_finite);
      EXPECT_NEAR(st.grad_norm, ref.grad_norm, 1e-12 * ref.grad_norm);
      EXPECT_EQ(cs.expect_clip, cs.max_norm > 0 && cs.max_norm / (ref.grad_norm + 1e-6) < 1);
      double perr = 0, merr = 0, verr = 0;
      for (size_t i = 0; i < P.size(); ++i)
        for (size_t j = 0; j < P[i].f.size(); ++j) {
          perr = std::max(perr, std::fabs(P[i].f[j] - ref.p[i][j]));
          merr = std::max(merr, std::fabs(M[i].f[j] - ref.m[i][j]));
          verr = std::max(verr, std::fabs(Vv[i].f[j] - ref.v[i][j]));
          EXPECT_EQ(G[i].f[j], 0.0f);  // zero_grads
        }
      std::printf("[ADAMW] %-36s step %lld: |dp|=%.2e |dm|=%.2e |dv|=%.2e norm=%.4f\n", cs.name,
                  (long long)t, perr, merr, verr, st.grad_norm);
      // An update is ~lr = 1e-2: formula errors show at that scale, fp32 rounding at 1e-7.
      EXPECT_LT(perr, 2e-6);
      EXPECT_LT(merr, 1e-6);
      EXPECT_LT(verr, 1e-7);
    }
  }
}

TEST(CpuKernelsAdamW, ClipScalesGradientsAndKeepsThemWithoutZeroGrads) {
  Buf p = zeros({2}), g = zeros({2}), m = zeros({2}), v = zeros({2});
  g.f = {3.0f, 4.0f};  // norm 5
  StepState st;
  st.step = 1;
  st.lr = 0.0;  // no parameter change; clipping still rewrites the grads
  RUN_OK("adamw_step", {&p, &g, &m, &v}, {},
         {{"n", int64_t(1)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8},
          {"max_grad_norm", 1.0}, {"zero_grads", int64_t(0)}},
         &st);
  EXPECT_DOUBLE_EQ(st.grad_norm, 5.0);
  EXPECT_NEAR(g.f[0], 3.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(g.f[1], 4.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(m.f[0], 0.1 * 3.0 / 5.0, 1e-7);
}

TEST(CpuKernelsAdamW, NonFiniteGradientSkipsTheUpdate) {
  for (float bad : {NAN, INFINITY}) {
    Rng rng(21);
    Buf p = rng.buf({4}), g = rng.buf({4}), m = rng.buf({4}), v = rng.buf({4}, 0, 1);
    Buf p2 = rng.buf({3}), g2 = rng.buf({3}), m2 = rng.buf({3}), v2 = rng.buf({3}, 0, 1);
    g2.f[1] = bad;
    const Buf p0 = p, m0 = m, v0 = v, p20 = p2;
    StepState st;
    st.step = 2;
    st.lr = 0.1;
    RUN_OK("adamw_step", {&p, &p2, &g, &g2, &m, &m2, &v, &v2}, {},
           {{"n", int64_t(2)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8},
            {"weight_decay", 0.1}, {"max_grad_norm", 1.0}, {"zero_grads", int64_t(1)}},
           &st);
    EXPECT_FALSE(st.grad_norm_finite);
    EXPECT_FALSE(std::isfinite(st.grad_norm));
    EXPECT_TRUE(bit_equal(p.f, p0.f));
    EXPECT_TRUE(bit_equal(p2.f, p20.f));
    EXPECT_TRUE(bit_equal(m.f, m0.f));
    EXPECT_TRUE(bit_equal(v.f, v0.f));
    for (float x : g.f) EXPECT_EQ(x, 0.0f);  // grads still zeroed
    for (float x : g2.f) EXPECT_EQ(x, 0.0f);
  }
}

// ------------------------------------------------------------------- validation errors

TEST(CpuKernelsErrors, OperandCountsAndShapes) {
  Rng rng(30);
  Buf x = rng.buf({2, 6}), W = rng.buf({4, 6}), y = zeros({2, 4});
  expect_error(run("linear_fwd", {&x}, {&y}), {"linear_fwd", kLoc, "expected 2 to 3 inputs, got 1"});
  expect_error(run("linear_fwd", {&x, &W}, {}), {"expected 1 outputs, got 0"});
  Buf W5 = rng.buf({4, 5});
  expect_error(run("linear_fwd", {&x, &W5}, {&y}), {"linear_fwd", "x", "[2, 6]", "last dim 5"});
  Buf y3 = zeros({3, 4});
  expect_error(run("linear_fwd", {&x, &W}, {&y3}), {"y", "[3, 4]", "expected 2 rows"});
  Buf b5 = rng.buf({5});
  expect_error(run("linear_fwd", {&x, &W, &b5}, {&y}), {"bias", "[5]", "[4]"});

  Buf w7 = rng.buf({7}), yn = zeros({2, 6});
  expect_error(run("rms_norm_fwd", {&x, &w7}, {&yn}, {{"eps", 1e-6}}),
               {"rms_norm_fwd", kLoc, "[2, 6]", "last dim 7"});
  Buf w6 = rng.buf({6});
  expect_error(run("rms_norm_fwd", {&x, &w6}, {&yn}), {"missing required attr eps"});
  expect_error(run("rms_norm_fwd", {&x, &w6}, {&yn}, {{"eps", std::string("1e-6")}}),
               {"attr eps must be a number"});

  Buf A = rng.buf({2, 6}), Bbad = rng.buf({4, 3}), dx = zeros({2, 6}), dA = zeros({2, 6}),
      dB = zeros({4, 2});
  expect_error(run("lora_linear_bwd", {&y, &x, &W, &A, &Bbad}, {&dx, &dA, &dB}, {{"scaling", 1.0}}),
               {"lora_linear_bwd", "B", "[4, 3]", "[4, 2]"});

  Buf q = rng.buf({1, 3, 4, 8}), k = rng.buf({1, 2, 4, 8}), o = zeros({1, 3, 4, 8});
  expect_error(run("attention_fwd", {&q, &k, &k}, {&o}, {{"scale", 0.3}, {"causal", int64_t(1)}}),
               {"attention_fwd", "Hq = 3", "Hkv = 2"});
  Buf k5 = rng.buf({1, 1, 5, 8});
  Buf q4 = rng.buf({1, 2, 4, 8}), o4 = zeros({1, 2, 4, 8});
  expect_error(run("attention_fwd", {&q4, &k5, &k5}, {&o4}, {{"scale", 0.3}, {"causal", int64_t(1)}}),
               {"T = 4", "S = 5"});

  Buf r = rng.buf({1, 1, 2, 5}), ry = zeros({1, 1, 2, 5});
  expect_error(run("rope_fwd", {&r}, {&ry}, rope_attrs(false)), {"rope_fwd", "Dh = 5", "even"});
  Buf r8 = rng.buf({1, 1, 2, 8}), ry8 = zeros({1, 1, 2, 8});
  expect_error(run("rope_fwd", {&r8}, {&ry8}, {{"theta", 1e4}, {"rope_type", std::string("yarn")}}),
               {"unsupported rope_type 'yarn'"});
  expect_error(run("rope_fwd", {&r8}, {&ry8}, {{"theta", 1e4}, {"rope_type", std::string("llama3")}}),
               {"missing required attr factor"});

  Buf tx = rng.buf({2, 3}), ty = zeros({3, 2});
  expect_error(run("transpose", {&tx}, {&ty}, {{"perm", std::vector<int64_t>{0, 0}}}),
               {"transpose", "[0, 0]", "not a permutation"});
  Buf cy = zeros({7});
  expect_error(run("copy", {&tx}, {&cy}), {"copy", "6 elements", "[7]"});
  Buf ay = zeros({3, 2});
  expect_error(run("add", {&tx, &ty}, {&ay}), {"add", "b", "[3, 2]", "[2, 3]"});

  // An `accumulate` attr on a kernel that cannot honour it is an error, not ignored.
  Buf sy = zeros({2, 3});
  expect_error(run("swiglu_fwd", {&tx, &tx}, {&sy}, {{"accumulate", int64_t(1)}}),
               {"swiglu_fwd", "accumulate"});
  // Wrong element type.
  Buf ids = ints({2, 3}, {0, 1, 2, 3, 4, 5});
  expect_error(run("add", {&ids, &tx}, {&sy}), {"add", "a must be f32"});
  // An absent required operand.
  expect_error(run("add", {nullptr, &tx}, {&sy}), {"operand a is absent"});
}

TEST(CpuKernelsErrors, CrossEntropyLabelOutOfRange) {
  Buf logits = zeros({1, 3, 4}), loss = zeros({}), dl = zeros({1, 3, 4});
  Buf labels = ints({1, 3}, {0, 9, 1});
  const Attrs at{{"shift", int64_t(1)}, {"ignore_index", int64_t(-100)}};
  expect_error(run("cross_entropy_fwd", {&logits, &labels}, {&loss}, at),
               {"cross_entropy_fwd", kLoc, "label 9", "b=0, t=1", "[0, 4)"});
  expect_error(run("cross_entropy_bwd", {&logits, &labels}, {&dl}, at),
               {"cross_entropy_bwd", "label 9"});
  Buf neg = ints({1, 3}, {0, 1, -5});
  expect_error(run("cross_entropy_fwd", {&logits, &neg}, {&loss}, at), {"label -5", "t=2"});
  // With shift = 1, labels[:, 0] is never read: an out-of-range value there is harmless.
  Buf first = ints({1, 3}, {77, 1, 2});
  RUN_OK("cross_entropy_fwd", {&logits, &first}, {&loss}, at);
  Buf badlab = ints({1, 2}, {0, 1});
  expect_error(run("cross_entropy_fwd", {&logits, &badlab}, {&loss}, at),
               {"labels", "[1, 2]", "[1, 3]"});
}

TEST(CpuKernelsErrors, AdamWNeedsStepStateAndMatchingShapes) {
  Buf p = zeros({3}), g = zeros({3}), m = zeros({3}), v = zeros({4});
  const Attrs at{{"n", int64_t(1)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}};
  StepState st;
  st.step = 1;
  st.lr = 1e-3;
  expect_error(run("adamw_step", {&p, &g, &m, &v}, {}, at, &st), {"adamw_step", "v_0", "[4]", "[3]"});
  Buf v3 = zeros({3});
  expect_error(run("adamw_step", {&p, &g, &m, &v3}, {}, at, nullptr), {"StepState"});
  expect_error(run("adamw_step", {&p, &g, &m}, {}, at, &st), {"expected 4 inputs, got 3"});
  StepState st0;
  expect_error(run("adamw_step", {&p, &g, &m, &v3}, {}, at, &st0), {"step must be >= 1"});
}

// ------------------------------------------------------------------- determinism

TEST(CpuKernelsDeterminism, RepeatedRunsAndThreadCountsAreBitIdentical) {
  Rng rng(40);
  const int64_t B = 2, Hq = 4, Hkv = 2, T = 33, Dh = 8;
  Buf q = rng.buf({B, Hq, T, Dh}), k = rng.buf({B, Hkv, T, Dh}), v = rng.buf({B, Hkv, T, Dh}),
      dO = rng.buf({B, Hq, T, Dh});
  const Attrs at{{"scale", 0.35}, {"causal", int64_t(1)}};
  auto attn = [&](int threads) {
    cpu::set_num_threads(threads);
    Buf o = zeros({B, Hq, T, Dh}), dq = zeros({B, Hq, T, Dh}), dk = zeros({B, Hkv, T, Dh}),
        dv = zeros({B, Hkv, T, Dh});
    EXPECT_TRUE(run("attention_fwd", {&q, &k, &v}, {&o}, at).is_ok());
    EXPECT_TRUE(run("attention_bwd", {&dO, &q, &k, &v}, {&dq, &dk, &dv}, at).is_ok());
    std::vector<float> all = o.f;
    for (auto *b : {&dq, &dk, &dv}) all.insert(all.end(), b->f.begin(), b->f.end());
    return all;
  };
  const auto a1 = attn(2), a2 = attn(2), a3 = attn(1), a4 = attn(3);
  EXPECT_TRUE(bit_equal(a1, a2));
  EXPECT_TRUE(bit_equal(a1, a3)) << "attention depends on the thread count";
  EXPECT_TRUE(bit_equal(a1, a4)) << "attention depends on the thread count";

  Buf logits = rng.buf({3, 17, 1000}, -5, 5);
  std::vector<int32_t> lab(51);
  for (int i = 0; i < 51; ++i) lab[size_t(i)] = i % 7 == 0 ? -100 : (i * 13) % 1000;
  Buf labels = ints({3, 17}, lab);
  auto ce = [&](int threads) {
    cpu::set_num_threads(threads);
    Buf loss = zeros({}), dl = zeros({3, 17, 1000});
    const Attrs ca{{"shift", int64_t(1)}, {"grad_scale", 0.25}};
    EXPECT_TRUE(run("cross_entropy_fwd", {&logits, &labels}, {&loss}, ca).is_ok());
    EXPECT_TRUE(run("cross_entropy_bwd", {&logits, &labels}, {&dl}, ca).is_ok());
    std::vector<float> all = loss.f;
    all.insert(all.end(), dl.f.begin(), dl.f.end());
    return all;
  };
  const auto c1 = ce(2), c2 = ce(2), c3 = ce(1);
  EXPECT_TRUE(bit_equal(c1, c2));
  EXPECT_TRUE(bit_equal(c1, c3));

  // GEMM kernels and the optimizer: identical for the same thread count.
  auto lora = [&] {
    cpu::set_num_threads(2);
    Rng r2(41);
    Buf x = r2.buf({64, 48}), W = r2.buf({40, 48}), A = r2.buf({8, 48}), Bm = r2.buf({40, 8}),
        dy = r2.buf({64, 40});
    Buf dx = zeros({64, 48}), dA = zeros({8, 48}), dB = zeros({40, 8});
    EXPECT_TRUE(
        run("lora_linear_bwd", {&dy, &x, &W, &A, &Bm}, {&dx, &dA, &dB}, {{"scaling", 2.0}}).is_ok());
    std::vector<float> all = dx.f;
    all.insert(all.end(), dA.f.begin(), dA.f.end());
    all.insert(all.end(), dB.f.begin(), dB.f.end());
    Buf p = r2.buf({100000}), g = r2.buf({100000}), m = zeros({100000}), mv = zeros({100000});
    StepState st;
    st.step = 1;
    st.lr = 1e-3;
    EXPECT_TRUE(run("adamw_step", {&p, &g, &m, &mv}, {},
                    {{"n", int64_t(1)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8},
                     {"max_grad_norm", 1.0}},
                    &st)
                    .is_ok());
    all.insert(all.end(), p.f.begin(), p.f.end());
    all.push_back(float(st.grad_norm));
    return all;
  };
  EXPECT_TRUE(bit_equal(lora(), lora()));
  cpu::set_num_threads(0);
}

// The GEMM kernels (runtime/cpu/gemm.cpp cuts each product into tiles by its shape alone and
// never splits K): the same bits for 1, 2, 3 and 8 threads, with oneDNN and with OpenBLAS, at
// shapes that are cut along M (the LoRA linears) and along N (a skinny product with a long
// reduction, which both libraries split over K when left to thread it themselves). Each library
// must also agree with a plain double-precision product (catches a tile written to the wrong
// place or a tile left out).
TEST(CpuKernelsDeterminism, GemmsIndependentOfThreadCountForEveryLibrary) {
  Rng rng(43);
  const int64_t M = 1000, K = 200, N = 176, r = 16;
  Buf x = rng.buf({M, K}), W = rng.buf({N, K}), A = rng.buf({r, K}), Bm = rng.buf({N, r}),
      dy = rng.buf({M, N}), bias = rng.buf({N});
  // Skinny: (16 x 8192) @ (8192 x 300): 16 rows, a reduction of 8192.
  Buf s1 = rng.buf({8192, 16}), s2 = rng.buf({8192, 300});
  auto all = [&](int threads) {
    cpu::set_num_threads(threads);
    Buf y = zeros({M, N}), dx = zeros({M, K}), dA = zeros({r, K}), dB = zeros({N, r}), st = zeros({16, 300});
    const Attrs at{{"scaling", 2.0}};
    EXPECT_TRUE(run("lora_linear_fwd", {&x, &W, &A, &Bm, &bias}, {&y}, at).is_ok());
    EXPECT_TRUE(run("lora_linear_bwd", {&dy, &x, &W, &A, &Bm}, {&dx, &dA, &dB}, at).is_ok());
    // st = s1^T s2 through the transposed-A path of sgemm.
    cpu::detail::sgemm(true, false, 16, 300, 8192, 1.0f, s1.f.data(), 16, s2.f.data(), 300, 0.0f, st.f.data(), 300);
    std::vector<float> out;
    for (Buf *b : {&y, &dx, &dA, &dB, &st}) out.insert(out.end(), b->f.begin(), b->f.end());
    return out;
  };
  for (const char *lib : {"onednn", "openblas"}) {
    if (!cpu::gemm_library_available(std::string(lib) == "onednn" ? cpu::GemmLibrary::kOneDnn : cpu::GemmLibrary::kOpenBlas)) {
      std::printf("  %s: not in this build, skipped\n", lib);
      continue;
    }
    ASSERT_EQ(cpu::set_gemm_library(lib), "");
    const auto a1 = all(1), a2 = all(2), a3 = all(3), a8 = all(8);
    EXPECT_TRUE(bit_equal(a1, a2)) << lib << ": 1 vs 2 threads";
    EXPECT_TRUE(bit_equal(a1, a3)) << lib << ": 1 vs 3 threads";
    EXPECT_TRUE(bit_equal(a1, a8)) << lib << ": 1 vs 8 threads";
    // Against double precision, each error relative to the sum of |terms| of its dot products
    // (fp32 rounding is bounded by about K x 2^-24 of it and typically sqrt(K) x 2^-24; 1e-6 is
    // ~17 x 2^-24): a misplaced or missing tile is off by O(1). The skinny product first.
    const size_t off = a1.size() - 16 * 300;
    double worst = 0;
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 300; ++j) {
        double ref = 0, mag = 0;
        for (int k = 0; k < 8192; ++k) {
          const double t = double(s1.f[size_t(k) * 16 + i]) * s2.f[size_t(k) * 300 + j];
          ref += t;
          mag += std::abs(t);
        }
        worst = std::max(worst, std::abs(a1[off + size_t(i) * 300 + j] - ref) / mag);
      }
    EXPECT_LT(worst, 1e-6) << lib << ": 16 x 300 x 8192";
    // The forward: y = x W^T + bias + 2 (x A^T) B^T, on every 37th row.
    worst = 0;
    for (int64_t i = 0; i < M; i += 37)
      for (int64_t j = 0; j < N; ++j) {
        double ref = bias.f[size_t(j)], mag = std::abs(ref);
        for (int64_t k = 0; k < K; ++k) {
          const double t = double(x.f[size_t(i * K + k)]) * W.f[size_t(j * K + k)];
          ref += t;
          mag += std::abs(t);
        }
        for (int64_t q = 0; q < r; ++q) {
          double xa = 0, xmag = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double t = double(x.f[size_t(i * K + k)]) * A.f[size_t(q * K + k)];
            xa += t;
            xmag += std::abs(t);
          }
          ref += 2.0 * xa * Bm.f[size_t(j * r + q)];
          mag += 2.0 * xmag * std::abs(Bm.f[size_t(j * r + q)]);
        }
        worst = std::max(worst, std::abs(a1[size_t(i * N + j)] - ref) / mag);
      }
    EXPECT_LT(worst, 1e-6) << lib << ": lora_linear_fwd";
  }
  ASSERT_EQ(cpu::set_gemm_library("auto"), "");
  cpu::set_num_threads(0);
}

// The element-wise and row-wise kernels on sizes large enough to run in parallel: the same
// bits for 1, 2 and 3 threads (and so the same as the small, single-threaded cases above).
TEST(CpuKernelsDeterminism, RowKernelsIndependentOfThreadCount) {
  Rng rng(42);
  const int64_t M = 96, D = 1024;
  Buf x = rng.buf({M, D}), w = rng.buf({D}), dy = rng.buf({M, D}), u = rng.buf({M, D});
  Buf r = rng.buf({2, 4, 128, 64}), table = rng.buf({300, 128});
  std::vector<int32_t> idv(512);
  for (int i = 0; i < 512; ++i) idv[size_t(i)] = (i * 37) % 300;
  Buf ids = ints({2, 256}, idv);
  auto all = [&](int threads) {
    cpu::set_num_threads(threads);
    Buf y = zeros({M, D}), dx = zeros({M, D}), sy = zeros({M, D}), dg = zeros({M, D}),
        du = zeros({M, D}), ry = zeros({2, 4, 128, 64}), rdx = zeros({2, 4, 128, 64}),
        e = zeros({2, 256, 128}), t = zeros({D, M});
    const Attrs eps{{"eps", 1e-5}};
    EXPECT_TRUE(run("rms_norm_fwd", {&x, &w}, {&y}, eps).is_ok());
    EXPECT_TRUE(run("rms_norm_bwd", {&dy, &x, &w}, {&dx}, eps).is_ok());
    EXPECT_TRUE(run("swiglu_fwd", {&x, &u}, {&sy}).is_ok());
    EXPECT_TRUE(run("swiglu_bwd", {&dy, &x, &u}, {&dg, &du}).is_ok());
    EXPECT_TRUE(run("rope_fwd", {&r}, {&ry}, rope_attrs(true)).is_ok());
    EXPECT_TRUE(run("rope_bwd", {&r}, {&rdx}, rope_attrs(true)).is_ok());
    EXPECT_TRUE(run("embedding_fwd", {&ids, &table}, {&e}).is_ok());
    EXPECT_TRUE(run("transpose", {&x}, {&t}, {{"perm", std::vector<int64_t>{1, 0}}}).is_ok());
    std::vector<float> out;
    for (Buf *b : {&y, &dx, &sy, &dg, &du, &ry, &rdx, &e, &t})
      out.insert(out.end(), b->f.begin(), b->f.end());
    return out;
  };
  const auto a1 = all(1), a2 = all(2), a3 = all(3);
  EXPECT_TRUE(bit_equal(a1, a2));
  EXPECT_TRUE(bit_equal(a1, a3));
  cpu::set_num_threads(0);
}

} // namespace

// The executor-bound operand 2 of the cross-entropy (Executor::set_loss_denominator): the sum over
// counted positions is divided by label_count / shares instead of the local count, forward and
// backward, so micro-batches of a global batch with different label counts average to its mean.
TEST(CpuKernelsFwd, CrossEntropyGlobalDenominator) {
  Buf l2 = zeros({1, 3, 3}), lab2 = ints({1, 3}, {0, 2, 1}), loss = zeros({});
  l2.f = {1, 2, 3, 9, -9, 4, 0.5f, 0.25f, 7};
  // Two counted positions: row 0 predicts 2, row 1 predicts 1.
  const double r0 = 3.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2.0)) - 3.0;
  const double r1 = 9.0 + std::log(1.0 + std::exp(-18.0) + std::exp(-5.0)) + 9.0;
  RUN_OK("cross_entropy_fwd", {&l2, &lab2}, {&loss}, {{"shift", int64_t(1)}});
  EXPECT_NEAR(loss.f[0], (r0 + r1) / 2.0, 1e-5);  // local mean
  // The global batch has 6 counted labels over 4 shares: divisor 1.5.
  Buf den = ints({2}, {6, 4});
  RUN_OK("cross_entropy_fwd", {&l2, &lab2, &den}, {&loss}, {{"shift", int64_t(1)}});
  EXPECT_NEAR(loss.f[0], (r0 + r1) / 1.5, 1e-5);
  Buf d = zeros({1, 3, 3}), d_local = zeros({1, 3, 3});
  RUN_OK("cross_entropy_bwd", {&l2, &lab2, &den}, {&d}, {{"shift", int64_t(1)}, {"grad_scale", 0.25}});
  RUN_OK("cross_entropy_bwd", {&l2, &lab2}, {&d_local}, {{"shift", int64_t(1)}, {"grad_scale", 0.25}});
  for (int j = 0; j < 9; ++j) EXPECT_NEAR(d.f[j], d_local.f[j] * 2.0 / 1.5, 1e-6) << j;
  // label_count 0 (never set): the local count, as without the operand.
  Buf unset = ints({2}, {0, 0});
  RUN_OK("cross_entropy_fwd", {&l2, &lab2, &unset}, {&loss}, {{"shift", int64_t(1)}});
  EXPECT_NEAR(loss.f[0], (r0 + r1) / 2.0, 1e-5);
  // A malformed operand is named.
  Buf bad = ints({3}, {1, 2, 3});
  expect_error(run("cross_entropy_fwd", {&l2, &lab2, &bad}, {&loss}, {{"shift", int64_t(1)}}), {"denominator"});
}
