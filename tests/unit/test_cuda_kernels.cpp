// Tests for runtime/cuda: every kernel of the contract (runtime/cpu/kernels.h) on the GPU
// against its CPU twin, on seeded random inputs of small realistic shapes (B=2, T=16, D=64,
// 4 query / 2 kv heads, V=256, r=4, plus odd sizes that cross the kernels' tile edges).
//
// Each case runs the CPU kernel on host buffers and the CUDA kernel on managed buffers
// (cuda::memory().alloc) holding the same bytes, waits (memory().sync) and compares every
// output (and, for in-place kernels, every input). Printed per case: max abs error, and max
// rel error = max abs error / max |CPU value|.
//
// Tolerance (fp32 on both sides, different summation orders: cuBLASLt vs OpenBLAS tiles, warp
// trees vs sequential loops, FMA contraction on the GPU): |cuda - cpu| <= max(rtol * max|cpu|,
// atol) with rtol = 1e-4 (a few hundred ulps of the largest value: sums of 64..256 products
// round to ~1e-6 relative, so 1e-4 catches any formula error while leaving room for order
// effects) and atol = 1e-5 (for normalized outputs, |y| <= ~1: softmax-like probabilities,
// rms-normalized rows, gradients of a mean loss). Pure data movement (embedding, copy,
// transpose) must match exactly.
//
// bf16 (--precision bf16 plans): every kernel also runs with the operands a bf16 plan stores as
// bf16 (frozen weights, activations) given as BF16 tensors holding bf16-rounded seeded values,
// and the f32 ones (LoRA A/B, their gradients, the loss) as F32; the twin is the CPU registry's
// kernel on the same tensors (it widens, computes in f32 and rounds once on store). A few mixed
// f32/bf16 cases exercise the CUDA fallback (run_widened) and the mixed GEMM paths. Tolerance
// per output by its dtype: bf16 outputs |cuda - cpu| <= max(2^-7 * max|cpu|, atol) (one bf16
// ulp of the largest value: both sides round the same f32 result up to order noise, which can
// flip a rounding by one ulp); f32 outputs as above.
//
// Without a usable GPU (no driver: cudaGetDeviceCount fails with error 35) every GPU test is
// skipped with "no usable CUDA GPU: <why>"; the binary starts without a driver (no CUDA call
// before main) and the registry and executor-hook tests still run. PackedRopeAndAttention (at the
// end) covers sequence packing: rope's position_ids and attention's segment_ids.
#include "runtime/cuda/backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/base/bf16.h"
#include "runtime/comm/comm.h"
#include "runtime/core/executor.h"
#include "runtime/cpu/kernels.h"

using namespace parallora;
using namespace parallora::rt;

namespace {

using Attrs = std::map<std::string, plan::AttrValue>;

// ------------------------------------------------------------------ buffers

/// A host tensor that owns its data (absent = an absent optional operand).
struct Arg {
  std::vector<int64_t> shape;
  bool is_i32 = false;
  bool is_bf16 = false;  // stored as bf16 in h; f holds the widened values
  bool absent = false;
  std::vector<float> f;
  std::vector<int32_t> i;
  std::vector<uint16_t> h;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t bytes() const { return size_t(numel()) * (is_bf16 ? 2 : 4); }
  void *data() {
    if (is_i32) return i.data();
    return is_bf16 ? static_cast<void *>(h.data()) : static_cast<void *>(f.data());
  }
  /// After the storage was written (bf16): f = the widened values.
  void sync() {
    if (is_bf16) bf16_to_f32(h.data(), f.data(), int64_t(h.size()));
  }
};

/// The same tensor stored as bf16 (values rounded to nearest even).
Arg bf(Arg a) {
  if (a.absent || a.is_i32) return a;
  a.is_bf16 = true;
  a.h.resize(a.f.size());
  f32_to_bf16(a.f.data(), a.h.data(), int64_t(a.f.size()));
  a.sync();
  return a;
}

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  float uniform(float lo, float hi) {
    const double u = double(gen() >> 11) * (1.0 / 9007199254740992.0);
    return float(lo + (hi - lo) * u);
  }
  int32_t below(int32_t n) { return int32_t(gen() % uint64_t(n)); }
  Arg f32(std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f) {
    Arg a;
    a.shape = std::move(shape);
    a.f.resize(size_t(a.numel()));
    for (float &v : a.f) v = uniform(lo, hi);
    return a;
  }
  Arg ids(std::vector<int64_t> shape, int32_t n) {
    Arg a;
    a.shape = std::move(shape);
    a.is_i32 = true;
    a.i.resize(size_t(a.numel()));
    for (int32_t &v : a.i) v = below(n);
    return a;
  }
};

Arg zeros(std::vector<int64_t> shape) {
  Arg a;
  a.shape = std::move(shape);
  a.f.assign(size_t(a.numel()), 0.0f);
  return a;
}
Arg absent() {
  Arg a;
  a.absent = true;
  return a;
}

Tensor tensor_of(const Arg &a, void *data) {
  Tensor t;
  if (a.absent) return t;
  t.shape = a.shape;
  t.dtype = a.is_i32 ? plan::ElemType::I32 : a.is_bf16 ? plan::ElemType::BF16 : plan::ElemType::F32;
  t.data = data;
  return t;
}

// ------------------------------------------------------------------ backends

const KernelRegistry &cpu_registry() {
  static const KernelRegistry reg = [] {
    KernelRegistry r;
    cpu::register_kernels(r);
    register_collective_kernels(r);
    return r;
  }();
  return reg;
}
const KernelRegistry &cuda_registry() {
  static const KernelRegistry reg = [] {
    KernelRegistry r;
    cuda::register_kernels(r);  // no CUDA call: safe without a driver
    return r;
  }();
  return reg;
}

struct Opts {
  double rtol = 1e-4;
  double atol = 1e-5;
  bool exact = false;           // data movement: bit-identical
  bool compare_inputs = false;  // in-place kernels (adamw_step)
  bool comm = false;            // a local (one-rank) communicator in the call
  const StepState *step = nullptr;
};

struct Result {
  Status status;
  std::vector<Arg> in, out;
  StepState step;
};

constexpr const char *kLoc = "model.layers.0.test";

/// Relative tolerance of a bf16 output: one bf16 ulp of the largest |value| (2^-7).
constexpr double kBf16Rtol = 1.0 / 128.0;

/// Runs `op` on one backend: host copies for the CPU, managed copies for CUDA.
Result run_on(bool device, const std::string &op, const std::vector<Arg> &in, const std::vector<Arg> &out,
              const Attrs &attrs, const Opts &o) {
  Result r;
  r.in = in;
  r.out = out;
  if (o.step) r.step = *o.step;
  plan::Instr instr;
  instr.op = op;
  instr.attrs = attrs;
  instr.loc = kLoc;
  std::unique_ptr<Communicator> comm = o.comm ? make_local_communicator() : nullptr;
  KernelCall call;
  call.instr = &instr;
  call.step = o.step ? &r.step : nullptr;
  call.comm = comm.get();
  const MemoryHooks hooks = cuda::memory();
  std::vector<void *> dev;
  auto place = [&](Arg &a) -> Tensor {
    if (a.absent) return Tensor();
    if (!device) return tensor_of(a, a.data());
    void *p = hooks.alloc(std::max<size_t>(a.bytes(), 4));
    if (!p) return Tensor();
    std::memcpy(p, a.data(), a.bytes());
    dev.push_back(p);
    return tensor_of(a, p);
  };
  for (Arg &a : r.in) call.in.push_back(place(a));
  for (Arg &a : r.out) call.out.push_back(place(a));
  const KernelRegistry &reg = device ? cuda_registry() : cpu_registry();
  const KernelFn *fn = reg.find(op);
  if (!fn) {
    r.status = Status::error("no kernel " + op);
  } else {
    r.status = (*fn)(call);
  }
  if (device) {
    if (Status s = hooks.sync(); !s && r.status) r.status = s;
    auto back = [&](std::vector<Arg> &args, const std::vector<Tensor> &ts) {
      for (size_t i = 0; i < args.size(); ++i)
        if (!args[i].absent && ts[i].data) std::memcpy(args[i].data(), ts[i].data, args[i].bytes());
    };
    back(r.in, call.in);
    back(r.out, call.out);
    for (void *p : dev) hooks.free(p);
  }
  for (Arg &a : r.in) a.sync();
  for (Arg &a : r.out) a.sync();
  return r;
}

void compare_args(const std::string &name, const char *which, const std::vector<Arg> &ref,
                  const std::vector<Arg> &got, const Opts &o) {
  for (size_t k = 0; k < ref.size(); ++k) {
    if (ref[k].absent) continue;
    const std::string label = name + " " + which + "[" + std::to_string(k) + "]";
    if (ref[k].is_i32) {
      EXPECT_EQ(ref[k].i, got[k].i) << label;
      continue;
    }
    double max_abs = 0, max_ref = 0;
    bool nan_mismatch = false;
    for (size_t j = 0; j < ref[k].f.size(); ++j) {
      const double a = ref[k].f[j], b = got[k].f[j];
      if (std::isnan(a) || std::isnan(b)) {
        nan_mismatch = nan_mismatch || std::isnan(a) != std::isnan(b);
        continue;
      }
      max_abs = std::max(max_abs, std::fabs(a - b));
      max_ref = std::max(max_ref, std::fabs(a));
    }
    const double rtol = ref[k].is_bf16 ? kBf16Rtol : o.rtol;
    const double tol = o.exact ? 0.0 : std::max(rtol * max_ref, o.atol);
    std::printf("[CUDA] %-44s %s max abs %.3e  max rel %.3e  (max |cpu| %.3e, tol %.1e)\n", label.c_str(),
                ref[k].is_bf16 ? "bf16" : "f32 ", max_abs, max_ref > 0 ? max_abs / max_ref : 0.0, max_ref, tol);
    EXPECT_EQ(ref[k].is_bf16, got[k].is_bf16) << label;
    EXPECT_FALSE(nan_mismatch) << label << ": NaN in one backend only";
    EXPECT_LE(max_abs, tol) << label;
  }
}

