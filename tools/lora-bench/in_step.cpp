//===- in_step.cpp - lora-bench: what a real training step costs beyond hot kernels ===//
#include "tools/lora-bench/in_step.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "passes/planner/cost_model.h"
#include "runtime/core/executor.h"
#include "runtime/cpu/kernels.h"
#include "runtime/plan/plan_io.h"

namespace parallora::bench {

std::string op_class(const std::string &op) {
  if (op == "linear_fwd" || op == "linear_bwd_input" || op == "lora_linear_fwd" || op == "lora_linear_bwd") return "gemm";
  if (op == "attention_fwd" || op == "attention_bwd") return "attention";
  if (rt::is_comm_op(op) || op == "all_reduce_start" || op == "all_reduce_wait") return "";
  return "memory";
}

namespace {

StatusOr<plan::Plan> read_step_plan(const std::string &plan_path) {
  const std::string where = "--step-plan " + plan_path;
  auto p = plan::read_plan(plan_path);
  if (!p) return Status::error(where + ": " + p.message());
  if (p->ranks.size() != 1 || p->mesh.dp * p->mesh.tp * p->mesh.pp != 1)
    return Status::error(where + ": needs a single-rank plan (compile it without --dp/--tp/--pp), got " +
                         std::to_string(p->ranks.size()) + " ranks");
  if (p->vocab_size <= 0 || p->global_batch <= 0 || p->seq_len <= 0)
    return Status::error(where + ": the plan has no vocabulary / batch / sequence length");
  return p;
}

} // namespace

Status check_step_plan(const std::string &plan_path) {
  auto p = read_step_plan(plan_path);
  return p ? Status::ok() : p.status();
}

StatusOr<InStep> measure_in_step(const std::string &plan_path, const planner::DeviceProfile &hot, int steps) {
  const std::string where = "--step-plan " + plan_path;
  auto p = read_step_plan(plan_path);
  if (!p) return p.status();
  rt::KernelRegistry reg;
  rt::cpu::register_kernels(reg);
  auto ex = rt::Executor::create(*p, 0, reg);
  if (!ex) return Status::error(where + ": " + ex.message());
  rt::Executor &e = **ex;
  if (Status s = e.init_parameters("", 1); !s) return Status::error(where + ": " + s.message());

  const int64_t M = std::max<int64_t>(1, p->micro_batches), n = p->global_batch / M * p->seq_len;
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::mt19937 rng(7);
  auto step = [&](int64_t s) -> Status {
    e.set_loss_denominator(p->global_batch * p->seq_len, M);
    for (int64_t m = 0; m < M; ++m) {
      for (int32_t &t : ids) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(p->vocab_size));
      if (Status st = e.feed("input_ids", ids.data(), n); !st) return st;
      if (Status st = e.feed("labels", ids.data(), n); !st) return st;
      rt::StepState ms;
      ms.step = s;
      ms.last_micro = m == M - 1;
      if (Status st = e.run("micro_step", &ms); !st) return st;
    }
    rt::StepState os;
    os.step = s;
    os.lr = 1e-4;
    return e.run("optimizer_step", &os);
  };
  for (int s = 1; s <= 2; ++s)  // warm-up: first-touch page faults, OpenMP team start
    if (Status st = step(s); !st) return Status::error(where + ": warm-up step: " + st.message());
  // Per profiled step: wall time and kernel seconds per class (the profile is cumulative: deltas).
  // The median over the steps: what lora-run reports as a run's step time (step_time_s_median),
  // so the factors map the hot-loop timings (10th percentiles) onto the statistic predicted.
  e.enable_profile(true);
  e.reset_profile();
  std::map<std::string, std::vector<double>> per_class;  // class -> seconds in each step
  std::vector<double> walls, kernel_s;
  std::map<std::string, double> before;
  for (int s = 3; s < 3 + steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    if (Status st = step(s); !st) return Status::error(where + ": step " + std::to_string(s) + ": " + st.message());
    walls.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::map<std::string, double> now_c;
    double k = 0;
    for (const auto &[op, prof] : e.profile()) {
      now_c[op_class(op)] += prof.seconds;
      k += prof.seconds;
    }
    for (const auto &[c, v] : now_c) per_class[c].push_back(v - before[c]);
    kernel_s.push_back(k - before["*"]);
    before = now_c;
    before["*"] = k;
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };

  InStep r;
  r.step_wall_s = median(walls);
  std::map<std::string, int64_t> count;  // instructions per step by class
  int64_t gemm_calls = 0;                 // GEMM library calls per step (gemm_call_s each)
  for (const plan::Program &prog : p->ranks[0].programs) {
    const int64_t times = prog.name == "micro_step" ? M : prog.name == "optimizer_step" ? 1 : 0;
    for (const plan::Instr &in : prog.instrs) {
      r.instructions += times;
      count[op_class(in.op)] += times;
      gemm_calls += times * planner::gemm_calls(in);
    }
  }
  std::vector<double> gaps;  // wall - kernels, per step
  for (size_t i = 0; i < walls.size(); ++i) gaps.push_back(walls[i] - kernel_s[i]);
  for (auto &[c, v] : per_class)
    if (!c.empty()) r.measured_s[c] = median(v);
  for (const auto &[op, s] : planner::op_seconds(*p, 0, hot))
    if (std::string c = op_class(op); !c.empty()) r.predicted_s[c] += s;
  for (const auto &[c, pred] : r.predicted_s) {
    const double fixed = static_cast<double>(count[c]) * hot.per_instruction_s() +
                         (c == "gemm" ? static_cast<double>(gemm_calls) * hot.gemm_call_s : 0.0);
    const double work_pred = pred - fixed, work_meas = r.measured_s[c] - fixed;
    if (work_pred > 0 && work_meas > 0) r.factor[c] = work_meas / work_pred;
  }
  r.dispatch_s = std::max(0.0, median(gaps) / static_cast<double>(std::max<int64_t>(1, r.instructions)));
  r.describe = plan_path + " (" + std::to_string(M) + " micro-batch(es), " + std::to_string(r.instructions) +
               " instructions per step), the median of " + std::to_string(steps) + " profiled steps after 2 warm-up steps";
  return r;
}

} // namespace parallora::bench
