//===- session_step.cpp - the training session's step loop and its end -----===//
//
// SessionRun::train (validation at step 0, then every step) and finish (the final adapter,
// checkpoint, trace and summary); session_run.h lists the steps of run_session.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/base/bf16.h"
#include "runtime/base/safetensors.h"
#include "runtime/cpu/blas_core.h"
#include "runtime/train/adapter_export.h"
#include "runtime/train/session_run.h"
#include "runtime/train/trace.h"

namespace parallora::rt {
namespace {
using json = nlohmann::json;

/// --dump-first-step: loss, the micro-batch logits and every gradient after the first
/// micro_step (before the optimizer).
Status dump_first_step(const std::string &path, const Executor &ex, double loss, const std::vector<float> &logits,
                       const std::vector<int64_t> &logits_shape) {
  std::vector<TensorToWrite> tensors;
  float loss_f = static_cast<float>(loss);
  tensors.push_back({"loss", DType::F32, {1}, &loss_f});
  if (!logits.empty()) tensors.push_back({"logits", DType::F32, logits_shape, logits.data()});
  std::vector<std::string> names;  // keep the strings alive
  auto grads = ex.buffers(plan::BufferKind::Grad);
  names.reserve(grads.size());
  for (const BufferTensor &g : grads) {
    names.push_back("grad." + (g.buffer->param.empty() ? g.buffer->name : g.buffer->param));
    tensors.push_back({names.back(), DType::F32, g.buffer->shape, g.tensor.data});
  }
  return write_safetensors(path, tensors, {{"format", "pt"}, {"producer", "lora-run --dump-first-step"}});
}

// --nonfinite skip passes over at most this many non-finite steps in a row (a persistent NaN is
// not transient).
constexpr int kMaxConsecutiveSkips = 3;

} // namespace

// Mean eval_step loss over the first val_batches global batches of the validation file
// (unshuffled). Each dp rank evaluates its block of every batch in micro-batches, like
// training; every stage runs eval_step (stages exchange activations inside it) and the last
// stage's tp-0 ranks contribute the losses.
// The loss is the mean over every counted label of the val_batches batches (their total count
// is the denominator of each micro-batch's share: a first pass counts them).
StatusOr<double> SessionRun::validate() {
  Executor &ex = *executor;
  const plan::Mesh &mesh = plan.mesh;
  const int64_t per_rank = plan.global_batch / mesh.dp;
  int64_t labels = 0;
  val_file->restore({});
  for (int64_t b = 0; b < val_batches; ++b) {
    if (Status s = val_file->next(plan.global_batch); !s) return Status::error("--val-data " + s.message());
    labels += val_file->label_count();
  }
  if (labels > INT32_MAX) return Status::error("--val-data: more than 2^31-1 labels in --val-batches " + std::to_string(val_batches));
  ex.set_loss_denominator(labels, val_batches * plan.micro_batches * mesh.dp);
  val_file->restore({});
  double sum = 0;
  for (int64_t b = 0; b < val_batches; ++b) {
    if (Status s = val_file->next(plan.global_batch); !s) return Status::error("--val-data " + s.message());
    for (int64_t m = 0; m < plan.micro_batches; ++m) {
      if (Status s = feed(*val_file, rank_plan->dp_rank * per_rank + m * val_batch, 0); !s) return s;
      if (tr) tr->set_micro_batch(static_cast<int>(m));
      if (Status s = ex.run("eval_step", nullptr, 0); !s) return Status::error("eval_step: " + s.message());
      if (loss_rank) sum += ex.loss(0);
    }
  }
  if (multi)
    if (Status s = comm->flush(); !s) return s;
  auto total = world_sum(sum);
  if (!total) return total.status();
  return *total / static_cast<double>(val_batches * plan.micro_batches * mesh.dp);
}

Status SessionRun::run_validation(int64_t step) {
  if (!val_file) return Status::ok();
  if (tr) tr->set_context(step, -1);
  TraceScope span(tr, TraceTrack::Session, "validation");
  auto vl = validate();
  if (!vl) return vl.status();
  if (Status s = metrics->write({{"step", step}, {"val_loss", *vl}}); !s) return s;
  if (rank0) {
    progress->finish();  // ends an in-place progress line first
    std::cerr << "lora-run: step " << step << " val_loss " << fmt("%.6f", *vl) << "\n";
  }
  return Status::ok();
}

Status SessionRun::checkpoint(int64_t step, double loss, double lr) {
  TrainerState st;
  st.step = step;
  st.data = train_data->position();
  st.seed = seed;
  st.plan_fingerprint = fingerprint;
  st.extra = {{"loss", loss}, {"lr", lr}, {"tokens", step * tokens_per_step},
              {"trained_tokens", trained_before + trained_total}};
  TraceScope span(tr, TraceTrack::Session, "checkpoint save");
  return store->save(st, *comm, *executor);
}

// The micro-batch logits for --dump-first-step: input 0 of micro_step's cross_entropy_fwd,
// copied right after that instruction (the arena reuses its bytes later).
void SessionRun::capture_logits(const KernelCall &c) {
  if (c.instr->op != "cross_entropy_fwd" || c.in.empty() || !c.in[0].present()) return;
  const Tensor &l = c.in[0];
  dump_logits.resize(static_cast<size_t>(l.numel()));
  if (l.dtype == plan::ElemType::BF16) bf16_to_f32(l.bf16(), dump_logits.data(), l.numel());  // --precision bf16
  else std::copy(l.f32(), l.f32() + l.numel(), dump_logits.begin());
  dump_logits_shape = c.in[0].shape;
}

Status SessionRun::train() {
  progress.emplace(a.steps, std::max<int64_t>(1, a.log_every));
  if (start_step == 0)
    if (Status s = run_validation(0); !s) return fail("validation before training: " + s.message());

  // `stats`: the time split of this rank's training steps (executor compute / comm + comm->flush,
  // the rest idle/other), step times (MFU), GPU memory and utilization.
  consecutive_nonfinite = 0;
  last_saved = resume ? start_step : 0;
  // Whether the plan computes a loss at all (hand-made test plans may not): the same answer on
  // every rank, read from the plan.
  plan_has_loss = false;
  for (const plan::RankPlan &r : plan.ranks)
    for (const plan::Buffer &b : r.buffers) plan_has_loss |= b.kind == plan::BufferKind::Output && b.name == "loss";
  // Several ranks: a watch that names a peer lost to kill -9 when the launcher ends the job.
  if (multi) {
    auto pw = PeerWatch::start(*comm, StopSignals::flag());
    if (!pw) return fail(pw.message());
    watch = std::move(*pw);
  }
  for (int64_t s = start_step + 1; s <= a.steps; ++s)
    if (Status st = step(s); !st) return st;
  if (rank0) progress->finish();
  return Status::ok();
}

// One optimizer step: the batch, its micro-batches (or this stage's pipeline tasks), the sends'
// flush, optimizer_step, one control all-reduce, the metrics record, then what is due after it.
Status SessionRun::step(int64_t s) {
  Executor &ex = *executor;
  BatchSource &loader = *train_data;
  if (watch) watch->set_step(s);
  auto t0 = std::chrono::steady_clock::now();
  if (tr) tr->set_context(s, -1);
  if (R == fail_rank && s == fail_step)
    return fail("step " + std::to_string(s) + ": injected failure (PARALLORA_TEST_FAIL_RANK=" + std::to_string(fail_rank) +
                ", PARALLORA_TEST_FAIL_STEP=" + std::to_string(fail_step) + ")");
  const std::map<std::string, int64_t> bytes_before = comm->bytes_sent();
  const TimeSplit split_before = ex.time_split();
  double flush_s = 0;  // comm->flush(): waiting for outstanding sends counts as communication
  if (nvml) nvml->begin_window();
  {
    TraceScope span(tr, TraceTrack::Session, "load batch");
    if (Status st = loader.next(plan.global_batch); !st) return fail("--data " + st.message());
    // Each micro-batch's loss is its share of the global batch's mean over counted labels.
    ex.set_loss_denominator(loader.label_count(), plan.micro_batches * dp);
  }
  double loss_sum = 0;
  if (Status st = pipelined ? run_pipeline_tasks(s, &loss_sum) : run_micro_steps(s, &loss_sum); !st) return st;
  if (multi) {
    auto tf = std::chrono::steady_clock::now();
    if (Status st = comm->flush(); !st) return fail("step " + std::to_string(s) + ": " + st.message());
    flush_s = seconds_since(tf);
    if (tr) tr->span(TraceTrack::Comm, "flush sends", TraceRecorder::to_ns(tf), TraceRecorder::now_ns());
  }
  StepState state;
  state.step = s;
  state.lr = lr_at_step(plan.hparams, s, a.steps);
  if (tr) tr->set_context(s, -1);
  if (Status st = ex.run("optimizer_step", &state); !st)
    return fail("step " + std::to_string(s) + ", optimizer_step: " + st.message());
  for (auto &[k, v] : comm->bytes_sent()) {
    auto it = bytes_before.find(k);
    stats.train_bytes[k] += v - (it == bytes_before.end() ? 0 : it->second);
  }
  ++stats.steps_run;
  // One control all-reduce per step: the logged loss, whether a rank was asked to stop (all
  // ranks then stop after this same step), whether a rank's weights hold NaN / Inf.
  // Scanning the weights costs a pass over the adapters: every step on the cpu backend; on a GPU
  // (host reads would migrate managed pages) only when the loss or the gradient norm says so.
  const bool scan = a.backend == "cpu" || !std::isfinite(loss_sum) || !state.grad_norm_finite;
  const NonFinite bad_weight = scan ? first_non_finite(ex, plan::BufferKind::Trainable) : NonFinite{};
  double sums[3] = {loss_sum, StopSignals::pending() ? 1.0 : 0.0, bad_weight ? 1.0 : 0.0};
  {
    TraceScope span(multi ? tr : nullptr, TraceTrack::Comm, "control all_reduce");
    if (Status st = control_sum(*comm, sums, 3); !st) return fail("step " + std::to_string(s) + ": " + st.message());
  }
  stats.last_loss = sums[0] / static_cast<double>(plan.micro_batches * dp);
  const bool stop_requested = sums[1] > 0;
  const bool weights_finite = sums[2] == 0;
  if (Status st = record_step(s, state, t0, split_before, flush_s); !st) return st;
  // Non-finite training (nonfinite.h): stop by default; "skip" only while every weight is finite.
  const bool loss_finite = !plan_has_loss || std::isfinite(stats.last_loss);
  if (!loss_finite || !state.grad_norm_finite || !weights_finite) {
    if (Status st = on_nonfinite(s, state, loss_sum, bad_weight, loss_finite, weights_finite); !st) return st;
  } else {
    consecutive_nonfinite = 0;
  }
  return end_of_step(s, state.lr, stop_requested);
}

// Micro-batches of one step, each a micro_step program (forward and backward).
Status SessionRun::run_micro_steps(int64_t s, double *loss_sum) {
  Executor &ex = *executor;
  const BatchSource &loader = *train_data;
  Executor::InstrHook capture = [this](size_t, const KernelCall &c) { capture_logits(c); };
  for (int64_t m = 0; m < plan.micro_batches; ++m) {
    if (Status st = feed(loader, micro(m), 0); !st) return fail(st.message());
    bool dump = s == 1 && m == 0 && !a.dump_first_step.empty() && !multi;
    StepState micro_state = micro_state_of(s, m);  // the last micro-batch starts the gradient buckets
    micro_state.last_micro = m == plan.micro_batches - 1;
    if (tr) tr->set_context(s, static_cast<int>(m));
    Status st = dump ? ex.run("micro_step", &micro_state, capture) : ex.run("micro_step", &micro_state);
    if (!st) return fail("step " + std::to_string(s) + ", micro_step " + std::to_string(m) + ": " + st.message());
    if (loss_rank) *loss_sum += ex.loss();
    if (dump) {
      if (Status d = dump_first_step(a.dump_first_step, ex, ex.loss(), dump_logits, dump_logits_shape); !d)
        return fail("--dump-first-step: " + d.message());
      std::cout << "  first micro-step dumped to " << a.dump_first_step << "\n";
    }
  }
  return Status::ok();
}

// This stage's tasks of one step in the plan's pipeline schedule.
Status SessionRun::run_pipeline_tasks(int64_t s, double *loss_sum) {
  Executor &ex = *executor;
  const BatchSource &loader = *train_data;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const PipelineTask &t = tasks[ti];
    if (tr) tr->set_context(s, static_cast<int>(t.micro_batch));
    if (t.phase == Phase::Forward) {
      if (Status st = feed(loader, micro(t.micro_batch), t.slot); !st) return fail(st.message());
      StepState fwd_state = micro_state_of(s, t.micro_batch);
      if (Status st = ex.run(pipeline_program(Phase::Forward, t.chunk), &fwd_state, t.slot); !st)
        return fail("step " + std::to_string(s) + ", forward of micro-batch " + std::to_string(t.micro_batch) + ": " +
                    st.message());
      if (loss_rank && t.chunk == plan.virtual_stages - 1) *loss_sum += ex.loss(t.slot);  // the model's last chunk
    } else {
      StepState micro_state = micro_state_of(s, t.micro_batch);  // the last backward starts the buckets
      micro_state.last_micro = ti == last_backward || ti == last_weight;
      const std::string prog = pipeline_program(t.phase, t.chunk);
      if (Status st = ex.run(prog, &micro_state, t.slot); !st)
        return fail("step " + std::to_string(s) + ", " + prog + " of micro-batch " + std::to_string(t.micro_batch) +
                    ": " + st.message());
    }
  }
  return Status::ok();
}