/// Runs `op` on both backends and compares (see the file comment).
void check_op(const std::string &name, const std::string &op, const std::vector<Arg> &in,
              const std::vector<Arg> &out, const Attrs &attrs, const Opts &o = Opts()) {
  SCOPED_TRACE(name);
  Result ref = run_on(false, op, in, out, attrs, o);
  ASSERT_TRUE(ref.status.is_ok()) << "cpu: " << ref.status.message();
  Result got = run_on(true, op, in, out, attrs, o);
  ASSERT_TRUE(got.status.is_ok()) << "cuda: " << got.status.message();
  compare_args(name, "out", ref.out, got.out, o);
  if (o.compare_inputs) compare_args(name, "in", ref.in, got.in, o);
  if (o.step) {
    EXPECT_EQ(ref.step.grad_norm_finite, got.step.grad_norm_finite) << name;
    if (std::isfinite(ref.step.grad_norm))
      EXPECT_NEAR(got.step.grad_norm, ref.step.grad_norm, 1e-5 * std::fabs(ref.step.grad_norm)) << name;
    std::printf("[CUDA] %-44s grad_norm cpu %.8g cuda %.8g\n", (name + " step").c_str(), ref.step.grad_norm,
                got.step.grad_norm);
  }
}

/// Both backends reject the call; with `same_message`, in the same words.
void check_error(const std::string &name, const std::string &op, const std::vector<Arg> &in,
                 const std::vector<Arg> &out, const Attrs &attrs, bool same_message = true) {
  SCOPED_TRACE(name);
  Result ref = run_on(false, op, in, out, attrs, Opts());
  Result got = run_on(true, op, in, out, attrs, Opts());
  ASSERT_FALSE(ref.status.is_ok()) << "cpu accepted " << name;
  ASSERT_FALSE(got.status.is_ok()) << "cuda accepted " << name;
  std::printf("[CUDA] %-44s error: %s\n", name.c_str(), got.status.message().c_str());
  if (same_message) EXPECT_EQ(got.status.message(), ref.status.message());
}

class CudaKernels : public testing::Test {
protected:
  void SetUp() override {
    std::string why;
    if (!cuda::available(&why)) GTEST_SKIP() << "no usable CUDA GPU: " << why;
  }
};

constexpr int64_t B = 2, T = 16, D = 64, Hq = 4, Hkv = 2, Dh = D / Hq, V = 256, R = 4;

// ------------------------------------------------------------------ no GPU needed

const char *const kContract[] = {"embedding_fwd", "rms_norm_fwd", "rms_norm_bwd", "linear_fwd",
                                 "linear_bwd_input", "lora_linear_fwd", "lora_linear_bwd", "rope_fwd",
                                 "rope_bwd", "attention_fwd", "attention_bwd", "swiglu_fwd",
                                 "swiglu_bwd", "add", "transpose", "copy",
                                 "accumulate", "cross_entropy_fwd", "cross_entropy_bwd", "adamw_step",
                                 "fill_zero", "all_reduce", "broadcast", "send", "recv", "all_reduce_start", "all_reduce_wait"};

TEST(CudaBackend, RegistryHasEveryContractKernel) {
  for (const char *name : kContract) EXPECT_NE(cuda_registry().find(name), nullptr) << name;
  EXPECT_EQ(cuda_registry().names().size(), std::size(kContract));
  EXPECT_EQ(cuda_registry().names(), cpu_registry().names());
}

TEST(CudaBackend, AvailableExplainsItself) {
  std::string why;
  const bool ok = cuda::available(&why);
  std::printf("[CUDA] available: %s%s\n", ok ? "yes: " : "no: ", ok ? cuda::device_description().c_str() : why.c_str());
  if (!ok) {
    EXPECT_FALSE(why.empty());
    EXPECT_EQ(cuda::memory().alloc(64), nullptr);  // no device: allocation fails, no crash
  }
  EXPECT_EQ(cuda::available(), ok);  // cached, stable
}

// A hand-built one-rank plan: y = x + x (Activation), out = copy(y) (Output).
plan::Plan tiny_plan(int64_t n) {
  plan::Plan p;
  p.producer = "test";
  p.global_batch = 1;
  p.seq_len = n;
  p.vocab_size = 4;
  p.ranks.resize(1);
  plan::RankPlan &r = p.ranks[0];
  r.rank = 0;
  auto buffer = [&](const std::string &name, plan::BufferKind kind, int64_t offset) {
    plan::Buffer b;
    b.id = int32_t(r.buffers.size());
    b.name = name;
    b.kind = kind;
    b.dtype = plan::ElemType::F32;
    b.shape = {n};
    b.offset = offset;
    if (kind == plan::BufferKind::Activation) r.arena_bytes = std::max(r.arena_bytes, offset + b.nbytes());
    r.buffers.push_back(b);
    return b.id;
  };
  const int32_t x = buffer("x", plan::BufferKind::Input, -1);
  const int32_t y = buffer("%1", plan::BufferKind::Activation, 0);
  const int32_t out = buffer("out", plan::BufferKind::Output, -1);
  plan::Instr add, copy;
  add.op = "add";
  add.inputs = {x, x};
  add.outputs = {y};
  add.loc = "add";
  copy.op = "copy";
  copy.inputs = {y};
  copy.outputs = {out};
  copy.loc = "copy";
  r.programs.push_back({"micro_step", {add, copy}});
  return p;
}

// The executor allocates through MemoryHooks and syncs at the end of run(), before an
// InstrHook, and when a kernel fails (host hooks standing in for the CUDA ones).
TEST(CudaBackend, ExecutorUsesMemoryHooks) {
  int allocs = 0, frees = 0, syncs = 0;
  MemoryHooks hooks;
  hooks.alloc = [&](size_t bytes) {
    ++allocs;
    EXPECT_EQ(bytes % 64, 0u);
    return std::aligned_alloc(64, bytes);
  };
  hooks.free = [&](void *p) {
    ++frees;
    std::free(p);
  };
  hooks.sync = [&] {
    ++syncs;
    return Status::ok();
  };
  const plan::Plan p = tiny_plan(8);
  {
    auto ex = Executor::create(p, 0, cpu_registry(), "cpu", nullptr, &hooks);
    ASSERT_TRUE(ex.is_ok()) << ex.message();
    EXPECT_EQ(allocs, 1);  // one block: the arena (one slot) and the persistent buffers
    std::vector<int32_t> x = {1, 2, 3, 4, 5, 6, 7, 8};
    ASSERT_TRUE((*ex)->feed("x", x.data(), 8).is_ok());
    ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
    EXPECT_EQ(syncs, 1);
    const float *out = (*ex)->find("out")->tensor.f32();
    for (int i = 0; i < 8; ++i) EXPECT_EQ(out[i], 2.0f * float(i + 1));
    int hook_calls = 0;
    ASSERT_TRUE((*ex)->run("micro_step", nullptr, [&](size_t, const KernelCall &) { ++hook_calls; }).is_ok());
    EXPECT_EQ(hook_calls, 2);
    EXPECT_EQ(syncs, 1 + 2 + 1);  // before each hook, and at the end
    hooks.sync = [&] {
      ++syncs;
      return Status::error("device lost");
    };
  }
  EXPECT_EQ(frees, 1);
  // A failing sync becomes run()'s error.
  {
    auto ex = Executor::create(p, 0, cpu_registry(), "cpu", nullptr, &hooks);
    ASSERT_TRUE(ex.is_ok());
    Status s = (*ex)->run("micro_step", nullptr);
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("device lost"), std::string::npos) << s.message();
  }
}

// ------------------------------------------------------------------ GPU: the executor

TEST_F(CudaKernels, ExecutorRunsATinyPlanOnManagedMemory) {
  const MemoryHooks hooks = cuda::memory();
  auto ex = Executor::create(tiny_plan(1000), 0, cuda_registry(), "cuda", nullptr, &hooks);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  std::vector<int32_t> x(1000);
  for (int i = 0; i < 1000; ++i) x[i] = i - 500;
  ASSERT_TRUE((*ex)->feed("x", x.data(), 1000).is_ok());
  Status s = (*ex)->run("micro_step", nullptr);
  ASSERT_TRUE(s.is_ok()) << s.message();
  const float *out = (*ex)->find("out")->tensor.f32();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(out[i], 2.0f * float(i - 500)) << i;
}

// ------------------------------------------------------------------ GPU: CUDA graphs

// A one-rank training plan through the kernels the CUDA graph audit (runtime/cuda/graph.cu) had
// to make capture-safe: embedding_fwd (id check deferred to after the replay), rms_norm, linear
// (cuBLASLt, scratch), cross_entropy_fwd / _bwd (count of counted rows on the device, label
// check deferred), accumulate into a gradient; optimizer_step = adamw_step, which is not
// capturable (lr / step from the host) and must fall back to eager runs.
constexpr int64_t kGB = 2, kGT = 8, kGV = 32;

