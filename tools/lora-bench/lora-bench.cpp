//===- lora-bench.cpp - calibrates a device profile on this machine ---------===//
//
//   [mpirun -np 2] lora-bench --calibrate [--step-plan plan.lp] [-o models/devices/cpu-local.json]
//
// Times the CPU backend's own kernels (runtime/cpu) on shapes of each GEMM class, causal
// attention, a streaming kernel (add) for the memory bandwidth and a tiny one for the fixed
// per-instruction overhead. With --step-plan it also runs a short training step of that
// single-rank plan through the executor with its profiler and stores how much slower the kernels
// are inside a step than hot in a loop, per op class, and the executor's dispatch time per
// instruction (in_step.h; profile version 2). With 2 MPI ranks it measures all-reduce and
// send/recv through the runtime's own communicator: alpha = a small message with both ranks
// ready, wake_s = the extra latency when the receiver has been polling for a while (its poll has
// backed off into sleeps, as in a real step), bus bandwidth from a large message. Writes the profile format of passes/planner/device_profile.h, each number's source saying
// how it was measured. One rank per core: oversubscribed ranks measure the scheduler, not the link.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <mpi.h>

#include "passes/planner/device_profile.h"
#include "runtime/comm/comm.h"
#include "runtime/cpu/blas_core.h"
#include "runtime/cpu/kernels.h"
#include "runtime/kernel.h"
#include "tools/common/cli.h"
#include "tools/lora-bench/in_step.h"

using namespace parallora;
using rt::KernelCall;
using rt::Tensor;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Buf {
  std::vector<float> v;
  std::vector<uint16_t> h;  // bf16 storage
  std::vector<int64_t> shape;
  plan::ElemType dtype;
  explicit Buf(std::vector<int64_t> s, plan::ElemType t = plan::ElemType::F32) : shape(std::move(s)), dtype(t) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (t == plan::ElemType::BF16) h.assign(static_cast<size_t>(n), 0x3c23);  // ~0.01
    else v.assign(static_cast<size_t>(n), 0.01f);
  }
  Tensor t() { return Tensor{dtype == plan::ElemType::BF16 ? static_cast<void *>(h.data()) : v.data(), dtype, shape}; }
};

const rt::KernelRegistry &registry() {
  static const rt::KernelRegistry reg = [] {
    rt::KernelRegistry r;
    rt::cpu::register_kernels(r);
    return r;
  }();
  return reg;
}

/// Seconds of one call of `op`: the 10th percentile of at least `min_s` of repeats after a warm-up.
double time_kernel(const std::string &op, std::vector<Buf *> in, std::vector<Buf *> out,
                   std::map<std::string, plan::AttrValue> attrs = {}, double min_s = 0.3) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  KernelCall call;
  call.instr = &instr;
  rt::StepState state;  // adamw_step reads the step and the learning rate
  state.step = 1;
  state.lr = 1e-4;
  call.step = &state;
  for (Buf *b : in) call.in.push_back(b->t());
  for (Buf *b : out) call.out.push_back(b->t());
  const rt::KernelFn *fn = registry().find(op);
  if (!fn) return 0;
  Status s = (*fn)(call);
  if (!s) {
    std::cerr << "lora-bench: " << op << ": " << s.message() << "\n";
    return 0;
  }
  std::vector<double> times;
  double t_end = now() + min_s;
  while (now() < t_end || times.size() < 5) {
    double t0 = now();
    (void)(*fn)(call);
    times.push_back(now() - t0);
  }
  // The 10th percentile, not the median: on a shared machine the slow tail is other processes, and
  // the profile describes this machine without them.
  std::sort(times.begin(), times.end());
  return times[times.size() / 10];
}