Status SessionRun::record_step(int64_t s, const StepState &state, std::chrono::steady_clock::time_point t0,
                               const TimeSplit &split_before, double flush_s) {
  Executor &ex = *executor;
  const auto t_end = std::chrono::steady_clock::now();
  double dt = std::chrono::duration<double>(t_end - t0).count();
  if (tr) tr->step(s, TraceRecorder::to_ns(t0), TraceRecorder::to_ns(t_end));
  const TimeSplit &split_after = ex.time_split();
  const double compute_s = split_after.compute_s - split_before.compute_s;
  const double comm_s = split_after.comm_s - split_before.comm_s + flush_s;
  const double idle_s = dt - compute_s - comm_s;
  stats.total_compute += compute_s;
  stats.total_comm += comm_s;
  stats.total_step_time += dt;
  stats.step_times.push_back(dt);
  stats.last_lr = state.lr;
  double tps = dt > 0 ? tokens_per_step / dt : 0;
  if (s > start_step + 1) stats.step_tps.push_back(tps);
  else stats.first_step_tps = tps;
  // Goodput: the counted (trained) labels of steps whose update was applied, per second.
  const int64_t trained_now = state.grad_norm_finite ? train_data->label_count() : 0;
  trained_total += trained_now;
  stats.trained_tokens = trained_total;
  const double gps = dt > 0 ? trained_now / dt : 0;
  if (s > start_step + 1) stats.step_goodput.push_back(gps);
  else stats.first_step_goodput = gps;
  json rec = {{"step", s},
              {"time_s", seconds_since(t_start)},  // since the session started: time-to-target includes everything
              {"loss", stats.last_loss},
              {"lr", state.lr},
              {"grad_norm", state.grad_norm},
              {"tokens", s * tokens_per_step},
              {"tokens_per_s", tps},
              {"trained_tokens", trained_before + trained_total},
              {"step_trained_tokens", trained_now},
              {"goodput_tokens_per_s", gps},
              {"step_time_s", dt},
              {"peak_rss_mib", peak_rss_mib()},
              {"arena_mib", ex.arena_bytes() * ex.slots() / 1048576.0},
              {"skipped", !state.grad_norm_finite},
              {"compute_s", compute_s},
              {"comm_s", comm_s},
              {"idle_s", idle_s}};
  if (gpu) {
    cuda::DeviceMemoryInfo dm = gpu->device_memory();
    if (dm.ok) {
      stats.gpu_peak_used_mib = std::max(stats.gpu_peak_used_mib, dm.used_bytes / 1048576.0);
      rec["gpu_mem_used_mib"] = dm.used_bytes / 1048576.0;
    }
    stats.gpu_alloc_peak_mib = std::max(stats.gpu_alloc_peak_mib, dm.peak_allocated_bytes / 1048576.0);
  }
  if (nvml) {
    GpuUtilStats u = nvml->end_window();
    if (u.samples > 0) rec["gpu_util"] = u.mean;
  }
  if (Status st = metrics->write(rec); !st) return fail(st.message());
  if (rank0) {
    progress->update(s, stats.last_loss, tps, state.lr);
  }
  return Status::ok();
}