plan::Plan graph_plan() {
  plan::Plan p;
  p.producer = "test";
  p.global_batch = kGB;
  p.seq_len = kGT;
  p.vocab_size = kGV;
  p.ranks.resize(1);
  plan::RankPlan &r = p.ranks[0];
  r.rank = 0;
  auto buffer = [&](const std::string &name, plan::BufferKind kind, plan::ElemType dtype,
                    std::vector<int64_t> shape, const std::string &param = "") {
    plan::Buffer b;
    b.id = int32_t(r.buffers.size());
    b.name = name;
    b.kind = kind;
    b.dtype = dtype;
    b.shape = std::move(shape);
    b.param = param;
    if (kind == plan::BufferKind::Activation) {
      b.offset = r.arena_bytes;
      r.arena_bytes += (b.nbytes() + 255) / 256 * 256;
    }
    r.buffers.push_back(b);
    return b.id;
  };
  using K = plan::BufferKind;
  const plan::ElemType F = plan::ElemType::F32, I = plan::ElemType::I32;
  const int32_t ids = buffer("input_ids", K::Input, I, {kGB, kGT});
  const int32_t labels = buffer("labels", K::Input, I, {kGB, kGT});
  const int32_t table = buffer("embed", K::Param, F, {kGV, kGV});
  const int32_t nw = buffer("norm", K::Param, F, {kGV});
  const int32_t W = buffer("head", K::Param, F, {kGV, kGV});
  const int32_t tp = buffer("lora.p", K::Trainable, F, {kGB, kGT, kGV});
  const int32_t g = buffer("lora.p.grad", K::Grad, F, {kGB, kGT, kGV}, "lora.p");
  const int32_t m = buffer("lora.p.exp_avg", K::OptState, F, {kGB, kGT, kGV}, "lora.p");
  const int32_t v = buffer("lora.p.exp_avg_sq", K::OptState, F, {kGB, kGT, kGV}, "lora.p");
  const int32_t loss = buffer("loss", K::Output, F, {});
  const int32_t e = buffer("%1", K::Activation, F, {kGB, kGT, kGV});
  const int32_t n = buffer("%2", K::Activation, F, {kGB, kGT, kGV});
  const int32_t h = buffer("%3", K::Activation, F, {kGB, kGT, kGV});
  const int32_t dl = buffer("%4", K::Activation, F, {kGB, kGT, kGV});
  auto instr = [](const char *op, std::vector<int32_t> in, std::vector<int32_t> out, Attrs attrs = {}) {
    plan::Instr i;
    i.op = op;
    i.inputs = std::move(in);
    i.outputs = std::move(out);
    i.attrs = std::move(attrs);
    i.loc = std::string("graph.") + op;
    return i;
  };
  plan::Program micro{"micro_step", {}};
  micro.instrs.push_back(instr("embedding_fwd", {ids, table}, {e}));
  micro.instrs.push_back(instr("rms_norm_fwd", {e, nw}, {n}, {{"eps", 1e-5}}));
  micro.instrs.push_back(instr("linear_fwd", {n, W}, {h}));
  micro.instrs.push_back(instr("cross_entropy_fwd", {h, labels}, {loss}, {{"shift", int64_t(1)}}));
  micro.instrs.push_back(
      instr("cross_entropy_bwd", {h, labels}, {dl}, {{"shift", int64_t(1)}, {"grad_scale", 0.5}}));
  micro.instrs.push_back(instr("accumulate", {dl}, {g}));
  plan::Program opt{"optimizer_step", {}};
  opt.instrs.push_back(instr("adamw_step", {tp, g, m, v}, {},
                             {{"n", int64_t(1)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8},
                              {"weight_decay", 0.01}, {"max_grad_norm", 1.0}, {"zero_grads", int64_t(1)}}));
  r.programs.push_back(micro);
  r.programs.push_back(opt);
  return p;
}

/// Writes the same seeded values into the Params and the Trainable of an executor.
void fill_params(Executor &ex) {
  std::mt19937 gen(42);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const char *name : {"embed", "norm", "head", "lora.p"}) {
    const BufferTensor *b = ex.find(name);
    ASSERT_NE(b, nullptr) << name;
    for (int64_t i = 0; i < b->tensor.numel(); ++i) b->tensor.f32()[i] = u(gen);
  }
}

/// The step's token ids and labels (changing every step; some labels ignored).
void batch(int step, std::vector<int32_t> *ids, std::vector<int32_t> *labels) {
  std::mt19937 gen(uint32_t(1000 + step));
  ids->resize(size_t(kGB * kGT));
  labels->resize(size_t(kGB * kGT));
  for (size_t i = 0; i < ids->size(); ++i) {
    (*ids)[i] = int32_t(gen() % kGV);
    (*labels)[i] = (gen() % 5 == 0) ? -100 : int32_t(gen() % kGV);
  }
}

bool same_bits(const Tensor &a, const Tensor &b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data, b.data, size_t(a.nbytes())) == 0;
}

// Graph replay (memory().run_program) against eager runs (run_program removed) of the same plan:
// bit-identical losses, gradients and trainables for several steps with changing inputs;
// micro_step is captured once and replayed, optimizer_step (adamw_step) falls back to eager.
TEST_F(CudaKernels, GraphReplayIsBitIdenticalToEager) {
  MemoryHooks eager_hooks = cuda::memory();
  eager_hooks.run_program = nullptr;
  const MemoryHooks graph_hooks = cuda::memory();
  ASSERT_TRUE(static_cast<bool>(graph_hooks.run_program));
  const plan::Plan p = graph_plan();
  auto ea = Executor::create(p, 0, cuda_registry(), "cuda", nullptr, &eager_hooks);
  ASSERT_TRUE(ea.is_ok()) << ea.message();
  auto ga = Executor::create(p, 0, cuda_registry(), "cuda", nullptr, &graph_hooks);
  ASSERT_TRUE(ga.is_ok()) << ga.message();
  Executor &E = **ea, &G = **ga;
  fill_params(E);
  fill_params(G);
  const cuda::GraphCounters before = cuda::graph_counters();
  constexpr int kSteps = 6;
  for (int step = 1; step <= kSteps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    std::vector<int32_t> ids, labels;
    batch(step, &ids, &labels);
    for (Executor *ex : {&E, &G}) {
      ASSERT_TRUE(ex->feed("input_ids", ids.data(), int64_t(ids.size())).is_ok());
      ASSERT_TRUE(ex->feed("labels", labels.data(), int64_t(labels.size())).is_ok());
      Status s = ex->run("micro_step", nullptr);
      ASSERT_TRUE(s.is_ok()) << s.message();
    }
    const float le = float(E.loss()), lg = float(G.loss());
    std::printf("[CUDA] graph step %d loss eager %.9g graph %.9g\n", step, le, lg);
    EXPECT_EQ(std::memcmp(&le, &lg, sizeof le), 0) << "loss " << le << " vs " << lg;
    EXPECT_TRUE(same_bits(E.find("lora.p.grad")->tensor, G.find("lora.p.grad")->tensor)) << "gradient";
    StepState se, sg;
    se.step = sg.step = step;
    se.lr = sg.lr = 1e-2 / step;  // changes every step: adamw_step must never be replayed
    ASSERT_TRUE(E.run("optimizer_step", &se).is_ok());
    Status s = G.run("optimizer_step", &sg);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(se.grad_norm, sg.grad_norm);
    for (const char *name : {"lora.p", "lora.p.exp_avg", "lora.p.exp_avg_sq", "lora.p.grad"})
      EXPECT_TRUE(same_bits(E.find(name)->tensor, G.find(name)->tensor)) << name;
  }
  const cuda::GraphCounters after = cuda::graph_counters();
  EXPECT_EQ(after.captures - before.captures, 1);   // micro_step
  EXPECT_EQ(after.replays - before.replays, kSteps - 1);  // every micro_step after the warm-up
  EXPECT_EQ(after.fallbacks - before.fallbacks, 1);  // optimizer_step
  EXPECT_NE(after.last_fallback.find("adamw_step"), std::string::npos) << after.last_fallback;
  EXPECT_NE(after.last_fallback.find("optimizer_step"), std::string::npos) << after.last_fallback;
  std::printf("[CUDA] graph fallback: %s\n", after.last_fallback.c_str());
}