/// Waits for the other ranks without spinning (an MPI_Barrier polls a core that rank 0's kernel
/// timings need on a 2-core machine).
void idle_barrier() {
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  for (int done = 0; !done;) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void spin_for(double s) {
  const double end = now() + s;
  while (now() < end) {
  }
}

/// What a step pays for a small message through the runtime's own communicator (runtime/comm:
/// non-blocking MPI polled with a backoff that yields, then sleeps): the waiting side has been
/// polling for `wait_s` (a stage's or a rank's compute) when the message comes, so its wake-up
/// is part of the cost. Per repeat, with the ranks taking turns to be late by wait_s:
///   all-reduce of `bytes`: the last rank's completion - the late rank's entry;
///   send/recv ping-pong of `bytes`: the receiver's completion - the sender's start (one way).
/// steady_clock is CLOCK_MONOTONIC, one clock for every process of this host. Median of the repeats.
double time_comm(rt::Communicator &comm, int rank, int world, int64_t bytes, bool allreduce, double wait_s, int reps) {
  std::vector<float> buf(static_cast<size_t>(std::max<int64_t>(1, bytes / 4)), 1.0f);
  std::vector<double> cost;
  for (int i = 0; i < reps; ++i) {
    idle_barrier();
    MPI_Barrier(MPI_COMM_WORLD);  // both ranks polling: they leave it within microseconds
    const int late = i % std::min(world, 2);
    double t_in = 0, t_out = 0;
    if (allreduce) {
      if (rank == late) spin_for(wait_s);
      t_in = now();
      (void)comm.all_reduce("dp", buf.data(), static_cast<int64_t>(buf.size()), rt::ReduceOp::Sum);
      t_out = now();
    } else if (rank < 2) {
      const int from = late, to = 1 - late;
      if (rank == from) {
        spin_for(wait_s);
        t_in = now();
        (void)comm.send(to, 11, buf.data(), bytes);
        (void)comm.flush();
      } else {
        (void)comm.recv(from, 11, buf.data(), bytes);
        t_out = now();
      }
    }
    // [max entry of the late side, max completion]: the exposed cost of this repeat.
    double ts[2] = {t_in, t_out}, mx[2];
    MPI_Allreduce(ts, mx, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    cost.push_back(mx[1] - mx[0]);
  }
  std::sort(cost.begin(), cost.end());
  return cost[cost.size() / 2];
}

/// The layer shapes the per-kernel rates are measured at.
struct LayerShape {
  int64_t batch = 2, seq = 256, hidden = 256, inter = 512, vocab = 1024, heads = 4, head_dim = 64;
  std::string model;
  std::string describe() const {
    return (model.empty() ? std::string("a mid-size layer") : model) + ": batch " + std::to_string(batch) + " x seq " +
           std::to_string(seq) + ", hidden " + std::to_string(hidden) + ", intermediate " + std::to_string(inter) + ", vocab " +
           std::to_string(vocab) + ", " + std::to_string(heads) + " heads x " + std::to_string(head_dim);
  }
};

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"lora-bench: measure this machine for lora-compile's cost model (docs/planner.md).\n"
               "Run under `mpirun -np 2` to measure the MPI links too (one rank per core)."};
  bool calibrate = false;
  std::string output = "-", name = "cpu-local";
  int threads = 0;
  app.add_flag("--calibrate", calibrate, "measure GEMM rates by shape class, attention, memory bandwidth, instruction "
                                         "overhead and (2 ranks) MPI all-reduce / send alpha-beta; write a device profile");
  app.add_option("-o,--output", output, "profile file to write ('-' = stdout), e.g. models/devices/cpu-local.json");
  app.add_option("--name", name, "the profile's name (what --device-profile calls it)");
  std::string hf_config;
  LayerShape shape;
  app.add_option("--hf-config", hf_config, "measure the per-kernel rates at this model's layer shapes (HF config.json) "
                                           "instead of a mid-size layer")->check(CLI::ExistingFile);
  app.add_option("--batch", shape.batch, "with --hf-config: sequences per rank and micro-batch")->check(cli::at_least(1));
  app.add_option("--seq-len", shape.seq, "with --hf-config: sequence length")->check(cli::at_least(2));
  std::string step_plan, step_plan_bf16;
  int step_steps = 20;
  double link_wait_ms = 2;
  app.add_option("--step-plan", step_plan, "also run this single-rank plan (lora-compile of the calibration model) through "
                                           "the executor with its profiler and store the in-step factors per op class and "
                                           "the dispatch time per instruction (profile version 2)")->check(CLI::ExistingFile);
  app.add_option("--step-plan-bf16", step_plan_bf16,
                 "with --step-plan: the same model compiled with --precision bf16; its in-step factors and dispatch "
                 "apply to bf16 plans (in_step.bf16)")
      ->check(CLI::ExistingFile);
  app.add_option("--step-steps", step_steps, "with --step-plan: profiled training steps (after 2 warm-up steps)")
      ->check(cli::at_least(1));
  app.add_option("--link-wait-ms", link_wait_ms, "2 ranks: how long the waiting rank polls before a small message "
                                                 "arrives when alpha is measured (about one stage's compute)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "OpenMP threads of the kernels (default: OMP_NUM_THREADS or all cores)")->check(cli::at_least(1));
  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
  if (!hf_config.empty()) {
    std::ifstream is(hf_config);
    nlohmann::json j = nlohmann::json::parse(is, nullptr, false);
    auto num = [&](const char *k, int64_t dflt) {
      return j.is_object() && j.contains(k) && j[k].is_number_integer() ? j[k].get<int64_t>() : dflt;
    };
    if (!j.is_object() || num("hidden_size", 0) <= 0 || num("num_attention_heads", 0) <= 0) {
      std::cerr << "error: --hf-config " << hf_config << ": needs hidden_size and num_attention_heads\n";
      return cli::kExitUsageError;
    }
    shape.hidden = num("hidden_size", 0), shape.heads = num("num_attention_heads", 0);
    shape.inter = num("intermediate_size", 4 * shape.hidden), shape.vocab = num("vocab_size", 32000);
    shape.head_dim = num("head_dim", shape.hidden / shape.heads);
    shape.model = hf_config;
  } else if (app.get_option("--batch")->count() || app.get_option("--seq-len")->count()) {
    std::cerr << "error: --batch and --seq-len go with --hf-config\n";
    return cli::kExitUsageError;
  }
  if (!calibrate) {
    std::cerr << "error: nothing to do: give --calibrate (see lora-bench --help)\n";
    return cli::kExitUsageError;
  }
  if (!step_plan_bf16.empty() && step_plan.empty()) {
    std::cerr << "error: --step-plan-bf16 goes with --step-plan\n";
    return cli::kExitUsageError;
  }
  for (const std::string &sp : {step_plan, step_plan_bf16})  // before minutes of kernel timing
    if (!sp.empty())
      if (Status s = bench::check_step_plan(sp); !s) {
        std::cerr << "error: " << s.message() << "\n";
        return cli::kExitUsageError;
      }
  MPI_Init(&argc, &argv);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // As lora-run --threads: the flag, else OMP_NUM_THREADS, else every core; OpenBLAS too.
  if (threads <= 0)
    if (const char *env = std::getenv("OMP_NUM_THREADS")) threads = std::max(0, std::atoi(env));
  rt::cpu::set_num_threads(threads);

  planner::DeviceProfile p;
  std::map<std::string, std::string> src;
  p.name = name;
  p.backend = "cpu";
  p.devices_per_node = std::max(1, world);
  p.memory_gib = 0;
  char host[256] = "?";
  gethostname(host, sizeof host);
  p.description = std::string("measured by lora-bench --calibrate on ") + host + " (" +
                  std::to_string(std::thread::hardware_concurrency()) + " cores, " + std::to_string(world) + " MPI rank(s))";
  {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    p.memory_gib = pages > 0 && page > 0 ? static_cast<double>(pages) * page / (1024.0 * 1024 * 1024) : 1;
  }
  if (rank == 0) {
    // Overhead: an add of 16 floats is all fixed cost (argument checks, OpenMP region, timer).
    Buf a({16}), b({16}), y({16});
    p.instruction_overhead_s = time_kernel("add", {&a, &b}, {&y});
    src["instruction_overhead_s"] = "lora-bench: the CPU add kernel on 16 floats (10th percentile of the repeats)";
    // Memory bandwidth: add over 3 x 32 MiB (two read, one written).
    Buf A({8 << 20}), B({8 << 20}), Y({8 << 20});
    double t = time_kernel("add", {&A, &B}, {&Y}) - p.instruction_overhead_s;
    p.memory_bandwidth_gbps = 3.0 * 32 * 1048576 / t / 1e9;
    src["memory_bandwidth_gbps"] = "lora-bench: the CPU add kernel on 3 x 32 MiB (bytes read + written / time)";
    // One GEMM library call's fixed cost: linear_fwd's time on (M x 64) x (64 x 64) is close to
    // linear in M; its intercept at M = 0 (from M = 32 and 512) less the kernel's fixed cost is what
    // a call costs besides its work (a 1 x 1 x 1 call skips the packing setup that real shapes pay).
    {
      Buf x1({32, 64}), x2({512, 64}), w({64, 64}), o1({32, 64}), o2({512, 64});
      const double t1 = time_kernel("linear_fwd", {&x1, &w}, {&o1}), t2 = time_kernel("linear_fwd", {&x2, &w}, {&o2});
      p.gemm_call_s = std::max(0.0, t1 - 32.0 * (t2 - t1) / 480.0 - p.instruction_overhead_s);
      src["gemm_call_s"] = "lora-bench: the CPU linear_fwd kernel on (M x 64) x (64 x 64), its time extrapolated to M = 0 "
                           "from M = 32 and 512, minus instruction_overhead_s (one GEMM library call: " +
                           rt::cpu::gemm_library_description() + ")";
    }
    // GEMM classes: linear_fwd with (M, K) x (N, K)^T, the smallest side = the class; the rate
    // is net of the call's fixed cost (gemm_call_s), which the cost model charges per call.
    for (plan::ElemType dt : {plan::ElemType::F32, plan::ElemType::BF16}) {
      std::vector<planner::GemmRate> rates;
      for (int64_t d : {4, 16, 64, 256, 1024}) {
        int64_t m = std::max<int64_t>(512, d), n = std::max<int64_t>(512, d), k = d;
        Buf x({m, k}, dt), w({n, k}, dt), out({m, n}, dt);
        double s = time_kernel("linear_fwd", {&x, &w}, {&out}) - p.instruction_overhead_s - p.gemm_call_s;
        rates.push_back({d == 4 ? 0 : d, 2.0 * m * n * k / std::max(s, 1e-9) / 1e12});
      }
      const std::string prec = dt == plan::ElemType::BF16 ? "bf16" : "fp32";
      p.gemm[prec] = rates;
      src["gemm." + prec] = "lora-bench: the CPU linear_fwd kernel (" + rt::cpu::gemm_library_description() + " sgemm" +
                            std::string(dt == plan::ElemType::BF16 ? " on operands widened from bf16 and rounded back" : "") +
                            ") on (max(512,d) x d) x (d x max(512,d)), d = the class's min_dim (4 for class 0), net of gemm_call_s";
    }
    // Attention: causal, B=1, H=8, T=256, Dh=64.
    Buf q({1, 8, 256, 64}), k({1, 8, 256, 64}), v({1, 8, 256, 64}), o({1, 8, 256, 64});
    double ta = time_kernel("attention_fwd", {&q, &k, &v}, {&o}, {{"scale", 0.125}, {"causal", int64_t(1)}}) - p.instruction_overhead_s;
    p.attention_tflops["fp32"] = 4.0 * 8 * 256 * 256 * 64 / 2 / std::max(ta, 1e-9) / 1e12;
    src["attention.fp32"] = "lora-bench: the CPU attention_fwd kernel, causal, B 1, H 8, T 256, Dh 64 (model FLOPs / time)";
    // Per-kernel rates (bytes of distinct operands + results / time, the cost model's convention;
    // attention in model FLOPs / time) at one layer's shapes: a mid-size layer, or the model of
    // --hf-config at --batch x --seq-len (a workload-shaped profile). Both storage precisions.
    for (plan::ElemType dt : {plan::ElemType::F32, plan::ElemType::BF16}) {
      const std::string sfx = dt == plan::ElemType::BF16 ? ".bf16" : "";
      const int64_t B = shape.batch, T = shape.seq, R = B * T, D = shape.hidden, I = shape.inter, V = shape.vocab,
                    H = shape.heads, Dh = shape.head_dim;
      const double es = dt == plan::ElemType::BF16 ? 2 : 4;
      using A = std::map<std::string, plan::AttrValue>;
      auto rate = [&](const std::string &k, double bytes, std::vector<Buf *> in, std::vector<Buf *> out, A attrs = {}) {
        double t = time_kernel(k, in, out, attrs, 0.15) - p.instruction_overhead_s;
        if (t > 0) p.kernel_gbps[k + sfx] = bytes / t / 1e9;
        src["kernels." + k + sfx] = "lora-bench: the CPU " + k + " kernel" + (sfx.empty() ? "" : " on bf16 storage") +
                                    " at " + shape.describe();
      };
      Buf g({R, I}, dt), u({R, I}, dt), y({R, I}, dt), dy({R, I}, dt), dg({R, I}, dt), du({R, I}, dt);
      rate("swiglu_fwd", es * 3 * R * I, {&g, &u}, {&y});
      rate("swiglu_bwd", es * 5 * R * I, {&dy, &g, &u}, {&dg, &du});
      Buf x({R, D}, dt), w({D}, dt), xn({R, D}, dt), dx({R, D}, dt);
      rate("rms_norm_fwd", es * 2 * R * D + es * D, {&x, &w}, {&xn}, A{{"eps", 1e-5}});
      rate("rms_norm_bwd", es * 3 * R * D + es * D, {&xn, &x, &w}, {&dx}, A{{"eps", 1e-5}});
      rate("add", es * 3 * R * D, {&x, &xn}, {&dx});
      Buf acc({R, D}, dt);
      rate("accumulate", es * 2 * R * D, {&x}, {&acc});
      Buf q({B, H, T, Dh}, dt), qr({B, H, T, Dh}, dt);
      rate("rope_fwd", es * 2 * R * H * Dh, {&q}, {&qr}, A{{"theta", 10000.0}});
      rate("rope_bwd", es * 2 * R * H * Dh, {&q}, {&qr}, A{{"theta", 10000.0}});
      Buf qt({B, T, H, Dh}, dt);
      rate("transpose", es * 2 * R * H * Dh, {&q}, {&qt}, A{{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
      Buf logits({B, T, V}, dt), dlogits({B, T, V}, dt), loss({1}), labels({B, T});
      for (size_t i = 0; i < labels.v.size(); ++i) reinterpret_cast<int32_t *>(labels.v.data())[i] = int32_t(i % V);
      labels.dtype = plan::ElemType::I32;
      rate("cross_entropy_fwd", es * R * V + 4 * R + 4, {&logits, &labels}, {&loss}, A{{"shift", int64_t(1)}});
      rate("cross_entropy_bwd", es * 2 * R * V + 4 * R, {&logits, &labels}, {&dlogits}, A{{"shift", int64_t(1)}});
      Buf ids({B, T}), table({V, D}, dt), emb({B, T, D}, dt);
      for (size_t i = 0; i < ids.v.size(); ++i) reinterpret_cast<int32_t *>(ids.v.data())[i] = int32_t(i % V);
      ids.dtype = plan::ElemType::I32;
      rate("embedding_fwd", es * R * D + 4 * R, {&ids, &table}, {&emb});
      Buf aq({B, H, T, Dh}, dt), ak({B, H, T, Dh}, dt), av({B, H, T, Dh}, dt), ao({B, H, T, Dh}, dt);
      Buf dq({B, H, T, Dh}, dt), dk({B, H, T, Dh}, dt), dv({B, H, T, Dh}, dt);
      const double af = 4.0 * B * H * T * T * Dh / 2;
      A aa{{"scale", 0.125}, {"causal", int64_t(1)}};
      double tf = time_kernel("attention_fwd", {&aq, &ak, &av}, {&ao}, aa, 0.15) - p.instruction_overhead_s;
      double tb = time_kernel("attention_bwd", {&ao, &aq, &ak, &av}, {&dq, &dk, &dv}, aa, 0.15) - p.instruction_overhead_s;
      if (tf > 0) p.kernel_tflops["attention_fwd" + sfx] = af / tf / 1e12;
      if (tb > 0) p.kernel_tflops["attention_bwd" + sfx] = 2 * af / tb / 1e12;
      for (const char *k : {"attention_fwd", "attention_bwd"})
        src[std::string("kernels.") + k + sfx] = std::string("lora-bench: the CPU ") + k + " kernel, causal, at " + shape.describe() + " (model FLOPs / time)";
    }
    {
      const int n = 64, len = 4096;  // 64 adapters of 4096 f32: p, g, m, v
      std::vector<Buf> bufs;
      bufs.reserve(4 * n);
      for (int i = 0; i < 4 * n; ++i) bufs.emplace_back(std::vector<int64_t>{len});
      std::vector<Buf *> in;
      for (Buf &b : bufs) in.push_back(&b);
      double t = time_kernel("adamw_step", in, {},
                             {{"n", int64_t(n)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}, {"max_grad_norm", 1.0}}, 0.15) -
                 p.instruction_overhead_s;
      if (t > 0) p.kernel_gbps["adamw_step"] = 1.75 * 4 * n * len * 4.0 / t / 1e9;
      src["kernels.adamw_step"] = "lora-bench: the CPU adamw_step kernel on 64 x 4 tensors of 4096 f32 (bytes x 1.75 as the cost model counts)";
    }
    p.peak_tflops = 0;
    for (const planner::GemmRate &r : p.gemm["fp32"]) p.peak_tflops = std::max(p.peak_tflops, r.tflops);
    src["peak_tflops"] = "lora-bench: the best measured fp32 GEMM rate (the CPU has no data-sheet bf16 peak)";
    // In-step factors: measured against the hot-loop profile without any (hot), fp32 plan first.
    const planner::DeviceProfile hot = p;
    for (int k = 0; k < 2; ++k) {
      const bool bf16 = k == 1;
      const std::string &sp = bf16 ? step_plan_bf16 : step_plan;
      if (sp.empty()) continue;
      auto is = bench::measure_in_step(sp, hot, step_steps);
      if (!is) {
        std::cerr << "error: " << is.message() << "\n";
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      const std::string key = bf16 ? "in_step.bf16." : "in_step.", flag = bf16 ? "--step-plan-bf16" : "--step-plan";
      (bf16 ? p.in_step_factor_bf16 : p.in_step_factor) = is->factor;
      (bf16 ? p.dispatch_overhead_bf16_s : p.dispatch_overhead_s) = is->dispatch_s;
      for (auto &[c, f] : is->factor) {
        src[key + c] = "lora-bench " + flag + ": measured in-step " + c + " kernel time / the hot-loop prediction (work " +
                       "part, the per-instruction fixed cost excluded) over " + is->describe;
        std::fprintf(stderr, "lora-bench: in-step%s %-9s measured %.3f ms/step, hot-loop prediction %.3f ms: factor %.3f\n",
                     bf16 ? " (bf16)" : "", c.c_str(), 1e3 * is->measured_s[c], 1e3 * is->predicted_s[c], f);
      }
      src[key + "dispatch_overhead_s"] = "lora-bench " + flag + ": (wall time - kernel time) / instructions over " + is->describe;
      std::fprintf(stderr, "lora-bench: in-step%s step %.3f ms wall, %lld instructions: dispatch %.2f us per instruction\n",
                   bf16 ? " (bf16)" : "", 1e3 * is->step_wall_s, static_cast<long long>(is->instructions), 1e6 * is->dispatch_s);
    }
  }
  // Links: 2 ranks (one per core), through the runtime's communicator (time_comm). Alpha = a
  // 4-byte message with both ranks ready; wake_s = the extra when the receiver has been polling
  // --link-wait-ms; bus bandwidth from 8 MiB, minus the ready 4-byte time.
  planner::LinkCost ar{}, send{};
  idle_barrier();
  if (world >= 2) {
    auto comm = rt::make_mpi_communicator(plan::Mesh{world, 1, 1});
    if (!comm) {
      std::cerr << "error: " << comm.message() << "\n";
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    rt::Communicator &c = **comm;
    const double wait = link_wait_ms * 1e-3;
    const int64_t big = 8 << 20;
    double a_wake = time_comm(c, rank, world, 4, true, wait, 40), a_ready = time_comm(c, rank, world, 4, true, 0, 40);
    double a_big = time_comm(c, rank, world, big, true, 0, 20);
    double sent = 2.0 * (world - 1) / world * big;
    ar = {a_ready, sent / std::max(a_big - a_ready, 1e-9) / 1e9, std::max(0.0, a_wake - a_ready)};
    double s_wake = time_comm(c, rank, world, 4, false, wait, 40), s_ready = time_comm(c, rank, world, 4, false, 0, 40);
    double s_big = time_comm(c, rank, world, big, false, 0, 20);
    send = {s_ready, big / std::max(s_big - s_ready, 1e-9) / 1e9, std::max(0.0, s_wake - s_ready)};
    char w[160];
    std::snprintf(w, sizeof w, "with both ranks ready (median of 40); wake_s = the same after the receiver polled %g ms "
                  "(%.1f us all-reduce, %.1f us send) - the ready time", link_wait_ms, 1e6 * a_wake, 1e6 * s_wake);
    src["links.intra_node.all_reduce"] = "lora-bench: the runtime's MPI communicator (runtime/comm: non-blocking, polled with "
                                         "a yield/sleep backoff), all-reduce over " + std::to_string(world) +
                                         " ranks; alpha = 4 B, completed on every rank - the last rank's entry, " + w +
                                         "; bus bandwidth = 2(n-1)/n x 8 MiB / (time - ready 4 B time)";
    src["links.intra_node.send"] = std::string("lora-bench: the runtime's MPI communicator, send/recv between 2 ranks; alpha = ") +
                                   "4 B one way (the receiver's completion - the sender's start), " + w +
                                   "; bandwidth from 8 MiB";
  } else {
    ar = {1e-6, 1.0};
    send = {1e-6, 1.0};
    src["links.intra_node.all_reduce"] = src["links.intra_node.send"] =
        "not measured (run lora-bench under mpirun -np 2): placeholder 1 us, 1 GB/s";
  }
  src["links.intra_node.broadcast"] = src["links.intra_node.all_reduce"] + " (broadcast costed as all-reduce)";
  p.intra_node = {ar, send, ar};
  p.inter_node = p.intra_node;
  for (const char *k : {"all_reduce", "send", "broadcast"})
    src[std::string("links.inter_node.") + k] = "one host: the intra-node figures";
  int rc = 0;
  if (rank == 0) {
    std::string text = planner::device_profile_json(p, src);
    if (output == "-") {
      std::cout << text;
    } else {
      std::ofstream os(output);
      os << text;
      if (!os) {
        std::cerr << "error: -o " << output << ": cannot write\n";
        rc = 1;
      } else {
        std::cerr << "lora-bench: wrote " << output << "\n";
      }
    }
  }
  MPI_Finalize();
  return rc;
}