Status SessionRun::on_nonfinite(int64_t s, const StepState &state, double loss_sum, const NonFinite &bad_weight,
                                bool loss_finite, bool weights_finite) {
  Executor &ex = *executor;
  if (rank0) progress->finish();
  // This rank's first non-finite tensor, in the order the values flow back: loss, weights,
  // gradients, AdamW moments.
  std::string first;
  // A broken weight is named first: it outlives the step (the loss and gradients do not).
  if (bad_weight) first = "adapter weight " + bad_weight.str();
  else if (plan_has_loss && loss_rank && !std::isfinite(loss_sum)) first = "the loss";
  else if (NonFinite g = first_non_finite(ex, plan::BufferKind::Grad)) first = "gradient " + g.str();
  else if (NonFinite m = first_non_finite(ex, plan::BufferKind::OptState)) first = "AdamW moment " + m.str();
  const std::string what = "step " + std::to_string(s) + ": " +
                           (!loss_finite ? "loss is " + fmt("%g", stats.last_loss)
                            : !weights_finite             ? std::string("an adapter weight is not finite")
                                                          : "gradient norm is " + fmt("%g", state.grad_norm));
  if (multi && !first.empty()) {
    const std::string line = "rank " + std::to_string(R) + ": " + what + "; first non-finite tensor here: " + first + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  ++consecutive_nonfinite;
  const bool skip_policy = a.nonfinite == "skip" || a.nonfinite == "skip-step";  // two spellings
  if (skip_policy && weights_finite && consecutive_nonfinite <= kMaxConsecutiveSkips) {
    if (rank0)
      std::cerr << "lora-run: warning: " << what << "; update skipped (--nonfinite skip)"
                << (!multi && !first.empty() ? "; first non-finite tensor: " + first : std::string()) << "\n";
    return Status::ok();
  }
  outcome->same_on_every_rank = true;  // every rank sees the same global loss / norm / flag
  return fail(what + (!multi && !first.empty() ? "; first non-finite tensor: " + first : std::string()) +
              (consecutive_nonfinite > kMaxConsecutiveSkips
                   ? "; " + std::to_string(consecutive_nonfinite) + " non-finite steps in a row are not transient"
                   : std::string()) +
              "; training stopped and no adapter saved" +
              (last_saved > 0 ? " (" + a.out + "/checkpoint-" + std::to_string(last_saved) + " holds the last saved weights)"
                              : std::string()) +
              (a.nonfinite == "stop" && weights_finite ? "; --nonfinite skip passes over a transient non-finite step"
                                                       : std::string()));
}

Status SessionRun::end_of_step(int64_t s, double lr, bool stop_requested) {
  if (val_file && ((a.val_every > 0 && s % a.val_every == 0) || s == a.steps))
    if (Status st = run_validation(s); !st) return fail("validation at step " + std::to_string(s) + ": " + st.message());
  const bool saved_now = a.save_every > 0 && s % a.save_every == 0 && s != a.steps;
  if (saved_now) {
    if (Status st = checkpoint(s, stats.last_loss, lr); !st)
      return fail("checkpoint at step " + std::to_string(s) + ": " + st.message());
    last_saved = s;
  }
  if (watch && (stop_requested || s == a.steps)) watch->quiet();  // peers may exit from here on
  if (stop_requested && s != a.steps) {
    // Every rank saw the same flag in the same all-reduce: all stop after step s.
    if (rank0) progress->finish();
    if (!saved_now)
      if (Status st = checkpoint(s, stats.last_loss, lr); !st)
        return fail("checkpoint at step " + std::to_string(s) + ": " + st.message());
    if (Status st = export_adapter(a.out + "/adapter", plan, *comm, *executor, base_model); !st) return fail(st.message());
    const int sig = StopSignals::pending();
    outcome->same_on_every_rank = true;
    outcome->exit_code = 128 + (sig != 0 ? sig : SIGTERM);
    return fail("stopped by " + std::string(StopSignals::name(sig)) + " after step " + std::to_string(s) + " of " +
                std::to_string(a.steps) + ": saved " + a.out + "/checkpoint-" + std::to_string(s) + " and " + a.out +
                "/adapter; continue with: lora-run " + a.plan + " --data " + a.data + " --steps " +
                std::to_string(a.steps) + " --out " + a.out + " --resume " + a.out);
  }
  return Status::ok();
}

// Final adapter (full tensors, assembled on rank 0), checkpoint and summary.
Status SessionRun::finish() {
  Executor &ex = *executor;
  if (Status s = export_adapter(a.out + "/adapter", plan, *comm, ex, base_model); !s) return fail(s.message());
  if (a.steps > start_step)
    if (Status s = checkpoint(a.steps, stats.last_loss, stats.last_lr); !s) return fail("final checkpoint: " + s.message());
  if (nvml) {
    stats.has_util = true;
    stats.util_total = nvml->total();
  }
  RunInfo info;
  info.plan_path = a.plan;
  info.fingerprint = fingerprint;
  info.out_dir = a.out;
  info.metrics_path = metrics_path;
  info.backend = a.backend;
  info.omp_wait_policy = omp_wait_policy();
  if (a.backend == "cpu") info.cpu_gemm = cpu::gemm_library_description();
  info.gpu_name = gpu_name;
  info.nvml_why = nvml_why;
  info.base_weights = ex.base_weights_used();
  info.steps = a.steps;
  info.start_step = start_step;
  info.threads = threads;
  info.profile = a.profile;
  info.peak_tflops = peak_tflops;
  info.t_start = t_start;
  TraceSummary trace_summary;
  if (tr) {
    if (Status s = write_merged_trace(a.trace, *tr, *comm, plan, a.plan, &trace_summary); !s) return fail(s.message());
    if (rank0) info.trace = &trace_summary;
  }
  return write_run_summary(info, stats, plan, ex, *comm);
}

} // namespace parallora::rt