// The checks the graph defers (embedding's token ids, cross entropy's labels) still fail the run
// that replays bad data, naming the value and its position, and the graph keeps working after.
TEST_F(CudaKernels, GraphReplayReportsBadIdsAndLabels) {
  const MemoryHooks hooks = cuda::memory();
  auto ex_or = Executor::create(graph_plan(), 0, cuda_registry(), "cuda", nullptr, &hooks);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;
  fill_params(ex);
  const cuda::GraphCounters before = cuda::graph_counters();
  std::vector<int32_t> ids, labels;
  batch(1, &ids, &labels);
  auto run = [&](const std::vector<int32_t> &i, const std::vector<int32_t> &l) {
    EXPECT_TRUE(ex.feed("input_ids", i.data(), int64_t(i.size())).is_ok());
    EXPECT_TRUE(ex.feed("labels", l.data(), int64_t(l.size())).is_ok());
    return ex.run("micro_step", nullptr);
  };
  ASSERT_TRUE(run(ids, labels).is_ok());  // warm-up
  ASSERT_TRUE(run(ids, labels).is_ok());  // capture + launch
  const float good = float(ex.loss());
  std::vector<int32_t> bad_ids = ids;
  bad_ids[kGT + 3] = int32_t(kGV) + 7;
  Status s = run(bad_ids, labels);
  ASSERT_FALSE(s.is_ok());
  std::printf("[CUDA] graph bad id: %s\n", s.message().c_str());
  EXPECT_NE(s.message().find("token id " + std::to_string(kGV + 7) + " at position (b=1, t=3)"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("embedding_fwd"), std::string::npos) << s.message();
  std::vector<int32_t> bad_labels = labels;
  bad_labels[5] = -3;
  s = run(ids, bad_labels);
  ASSERT_FALSE(s.is_ok());
  std::printf("[CUDA] graph bad label: %s\n", s.message().c_str());
  EXPECT_NE(s.message().find("cross_entropy_fwd"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("-3"), std::string::npos) << s.message();
  s = run(ids, labels);  // good data again: the same graph, the same loss
  ASSERT_TRUE(s.is_ok()) << s.message();
  const float again = float(ex.loss());
  EXPECT_EQ(std::memcmp(&good, &again, sizeof good), 0) << good << " vs " << again;
  const cuda::GraphCounters after = cuda::graph_counters();
  EXPECT_EQ(after.captures - before.captures, 1);
  EXPECT_EQ(after.fallbacks - before.fallbacks, 0) << after.last_fallback;
}

// A program with a kernel that needs host work per call (one that waits for the stream: here the
// host-staged all_reduce_start / all_reduce_wait pair of the overlapped gradient buckets, which
// also reads StepState::last_micro) is not captured: it runs eagerly, every run, and stays
// correct. The executor keeps such a program away from run_program altogether (is_comm_op lists
// all_reduce_start / all_reduce_wait); should one reach run_program anyway, the kernels refuse
// the capture themselves (checked below by calling run_program directly).
TEST_F(CudaKernels, GraphFallsBackForHostWorkKernels) {
  plan::Plan p = tiny_plan(1000);
  plan::RankPlan &r = p.ranks[0];
  // micro_step: y = x + x; all_reduce_start(y) bucket 0 over "" (a local communicator);
  // all_reduce_wait(y) -> out with scale 0.5: out = x.
  const int32_t y = 1, out = 2;
  plan::Instr start, wait;
  start.op = "all_reduce_start";
  start.inputs = {y};
  start.attrs = {{"bucket", int64_t(0)}, {"group", std::string("")}};
  start.loc = "bucket";
  wait.op = "all_reduce_wait";
  wait.inputs = {y};
  wait.outputs = {out};
  wait.attrs = {{"bucket", int64_t(0)}, {"group", std::string("")}, {"scale", 0.5}};
  wait.loc = "bucket";
  r.programs[0].instrs = {r.programs[0].instrs[0], start, wait};
  auto comm = make_local_communicator();
  const MemoryHooks hooks = cuda::memory();
  auto ex_or = Executor::create(p, 0, cuda_registry(), "cuda", comm.get(), &hooks);
  ASSERT_TRUE(ex_or.is_ok()) << ex_or.message();
  Executor &ex = **ex_or;
  const cuda::GraphCounters before = cuda::graph_counters();
  std::vector<int32_t> x(1000);
  for (int step = 0; step < 5; ++step) {
    for (int i = 0; i < 1000; ++i) x[size_t(i)] = i * (step + 1) - 500;
    ASSERT_TRUE(ex.feed("x", x.data(), 1000).is_ok());
    StepState st;
    st.last_micro = step % 2 == 0;  // the start only happens on "last" micro-batches
    Status s = ex.run("micro_step", &st);
    ASSERT_TRUE(s.is_ok()) << s.message();
    const float *o = ex.find("out")->tensor.f32();
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(o[i], float(x[size_t(i)])) << "step " << step << " i " << i;
  }
  const cuda::GraphCounters mid = cuda::graph_counters();
  EXPECT_EQ(mid.captures - before.captures, 0);
  EXPECT_EQ(mid.fallbacks - before.fallbacks, 0);   // never handed to run_program
  EXPECT_EQ(mid.eager_runs - before.eager_runs, 0);

  // The same kernels through run_program directly: the capture (2nd run) is refused by
  // all_reduce_start at entry and every run executes eagerly.
  const MemoryHooks direct = cuda::memory();
  float *buf = static_cast<float *>(direct.alloc(16 * sizeof(float)));
  ASSERT_NE(buf, nullptr);
  for (int i = 0; i < 16; ++i) buf[i] = float(i);
  int eager_calls = 0;
  auto bucket = [&]() -> Status {
    ++eager_calls;
    Tensor t;
    t.data = buf;
    t.shape = {16};
    KernelCall sc;
    sc.instr = &start;
    sc.comm = comm.get();
    sc.in = {t};
    if (Status s = (*cuda_registry().find("all_reduce_start"))(sc); !s) return s;
    KernelCall wc;
    wc.instr = &wait;
    wc.comm = comm.get();
    wc.in = {t};
    wc.out = {t};
    return (*cuda_registry().find("all_reduce_wait"))(wc);
  };
  for (int run = 0; run < 3; ++run) {
    Status s = direct.run_program("bucket", 0, bucket);
    ASSERT_TRUE(s.is_ok()) << s.message();
  }
  ASSERT_TRUE(direct.sync().is_ok());
  for (int i = 0; i < 16; ++i) EXPECT_EQ(buf[i], float(i) / 8.0f) << i;  // scale 0.5, three times
  direct.free(buf);
  const cuda::GraphCounters after = cuda::graph_counters();
  EXPECT_EQ(after.captures - mid.captures, 0);
  EXPECT_EQ(after.fallbacks - mid.fallbacks, 1);
  EXPECT_NE(after.last_fallback.find("all_reduce_start"), std::string::npos) << after.last_fallback;
  EXPECT_EQ(after.eager_runs - mid.eager_runs, 3);  // warm-up, the refused capture's real run, 1 more
  EXPECT_EQ(eager_calls, 4);                        // + the call inside the abandoned capture
}

// The tiny plan itself (add + copy: both capturable) replays, and a second executor created on
// the same hooks turns graphs off for them instead of replaying the first executor's pointers.
TEST_F(CudaKernels, GraphCacheIsPerExecutor) {
  const MemoryHooks hooks = cuda::memory();
  const cuda::GraphCounters before = cuda::graph_counters();
  std::vector<int32_t> x(1000);
  auto check = [&](Executor &ex, int step) {
    for (int i = 0; i < 1000; ++i) x[size_t(i)] = i * step - 300;
    ASSERT_TRUE(ex.feed("x", x.data(), 1000).is_ok());
    Status s = ex.run("micro_step", nullptr);
    ASSERT_TRUE(s.is_ok()) << s.message();
    const float *o = ex.find("out")->tensor.f32();
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(o[i], 2.0f * float(x[size_t(i)])) << "step " << step << " i " << i;
  };
  {
    auto a = Executor::create(tiny_plan(1000), 0, cuda_registry(), "cuda", nullptr, &hooks);
    ASSERT_TRUE(a.is_ok()) << a.message();
    for (int step = 1; step <= 4; ++step) check(**a, step);
    const cuda::GraphCounters mid = cuda::graph_counters();
    EXPECT_EQ(mid.captures - before.captures, 1);
    EXPECT_EQ(mid.replays - before.replays, 3);
    // A second executor on the same hooks (not how lora-run uses them): graphs off, still right.
    auto b = Executor::create(tiny_plan(1000), 0, cuda_registry(), "cuda", nullptr, &hooks);
    ASSERT_TRUE(b.is_ok()) << b.message();
    for (int step = 5; step <= 7; ++step) {
      check(**b, step);
      check(**a, step + 10);
    }
    EXPECT_EQ(cuda::graph_counters().replays - mid.replays, 0);
  }
}

// ------------------------------------------------------------------ GPU: kernels

TEST_F(CudaKernels, Embedding) {
  Rng rng(1);
  Arg ids = rng.ids({B, T}, int32_t(V)), table = rng.f32({V, D});
  Opts exact;
  exact.exact = true;
  check_op("embedding_fwd", "embedding_fwd", {ids, table}, {zeros({B, T, D})}, {}, exact);
  // Vocabulary-parallel form on a one-rank group (shard = the whole table).
  Opts vg = exact;
  vg.comm = true;
  check_op("embedding_fwd vocab_group", "embedding_fwd", {ids, table}, {zeros({B, T, D})},
           {{"vocab_group", std::string("tp")}}, vg);
  Arg bad = ids;
  bad.i[5] = int32_t(V);
  check_error("embedding_fwd id out of range", "embedding_fwd", {bad, table}, {zeros({B, T, D})}, {}, false);
}

TEST_F(CudaKernels, RmsNorm) {
  Rng rng(2);
  Arg x = rng.f32({B, T, D}, -2, 2), w = rng.f32({D}, 0.5f, 1.5f), dy = rng.f32({B, T, D});
  const Attrs eps{{"eps", 1e-5}};
  check_op("rms_norm_fwd", "rms_norm_fwd", {x, w}, {zeros({B, T, D})}, eps);
  check_op("rms_norm_bwd", "rms_norm_bwd", {dy, x, w}, {zeros({B, T, D})}, eps);
  // A wide row (more elements than threads per block).
  Arg xw = rng.f32({3, 2500}), ww = rng.f32({2500}), dyw = rng.f32({3, 2500});
  check_op("rms_norm_fwd D=2500", "rms_norm_fwd", {xw, ww}, {zeros({3, 2500})}, eps);
  check_op("rms_norm_bwd D=2500", "rms_norm_bwd", {dyw, xw, ww}, {zeros({3, 2500})}, eps);
}

TEST_F(CudaKernels, Linear) {
  Rng rng(3);
  const int64_t N = 96;
  Arg x = rng.f32({B, T, D}), W = rng.f32({N, D}, -0.2f, 0.2f), bias = rng.f32({N});
  check_op("linear_fwd bias", "linear_fwd", {x, W, bias}, {zeros({B, T, N})}, {});
  check_op("linear_fwd no bias", "linear_fwd", {x, W}, {zeros({B, T, N})}, {});
  check_op("linear_fwd absent bias, flat y", "linear_fwd", {x, W, absent()}, {zeros({B * T, N})}, {});
  // Odd sizes (no tile or alignment luck).
  Arg xo = rng.f32({7, 33}), Wo = rng.f32({19, 33}), bo = rng.f32({19});
  check_op("linear_fwd 7x33 -> 19", "linear_fwd", {xo, Wo, bo}, {zeros({7, 19})}, {});

  Arg dy = rng.f32({B, T, N}), dx0 = rng.f32({B, T, D});
  check_op("linear_bwd_input", "linear_bwd_input", {dy, W}, {dx0}, {});
  check_op("linear_bwd_input accumulate", "linear_bwd_input", {dy, W}, {dx0}, {{"accumulate", int64_t(1)}});

  check_error("linear_fwd bad W", "linear_fwd", {x, rng.f32({N, D + 1})}, {zeros({B, T, N})}, {});
  check_error("linear_fwd bad y rows", "linear_fwd", {x, W}, {zeros({B, T + 1, N})}, {});
  check_error("linear_fwd accumulate", "linear_fwd", {x, W}, {zeros({B, T, N})}, {{"accumulate", int64_t(1)}});
}

TEST_F(CudaKernels, LoraLinear) {
  Rng rng(4);
  const int64_t N = 96;
  Arg x = rng.f32({B, T, D}), W = rng.f32({N, D}, -0.2f, 0.2f), A = rng.f32({R, D}, -0.3f, 0.3f),
      Bm = rng.f32({N, R}, -0.3f, 0.3f), bias = rng.f32({N});
  const Attrs s2{{"scaling", 2.0}};
  check_op("lora_linear_fwd bias", "lora_linear_fwd", {x, W, A, Bm, bias}, {zeros({B, T, N})}, s2);
  check_op("lora_linear_fwd no bias", "lora_linear_fwd", {x, W, A, Bm}, {zeros({B, T, N})}, s2);

  Arg dy = rng.f32({B, T, N}), dA0 = rng.f32({R, D}), dB0 = rng.f32({N, R});
  check_op("lora_linear_bwd", "lora_linear_bwd", {dy, x, W, A, Bm},
           {rng.f32({B, T, D}), dA0, dB0}, s2);
  check_op("lora_linear_bwd accumulate", "lora_linear_bwd", {dy, x, W, A, Bm},
           {rng.f32({B, T, D}), dA0, dB0}, {{"scaling", 2.0}, {"accumulate", int64_t(1)}});
  // Odd sizes, r = 1.
  Arg xo = rng.f32({5, 37}), Wo = rng.f32({23, 37}), Ao = rng.f32({1, 37}), Bo = rng.f32({23, 1});
  check_op("lora_linear_fwd odd", "lora_linear_fwd", {xo, Wo, Ao, Bo}, {zeros({5, 23})}, {{"scaling", 0.5}});
  check_op("lora_linear_bwd odd", "lora_linear_bwd", {rng.f32({5, 23}), xo, Wo, Ao, Bo},
           {zeros({5, 37}), zeros({1, 37}), zeros({23, 1})}, {{"scaling", 0.5}});

  check_error("lora_linear_fwd missing scaling", "lora_linear_fwd", {x, W, A, Bm}, {zeros({B, T, N})}, {});
  check_error("lora_linear_bwd bad B", "lora_linear_bwd", {dy, x, W, A, rng.f32({N, R + 1})},
              {zeros({B, T, D}), zeros({R, D}), zeros({N, R})}, s2);
}

// LoRA dropout (runtime/lora_dropout.h): the CUDA mask must be the CPU's bit for bit (a
// different mask would show up as O(1) errors, far above the GEMM tolerance). Micro-batch 1 of
// step 3 (first sample 2), fp32 and bf16 storage, odd K (feature groups of 4 cut by the row end).
TEST_F(CudaKernels, LoraLinearDropout) {
  Rng rng(5);
  const int64_t N = 96;
  StepState st;
  st.seed = 7;
  st.step = 3;
  st.first_sample = 2;
  Opts o;
  o.step = &st;
  const Attrs at{{"scaling", 2.0}, {"dropout", 0.1}, {"module", std::string("model.layers.1.mlp.down_proj")}};
  Arg x = rng.f32({B, T, D}), W = rng.f32({N, D}, -0.2f, 0.2f), A = rng.f32({R, D}, -0.3f, 0.3f),
      Bm = rng.f32({N, R}, -0.3f, 0.3f), dy = rng.f32({B, T, N});
  check_op("lora_linear_fwd dropout", "lora_linear_fwd", {x, W, A, Bm}, {zeros({B, T, N})}, at, o);
  check_op("lora_linear_bwd dropout", "lora_linear_bwd", {dy, x, W, A, Bm},
           {zeros({B, T, D}), rng.f32({R, D}), rng.f32({N, R})}, at, o);
  Attrs acc = at;
  acc["accumulate"] = int64_t(1);
  check_op("lora_linear_bwd dropout accumulate", "lora_linear_bwd", {dy, x, W, A, Bm},
           {zeros({B, T, D}), rng.f32({R, D}), rng.f32({N, R})}, acc, o);
  check_op("lora_linear_fwd dropout bf16", "lora_linear_fwd", {bf(x), bf(W), A, Bm}, {bf(zeros({B, T, N}))}, at, o);
  check_op("lora_linear_bwd dropout bf16", "lora_linear_bwd", {bf(dy), bf(x), bf(W), A, Bm},
           {bf(zeros({B, T, D})), zeros({R, D}), zeros({N, R})}, at, o);
  Arg xo = rng.f32({3, 5, 37}), Wo = rng.f32({23, 37}), Ao = rng.f32({2, 37}), Bo = rng.f32({23, 2});
  check_op("lora_linear_bwd dropout odd", "lora_linear_bwd", {rng.f32({3, 5, 23}), xo, Wo, Ao, Bo},
           {zeros({3, 5, 37}), zeros({2, 37}), zeros({23, 2})}, at, o);
  // Both backends refuse dropout without a step state, in the same words.
  check_error("lora_linear_fwd dropout without step", "lora_linear_fwd", {x, W, A, Bm}, {zeros({B, T, N})}, at);
}

Attrs rope_attrs(bool llama3) {
  Attrs a{{"theta", 10000.0}};
  if (llama3) {
    a["rope_type"] = std::string("llama3");
    a["factor"] = 8.0;
    a["low_freq_factor"] = 1.0;
    a["high_freq_factor"] = 4.0;
    a["original_max_position_embeddings"] = int64_t(1024);
  }
  return a;
}

TEST_F(CudaKernels, Rope) {
  Rng rng(5);
  for (bool llama3 : {false, true}) {
    const std::string tag = llama3 ? " llama3" : " default";
    Arg x = rng.f32({B, Hq, T, Dh}), dy = rng.f32({B, Hq, T, Dh});
    check_op("rope_fwd" + tag, "rope_fwd", {x}, {zeros({B, Hq, T, Dh})}, rope_attrs(llama3));
    check_op("rope_bwd" + tag, "rope_bwd", {dy}, {zeros({B, Hq, T, Dh})}, rope_attrs(llama3));
    // Long positions (large angles): argument reduction must agree.
    Arg xl = rng.f32({1, 2, 300, 64});
    check_op("rope_fwd T=300 Dh=64" + tag, "rope_fwd", {xl}, {zeros({1, 2, 300, 64})}, rope_attrs(llama3));
  }
}

struct AttnCase {
  const char *name;
  int64_t b, hq, hkv, t, s, dh;
  bool causal;
};

TEST_F(CudaKernels, Attention) {
  const AttnCase cases[] = {
      {"causal GQA B2 H4/2 T16 Dh16", B, Hq, Hkv, T, T, Dh, true},
      {"causal MHA T80 Dh64 (3 tiles)", 1, 2, 2, 80, 80, 64, true},
      {"causal GQA 8/2 T33 Dh100", 1, 8, 2, 33, 33, 100, true},
      {"non-causal T40 S72 Dh128", 2, 4, 1, 40, 72, 128, false},
      {"non-causal T1 S5 Dh256", 1, 2, 1, 1, 5, 256, false},
  };
  Rng rng(6);
  for (const AttnCase &c : cases) {
    const float scale = 1.0f / std::sqrt(float(c.dh));
    const Attrs at{{"scale", double(scale)}, {"causal", int64_t(c.causal ? 1 : 0)}};
    Arg q = rng.f32({c.b, c.hq, c.t, c.dh}, -2, 2), k = rng.f32({c.b, c.hkv, c.s, c.dh}, -2, 2),
        v = rng.f32({c.b, c.hkv, c.s, c.dh}), dO = rng.f32({c.b, c.hq, c.t, c.dh});
    check_op(std::string("attention_fwd ") + c.name, "attention_fwd", {q, k, v}, {zeros(q.shape)}, at);
    check_op(std::string("attention_bwd ") + c.name, "attention_bwd", {dO, q, k, v},
             {zeros(q.shape), zeros(k.shape), zeros(v.shape)}, at);
  }
  Arg q = rng.f32({1, 3, 4, 8}), k = rng.f32({1, 2, 4, 8});
  check_error("attention_fwd Hq % Hkv", "attention_fwd", {q, k, k}, {zeros(q.shape)},
              {{"scale", 1.0}, {"causal", int64_t(1)}});
  Arg q2 = rng.f32({1, 2, 4, 8}), k2 = rng.f32({1, 2, 6, 8});
  check_error("attention_fwd causal T != S", "attention_fwd", {q2, k2, k2}, {zeros(q2.shape)},
              {{"scale", 1.0}, {"causal", int64_t(1)}});
  check_error("attention_bwd missing scale", "attention_bwd", {q2, q2, k2, k2},
              {zeros(q2.shape), zeros(k2.shape), zeros(k2.shape)}, {{"causal", int64_t(0)}});
}

TEST_F(CudaKernels, SwigluAddAccumulateTransposeCopy) {
  Rng rng(7);
  Arg g = rng.f32({B, T, 128}, -4, 4), u = rng.f32({B, T, 128}), dy = rng.f32({B, T, 128});
  check_op("swiglu_fwd", "swiglu_fwd", {g, u}, {zeros(g.shape)}, {});
  check_op("swiglu_bwd", "swiglu_bwd", {dy, g, u}, {zeros(g.shape), zeros(g.shape)}, {});
  check_op("add", "add", {g, u}, {zeros(g.shape)}, {});
  check_op("accumulate", "accumulate", {g}, {rng.f32(g.shape)}, {});

  Opts exact;
  exact.exact = true;
  Arg x = rng.f32({B, T, Hq, Dh});
  check_op("transpose f32 (0,2,1,3)", "transpose", {x}, {zeros({B, Hq, T, Dh})},
           {{"perm", std::vector<int64_t>{0, 2, 1, 3}}}, exact);
  Arg xi = rng.ids({3, 5, 7}, 1000);
  Arg yi = rng.ids({7, 3, 5}, 1);
  check_op("transpose i32 (2,0,1)", "transpose", {xi}, {yi}, {{"perm", std::vector<int64_t>{2, 0, 1}}}, exact);
  check_op("copy f32 reshape", "copy", {x}, {zeros({B * T, D})}, {}, exact);
  check_op("copy i32", "copy", {xi}, {rng.ids({105}, 1)}, {}, exact);
  check_error("add shape mismatch", "add", {g, rng.f32({B, T, 127})}, {zeros(g.shape)}, {}, false);
}

TEST_F(CudaKernels, CrossEntropy) {
  Rng rng(8);
  Arg logits = rng.f32({B, T, V}, -5, 5);
  Arg labels = rng.ids({B, T}, int32_t(V));
  labels.i[3] = -100;
  labels.i[T + 7] = -100;
  for (int64_t shift : {0, 1}) {
    const std::string tag = " shift " + std::to_string(shift);
    Attrs at{{"shift", shift}};
    check_op("cross_entropy_fwd" + tag, "cross_entropy_fwd", {logits, labels}, {zeros({})}, at);
    Attrs bw = at;
    bw["grad_scale"] = 0.5;
    check_op("cross_entropy_bwd" + tag, "cross_entropy_bwd", {logits, labels}, {zeros(logits.shape)}, bw);
    // The executor-bound loss denominator (operand 2: label_count, shares), read on the device.
    Arg den = rng.ids({2}, 1);
    den.i[0] = 1000;
    den.i[1] = 7;
    check_op("cross_entropy_fwd denominator" + tag, "cross_entropy_fwd", {logits, labels, den}, {zeros({})}, at);
    check_op("cross_entropy_bwd denominator" + tag, "cross_entropy_bwd", {logits, labels, den}, {zeros(logits.shape)}, bw);
    // Vocabulary-parallel form on a one-rank group.
    Opts vg;
    vg.comm = true;
    Attrs atv = at, bwv = bw;
    atv["vocab_group"] = std::string("tp");
    bwv["vocab_group"] = std::string("tp");
    check_op("cross_entropy_fwd vocab_group" + tag, "cross_entropy_fwd", {logits, labels}, {zeros({})}, atv, vg);
    check_op("cross_entropy_bwd vocab_group" + tag, "cross_entropy_bwd", {logits, labels}, {zeros(logits.shape)},
             bwv, vg);
  }
  // A large vocabulary row (more than one block's worth of elements per thread).
  Arg big = rng.f32({1, 3, 5000}, -5, 5), bl = rng.ids({1, 3}, 5000);
  check_op("cross_entropy_fwd V=5000", "cross_entropy_fwd", {big, bl}, {zeros({})}, {{"shift", int64_t(0)}});
  check_op("cross_entropy_bwd V=5000", "cross_entropy_bwd", {big, bl}, {zeros(big.shape)}, {{"shift", int64_t(0)}});
  Arg bad = labels;
  bad.i[9] = int32_t(V) + 3;
  check_error("cross_entropy_fwd label out of range", "cross_entropy_fwd", {logits, bad}, {zeros({})},
              {{"shift", int64_t(0)}}, false);
}

TEST_F(CudaKernels, AdamW) {
  Rng rng(9);
  // Two LoRA-like parameters; grads large enough that clipping (max_grad_norm 0.5) is active.
  std::vector<Arg> P = {rng.f32({R, D}), rng.f32({96, R})};
  std::vector<Arg> G = {rng.f32({R, D}, -0.5f, 0.5f), rng.f32({96, R}, -0.5f, 0.5f)};
  std::vector<Arg> M = {rng.f32({R, D}, -0.01f, 0.01f), rng.f32({96, R}, -0.01f, 0.01f)};
  std::vector<Arg> Vv = {rng.f32({R, D}, 0.0f, 1e-4f), rng.f32({96, R}, 0.0f, 1e-4f)};
  std::vector<Arg> in = {P[0], P[1], G[0], G[1], M[0], M[1], Vv[0], Vv[1]};
  StepState st;
  st.step = 3;
  st.lr = 1e-3;
  Attrs at{{"n", int64_t(2)}, {"beta1", 0.9},          {"beta2", 0.999},
           {"eps", 1e-8},     {"weight_decay", 0.01}, {"max_grad_norm", 0.5},
           {"zero_grads", int64_t(1)}};
  Opts o;
  o.compare_inputs = true;
  o.step = &st;
  check_op("adamw_step clip, zero_grads", "adamw_step", in, {}, at, o);
  at["zero_grads"] = int64_t(0);
  check_op("adamw_step clip, keep grads", "adamw_step", in, {}, at, o);
  at["max_grad_norm"] = 0.0;
  check_op("adamw_step no clip", "adamw_step", in, {}, at, o);
  // norm_group on a one-rank group, with divisors.
  Attrs ng = at;
  ng["max_grad_norm"] = 0.5;
  ng["norm_group"] = std::string("dp");
  ng["norm_divisors"] = std::vector<int64_t>{1, 1};
  Opts oc = o;
  oc.comm = true;
  check_op("adamw_step norm_group", "adamw_step", in, {}, ng, oc);
  // A non-finite gradient: no update on either backend.
  std::vector<Arg> nan_in = in;
  nan_in[3].f[7] = std::numeric_limits<float>::quiet_NaN();
  check_op("adamw_step non-finite grad", "adamw_step", nan_in, {}, at, o);
}

TEST_F(CudaKernels, CollectivesOnALocalCommunicator) {
  Rng rng(10);
  Arg a = rng.f32({5, 7}), b = rng.f32({11});
  Opts o;
  o.comm = true;
  o.exact = true;
  check_op("all_reduce bucket", "all_reduce", {a, b}, {zeros(a.shape), zeros(b.shape)},
           {{"group", std::string("dp")}}, o);
  o.exact = false;
  check_op("all_reduce scaled", "all_reduce", {a}, {zeros(a.shape)}, {{"group", std::string("tp")}, {"scale", 0.25}},
           o);
}

// ------------------------------------------------------------------ GPU: bf16 storage
//
// The dtypes a --precision bf16 plan gives each operand (frozen weights and activations bf16;
// LoRA A/B, their gradients and the loss f32), then a few mixes (CUDA: run_widened / the mixed
// GEMM paths). The CPU twin is the CPU registry's kernel on the same tensors.

TEST_F(CudaKernels, EmbeddingBf16) {
  Rng rng(101);
  Arg ids = rng.ids({B, T}, int32_t(V)), table = bf(rng.f32({V, D}));
  Opts exact;
  exact.exact = true;
  check_op("embedding_fwd bf16", "embedding_fwd", {ids, table}, {bf(zeros({B, T, D}))}, {}, exact);
  check_op("embedding_fwd bf16 table, f32 y", "embedding_fwd", {ids, table}, {zeros({B, T, D})}, {}, exact);
  Opts vg = exact;
  vg.comm = true;
  check_op("embedding_fwd bf16 vocab_group", "embedding_fwd", {ids, table}, {bf(zeros({B, T, D}))},
           {{"vocab_group", std::string("tp")}}, vg);
}

TEST_F(CudaKernels, RmsNormBf16) {
  Rng rng(102);
  Arg x = bf(rng.f32({B, T, D}, -2, 2)), w = bf(rng.f32({D}, 0.5f, 1.5f)), dy = bf(rng.f32({B, T, D}));
  const Attrs eps{{"eps", 1e-5}};
  check_op("rms_norm_fwd bf16", "rms_norm_fwd", {x, w}, {bf(zeros({B, T, D}))}, eps);
  check_op("rms_norm_bwd bf16", "rms_norm_bwd", {dy, x, w}, {bf(zeros({B, T, D}))}, eps);
  Arg xw = bf(rng.f32({3, 2500})), ww = bf(rng.f32({2500})), dyw = bf(rng.f32({3, 2500}));
  check_op("rms_norm_fwd bf16 D=2500", "rms_norm_fwd", {xw, ww}, {bf(zeros({3, 2500}))}, eps);
  check_op("rms_norm_bwd bf16 D=2500", "rms_norm_bwd", {dyw, xw, ww}, {bf(zeros({3, 2500}))}, eps);
  // Mixed (an f32 weight): the fallback.
  Arg wf = rng.f32({D}, 0.5f, 1.5f);
  check_op("rms_norm_fwd bf16 x, f32 w", "rms_norm_fwd", {x, wf}, {bf(zeros({B, T, D}))}, eps);
  check_op("rms_norm_bwd bf16, f32 w, f32 dx", "rms_norm_bwd", {dy, x, wf}, {zeros({B, T, D})}, eps);
}

TEST_F(CudaKernels, LinearBf16) {
  Rng rng(103);
  const int64_t N = 96;
  Arg x = bf(rng.f32({B, T, D})), W = bf(rng.f32({N, D}, -0.2f, 0.2f)), bias = bf(rng.f32({N}));
  check_op("linear_fwd bf16 bias", "linear_fwd", {x, W, bias}, {bf(zeros({B, T, N}))}, {});
  check_op("linear_fwd bf16 no bias", "linear_fwd", {x, W}, {bf(zeros({B, T, N}))}, {});
  Arg xo = bf(rng.f32({7, 33})), Wo = bf(rng.f32({19, 33})), bo = bf(rng.f32({19}));
  check_op("linear_fwd bf16 7x33 -> 19", "linear_fwd", {xo, Wo, bo}, {bf(zeros({7, 19}))}, {});
  Arg dy = bf(rng.f32({B, T, N})), dx0 = bf(rng.f32({B, T, D}));
  check_op("linear_bwd_input bf16", "linear_bwd_input", {dy, W}, {dx0}, {});
  check_op("linear_bwd_input bf16 accumulate", "linear_bwd_input", {dy, W}, {dx0}, {{"accumulate", int64_t(1)}});
  // Mixes: an f32 bias into a bf16 y (summed in f32, rounded once); an f32 x with a bf16 W;
  // a bf16 GEMM accumulated into an f32 dx.
  check_op("linear_fwd bf16, f32 bias", "linear_fwd", {x, W, rng.f32({N})}, {bf(zeros({B, T, N}))}, {});
  check_op("linear_fwd f32 x, bf16 W, f32 y", "linear_fwd", {rng.f32({B, T, D}), W}, {zeros({B, T, N})}, {});
  check_op("linear_bwd_input bf16 -> f32 dx accumulate", "linear_bwd_input", {dy, W}, {rng.f32({B, T, D})},
           {{"accumulate", int64_t(1)}});
  check_op("linear_bwd_input f32 dy, bf16 W -> bf16 dx", "linear_bwd_input", {rng.f32({B, T, N}), W}, {dx0},
           {{"accumulate", int64_t(1)}});
}

TEST_F(CudaKernels, LoraLinearBf16) {
  Rng rng(104);
  const int64_t N = 96;
  Arg x = bf(rng.f32({B, T, D})), W = bf(rng.f32({N, D}, -0.2f, 0.2f)), A = rng.f32({R, D}, -0.3f, 0.3f),
      Bm = rng.f32({N, R}, -0.3f, 0.3f), bias = bf(rng.f32({N}));
  const Attrs s2{{"scaling", 2.0}};
  check_op("lora_linear_fwd bf16 bias", "lora_linear_fwd", {x, W, A, Bm, bias}, {bf(zeros({B, T, N}))}, s2);
  check_op("lora_linear_fwd bf16 no bias", "lora_linear_fwd", {x, W, A, Bm}, {bf(zeros({B, T, N}))}, s2);
  Arg dy = bf(rng.f32({B, T, N})), dA0 = rng.f32({R, D}), dB0 = rng.f32({N, R});
  check_op("lora_linear_bwd bf16", "lora_linear_bwd", {dy, x, W, A, Bm}, {bf(rng.f32({B, T, D})), dA0, dB0}, s2);
  check_op("lora_linear_bwd bf16 accumulate", "lora_linear_bwd", {dy, x, W, A, Bm},
           {bf(rng.f32({B, T, D})), dA0, dB0}, {{"scaling", 2.0}, {"accumulate", int64_t(1)}});
  Arg xo = bf(rng.f32({5, 37})), Wo = bf(rng.f32({23, 37})), Ao = rng.f32({1, 37}), Bo = rng.f32({23, 1});
  check_op("lora_linear_fwd bf16 odd", "lora_linear_fwd", {xo, Wo, Ao, Bo}, {bf(zeros({5, 23}))}, {{"scaling", 0.5}});
  check_op("lora_linear_bwd bf16 odd", "lora_linear_bwd", {bf(rng.f32({5, 23})), xo, Wo, Ao, Bo},
           {bf(zeros({5, 37})), zeros({1, 37}), zeros({23, 1})}, {{"scaling", 0.5}});
  // Mixes: bf16 A/B (every GEMM native), an f32 y.
  check_op("lora_linear_fwd bf16 A/B", "lora_linear_fwd", {x, W, bf(A), bf(Bm), bias}, {bf(zeros({B, T, N}))}, s2);
  check_op("lora_linear_bwd bf16 A/B, bf16 dA/dB", "lora_linear_bwd", {dy, x, W, bf(A), bf(Bm)},
           {bf(zeros({B, T, D})), bf(dA0), bf(dB0)}, {{"scaling", 2.0}, {"accumulate", int64_t(1)}});
  check_op("lora_linear_fwd bf16 -> f32 y", "lora_linear_fwd", {x, W, A, Bm, bias}, {zeros({B, T, N})}, s2);
}

TEST_F(CudaKernels, RopeBf16) {
  Rng rng(105);
  for (bool llama3 : {false, true}) {
    const std::string tag = llama3 ? " llama3" : " default";
    Arg x = bf(rng.f32({B, Hq, T, Dh})), dy = bf(rng.f32({B, Hq, T, Dh}));
    check_op("rope_fwd bf16" + tag, "rope_fwd", {x}, {bf(zeros({B, Hq, T, Dh}))}, rope_attrs(llama3));
    check_op("rope_bwd bf16" + tag, "rope_bwd", {dy}, {bf(zeros({B, Hq, T, Dh}))}, rope_attrs(llama3));
    Arg xl = bf(rng.f32({1, 2, 300, 64}));
    check_op("rope_fwd bf16 T=300 Dh=64" + tag, "rope_fwd", {xl}, {bf(zeros({1, 2, 300, 64}))}, rope_attrs(llama3));
  }
  check_op("rope_fwd bf16 -> f32 y", "rope_fwd", {bf(rng.f32({B, Hq, T, Dh}))}, {zeros({B, Hq, T, Dh})},
           rope_attrs(false));
}

TEST_F(CudaKernels, AttentionBf16) {
  const AttnCase cases[] = {
      {"causal GQA B2 H4/2 T16 Dh16", B, Hq, Hkv, T, T, Dh, true},
      {"causal MHA T80 Dh64 (3 tiles)", 1, 2, 2, 80, 80, 64, true},
      {"causal GQA 8/2 T33 Dh100", 1, 8, 2, 33, 33, 100, true},
      {"non-causal T40 S72 Dh128", 2, 4, 1, 40, 72, 128, false},
      {"non-causal T1 S5 Dh256", 1, 2, 1, 1, 5, 256, false},
  };
  Rng rng(106);
  for (const AttnCase &c : cases) {
    const float scale = 1.0f / std::sqrt(float(c.dh));
    const Attrs at{{"scale", double(scale)}, {"causal", int64_t(c.causal ? 1 : 0)}};
    Arg q = bf(rng.f32({c.b, c.hq, c.t, c.dh}, -2, 2)), k = bf(rng.f32({c.b, c.hkv, c.s, c.dh}, -2, 2)),
        v = bf(rng.f32({c.b, c.hkv, c.s, c.dh})), dO = bf(rng.f32({c.b, c.hq, c.t, c.dh}));
    check_op(std::string("attention_fwd bf16 ") + c.name, "attention_fwd", {q, k, v}, {bf(zeros(q.shape))}, at);
    check_op(std::string("attention_bwd bf16 ") + c.name, "attention_bwd", {dO, q, k, v},
             {bf(zeros(q.shape)), bf(zeros(k.shape)), bf(zeros(v.shape))}, at);
  }
  // A mix (f32 o / dq): the fallback.
  Arg q = bf(rng.f32({1, 2, 8, 16})), k = bf(rng.f32({1, 2, 8, 16})), v = bf(rng.f32({1, 2, 8, 16}));
  const Attrs at{{"scale", 0.25}, {"causal", int64_t(1)}};
  check_op("attention_fwd bf16 -> f32 o", "attention_fwd", {q, k, v}, {zeros(q.shape)}, at);
  check_op("attention_bwd bf16, f32 dq", "attention_bwd", {bf(rng.f32(q.shape)), q, k, v},
           {zeros(q.shape), bf(zeros(k.shape)), bf(zeros(v.shape))}, at);
}

TEST_F(CudaKernels, SwigluAddAccumulateTransposeCopyBf16) {
  Rng rng(107);
  Arg g = bf(rng.f32({B, T, 128}, -4, 4)), u = bf(rng.f32({B, T, 128})), dy = bf(rng.f32({B, T, 128}));
  check_op("swiglu_fwd bf16", "swiglu_fwd", {g, u}, {bf(zeros(g.shape))}, {});
  check_op("swiglu_bwd bf16", "swiglu_bwd", {dy, g, u}, {bf(zeros(g.shape)), bf(zeros(g.shape))}, {});
  check_op("swiglu_fwd bf16 gate, f32 up (fallback)", "swiglu_fwd", {g, rng.f32(g.shape)}, {bf(zeros(g.shape))}, {});
  check_op("add bf16", "add", {g, u}, {bf(zeros(g.shape))}, {});
  check_op("add bf16 + f32 -> bf16", "add", {g, rng.f32(g.shape)}, {bf(zeros(g.shape))}, {});
  check_op("add bf16 + bf16 -> f32", "add", {g, u}, {zeros(g.shape)}, {});
  check_op("accumulate bf16", "accumulate", {g}, {bf(rng.f32(g.shape))}, {});
  check_op("accumulate bf16 into f32", "accumulate", {g}, {rng.f32(g.shape)}, {});
  check_op("accumulate f32 into bf16", "accumulate", {rng.f32(g.shape)}, {bf(rng.f32(g.shape))}, {});

  Opts exact;
  exact.exact = true;
  Arg x = bf(rng.f32({B, T, Hq, Dh}));
  check_op("transpose bf16 (0,2,1,3)", "transpose", {x}, {bf(zeros({B, Hq, T, Dh}))},
           {{"perm", std::vector<int64_t>{0, 2, 1, 3}}}, exact);
  Arg x3 = bf(rng.f32({3, 5, 7}));
  check_op("transpose bf16 (2,0,1)", "transpose", {x3}, {bf(zeros({7, 3, 5}))},
           {{"perm", std::vector<int64_t>{2, 0, 1}}}, exact);
  check_op("transpose bf16 -> f32 (2,0,1)", "transpose", {x3}, {zeros({7, 3, 5})},
           {{"perm", std::vector<int64_t>{2, 0, 1}}}, exact);
  check_op("copy bf16 reshape", "copy", {x}, {bf(zeros({B * T, D}))}, {}, exact);
  check_op("copy bf16 -> f32", "copy", {x}, {zeros({B * T, D})}, {}, exact);
  check_op("copy f32 -> bf16", "copy", {rng.f32({B * T, D})}, {bf(zeros({B, T, D}))}, {}, exact);
}

TEST_F(CudaKernels, CrossEntropyBf16) {
  Rng rng(108);
  Arg logits = bf(rng.f32({B, T, V}, -5, 5));
  Arg labels = rng.ids({B, T}, int32_t(V));
  labels.i[3] = -100;
  labels.i[T + 7] = -100;
  for (int64_t shift : {0, 1}) {
    const std::string tag = " shift " + std::to_string(shift);
    Attrs at{{"shift", shift}};
    check_op("cross_entropy_fwd bf16" + tag, "cross_entropy_fwd", {logits, labels}, {zeros({})}, at);
    Attrs bw = at;
    bw["grad_scale"] = 0.5;
    check_op("cross_entropy_bwd bf16" + tag, "cross_entropy_bwd", {logits, labels}, {bf(zeros(logits.shape))}, bw);
    check_op("cross_entropy_bwd bf16 -> f32" + tag, "cross_entropy_bwd", {logits, labels}, {zeros(logits.shape)},
             bw);
    Opts vg;
    vg.comm = true;
    Attrs atv = at, bwv = bw;
    atv["vocab_group"] = std::string("tp");
    bwv["vocab_group"] = std::string("tp");
    check_op("cross_entropy_fwd bf16 vocab_group" + tag, "cross_entropy_fwd", {logits, labels}, {zeros({})}, atv,
             vg);
    check_op("cross_entropy_bwd bf16 vocab_group" + tag, "cross_entropy_bwd", {logits, labels},
             {bf(zeros(logits.shape))}, bwv, vg);
  }
  Arg big = bf(rng.f32({1, 3, 5000}, -5, 5)), bl = rng.ids({1, 3}, 5000);
  check_op("cross_entropy_fwd bf16 V=5000", "cross_entropy_fwd", {big, bl}, {zeros({})}, {{"shift", int64_t(0)}});
  check_op("cross_entropy_bwd bf16 V=5000", "cross_entropy_bwd", {big, bl}, {bf(zeros(big.shape))},
           {{"shift", int64_t(0)}});
  check_op("cross_entropy_fwd bf16 loss", "cross_entropy_fwd", {logits, labels}, {bf(zeros({}))},
           {{"shift", int64_t(1)}});
}

// adamw_step and fill_zero work on the f32 master state only: bf16 is rejected, in the same words.
TEST_F(CudaKernels, AdamWRejectsBf16) {
  Rng rng(109);
  Arg p = bf(rng.f32({R, D})), g = rng.f32({R, D}), m = zeros({R, D}), v = zeros({R, D});
  StepState st;
  st.step = 1;
  st.lr = 1e-3;
  const Attrs at{{"n", int64_t(1)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}};
  SCOPED_TRACE("adamw_step bf16 p");
  Opts o;
  o.step = &st;
  Result ref = run_on(false, "adamw_step", {p, g, m, v}, {}, at, o);
  Result got = run_on(true, "adamw_step", {p, g, m, v}, {}, at, o);
  ASSERT_FALSE(ref.status.is_ok());
  ASSERT_FALSE(got.status.is_ok());
  std::printf("[CUDA] %-44s error: %s\n", "adamw_step bf16 p", got.status.message().c_str());
  EXPECT_EQ(got.status.message(), ref.status.message());
}

TEST_F(CudaKernels, CollectivesBf16OnALocalCommunicator) {
  Rng rng(110);
  Arg a = bf(rng.f32({5, 7})), b = bf(rng.f32({11}));
  Opts o;
  o.comm = true;
  o.exact = true;
  check_op("all_reduce bf16 bucket", "all_reduce", {a, b}, {bf(zeros(a.shape)), bf(zeros(b.shape))},
           {{"group", std::string("dp")}}, o);
  check_op("all_reduce bf16 scaled", "all_reduce", {a}, {bf(zeros(a.shape))},
           {{"group", std::string("tp")}, {"scale", 0.25}}, o);  // both: round(0.25 * x), exact
  check_error("all_reduce bf16 and f32 in one bucket", "all_reduce", {a, rng.f32({11})},
              {bf(zeros(a.shape)), zeros({11})}, {{"group", std::string("dp")}});
}

// Sequence packing (lora-compile --packing): rope with position_ids, attention with segment_ids.
// Packed rows of several examples (segments restart positions at 0), a padding segment, rows
// longer than a tile, GQA, causal and not, f32 and bf16; bad positions fail in the same words.
Arg packed_ids(const std::vector<std::vector<int64_t>> &rows, int64_t T, bool positions) {
  Arg a;
  a.shape = {int64_t(rows.size()), T};
  a.is_i32 = true;
  for (const auto &lens : rows) {
    int32_t seg = 0;
    int64_t used = 0;
    for (int64_t len : lens) {
      for (int64_t t = 0; t < len; ++t) a.i.push_back(positions ? int32_t(t) : seg);
      used += len;
      ++seg;
    }
    EXPECT_EQ(used, T);
  }
  return a;
}

TEST_F(CudaKernels, PackedRopeAndAttention) {
  Rng rng(120);
  for (bool bf16 : {false, true}) {
    auto st = [&](Arg a) { return bf16 ? bf(std::move(a)) : a; };
    const std::string tag = bf16 ? " bf16" : "";
    // Rope: two rows of 3 and 2 examples.
    const std::vector<std::vector<int64_t>> runs = {{5, 7, 4}, {9, 7}};
    Arg pos = packed_ids(runs, 16, true);
    check_op("rope_fwd packed" + tag, "rope_fwd", {st(rng.f32({2, 4, 16, 16})), pos}, {st(zeros({2, 4, 16, 16}))},
             rope_attrs(false));
    check_op("rope_bwd packed llama3" + tag, "rope_bwd", {st(rng.f32({2, 4, 16, 16})), pos},
             {st(zeros({2, 4, 16, 16}))}, rope_attrs(true));
    // Attention: segment boundaries inside and across the 32-row tiles.
    struct Case {
      const char *name;
      int64_t hq, hkv, dh;
      std::vector<std::vector<int64_t>> runs;
      bool causal;
    };
    const Case cases[] = {
        {"causal GQA 4/2 T16", 4, 2, 16, runs, true},
        {"causal MHA T80 Dh64", 2, 2, 64, {{20, 45, 1, 14}}, true},
        {"non-causal T40 Dh32", 4, 1, 32, {{17, 23}, {40}}, false},
    };
    for (const Case &c : cases) {
      int64_t T = 0;
      for (int64_t len : c.runs[0]) T += len;
      const int64_t Bc = int64_t(c.runs.size());
      Arg seg = packed_ids(c.runs, T, false);
      for (int32_t &v : seg.i) v = 3 * v + 1;  // any int32 ids
      const Attrs at{{"scale", 1.0 / std::sqrt(double(c.dh))}, {"causal", int64_t(c.causal)}};
      Arg q = st(rng.f32({Bc, c.hq, T, c.dh}, -2, 2)), k = st(rng.f32({Bc, c.hkv, T, c.dh}, -2, 2)),
          v = st(rng.f32({Bc, c.hkv, T, c.dh})), dO = st(rng.f32({Bc, c.hq, T, c.dh}));
      check_op(std::string("attention_fwd packed ") + c.name + tag, "attention_fwd", {q, k, v, seg},
               {st(zeros(q.shape))}, at);
      check_op(std::string("attention_bwd packed ") + c.name + tag, "attention_bwd", {dO, q, k, v, seg},
               {st(zeros(q.shape)), st(zeros(k.shape)), st(zeros(v.shape))}, at);
    }
  }
  Arg x = rng.f32({1, 2, 4, 8}), bad = packed_ids({{4}}, 4, true);
  bad.i[2] = 4;
  check_error("rope_fwd position outside [0, T)", "rope_fwd", {x, bad}, {zeros(x.shape)}, rope_attrs(false));
  Arg q = rng.f32({1, 2, 4, 8}), seg = packed_ids({{3}}, 3, false);
  check_error("attention_fwd segment_ids shape", "attention_fwd", {q, q, q, seg}, {zeros(q.shape)},
              {{"scale", 1.0}, {"causal", int64_t(1)}});
}

} // namespace
