//===- session.cpp - a training session ------------------------------------===//
#include "runtime/train/session.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <csignal>
#include <cstring>
#include <signal.h>
#include <unistd.h>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sys/stat.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/base/bf16.h"
#include "runtime/cpu/blas_core.h"
#include "runtime/base/safetensors.h"
#include "runtime/comm/comm.h"
#include "runtime/core/executor.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cuda/plugin.h"
#include "runtime/io/gpu_metrics.h"
#include "runtime/io/metrics.h"
#include "runtime/io/token_data.h"
#include "runtime/plan/plan_io.h"
#include "runtime/plan/schedule.h"
#include "runtime/train/adapter_export.h"
#include "runtime/train/batch_source.h"
#include "runtime/train/checkpoint_store.h"
#include "runtime/train/metrics_log.h"
#include "runtime/train/nonfinite.h"
#include "runtime/train/output_dir.h"
#include "runtime/train/peer_watch.h"
#include "runtime/train/stop_signals.h"
#include "runtime/base/fs_util.h"
#include "runtime/train/run_summary.h"
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


} // namespace

std::string omp_wait_policy() {
  const char *p = std::getenv("OMP_WAIT_POLICY");
  return p ? p : "default";
}

Status run_session(const SessionOptions &a, World &w, SessionOutcome *outcome) {
  auto fail = [](const std::string &message) { return Status::error(message); };
  auto t_start = std::chrono::steady_clock::now();
  auto plan_or = plan::read_plan(a.plan);
  if (!plan_or) return fail(plan_or.message());
  const plan::Plan &plan = *plan_or;
  const plan::Mesh &mesh = plan.mesh;
  const std::string fingerprint = plan::plan_fingerprint(plan);

  // MPI: when a launcher started us, or the plan needs several ranks.
  w = init_world(plan.world_size > 1);
  StopSignals stop_signals;  // after MPI_Init, so the handlers are ours
  const bool multi = plan.world_size > 1;
  if (w.size != plan.world_size) {
    outcome->same_on_every_rank = true;  // every rank finds it: no abort, rank 0 reports
    return Status::error(a.plan + " was compiled for " + std::to_string(plan.world_size) + " rank" +
                         (plan.world_size == 1 ? "" : "s") + " (dp " + std::to_string(mesh.dp) + " x tp " +
                         std::to_string(mesh.tp) + " x pp " + std::to_string(mesh.pp) + ") but " + std::to_string(w.size) +
                         " were started; launch with: " +
                         (plan.world_size > 1 ? "mpirun -np " + std::to_string(plan.world_size) + " " : std::string()) +
                         "lora-run " + a.plan + " ...");
  }
  const int R = w.rank;
  const plan::RankPlan &rp = plan.ranks[R];
  const bool rank0 = R == 0;
  auto warn = [&](const std::string &message) {
    if (rank0) std::cerr << "lora-run: warning: " << message << "\n";
  };

  // Test hook (see --help): make one rank fail at one step.
  int fail_rank = -1;
  int64_t fail_step = -1;
  if (const char *e = std::getenv("PARALLORA_TEST_FAIL_RANK")) fail_rank = std::atoi(e);
  if (const char *e = std::getenv("PARALLORA_TEST_FAIL_STEP")) fail_step = std::atoll(e);

  // Resume first: the checkpoint's seed fixes the data order.
  std::optional<ResumePoint> resume;
  uint64_t seed = a.seed;
  int64_t start_step = 0;

  // Threads, kernels, communicator, executor.
  int threads = a.threads;
  if (threads < 0) {
    const char *env = std::getenv("OMP_NUM_THREADS");
    threads = env ? std::max(0, std::atoi(env)) : 0;
  }
  cpu::set_num_threads(threads);
  if (a.backend == "cpu")
    if (std::string err = cpu::set_gemm_library(a.cpu_gemm); !err.empty()) return fail("--cpu-gemm " + a.cpu_gemm + ": " + err);
  KernelRegistry registry;
  MemoryHooks cuda_memory;
  const MemoryHooks *memory_hooks = nullptr;
  std::string device_line;
  const cuda::BackendApi *gpu = nullptr;
  if (a.backend == "cuda") {
    // The CUDA backend module (runtime/cuda/plugin.h). Every rank uses device (local rank %
    // device count), chosen on first use by the backend (OMPI_COMM_WORLD_LOCAL_RANK).
    std::string why;
    gpu = cuda::load_cuda_backend(&why);
    if (!gpu) return fail("--backend cuda: " + why);
    if (!gpu->available(&why)) return fail("--backend cuda: no usable CUDA GPU (" + why + ")");
    device_line = gpu->device_description();
    gpu->register_kernels(registry);  // the contract kernels and the host-staged collectives
    cuda_memory = gpu->memory();
    if (!a.cuda_graphs) cuda_memory.run_program = nullptr;  // opt-in (MemoryHooks::run_program)
    memory_hooks = &cuda_memory;
  } else {
    cpu::register_kernels(registry);
    register_collective_kernels(registry);
  }
  std::unique_ptr<Communicator> comm;
  if (a.collectives == "nccl" && a.backend != "cuda") return fail("--collectives nccl needs --backend cuda");
  if (a.cuda_graphs && a.backend != "cuda") return fail("--cuda-graphs needs --backend cuda");
  if (multi && a.collectives == "nccl") {
    // NCCL communicators per mesh group, bootstrapped through MPI; kernels on the device stream.
    if (!gpu->has_nccl) return fail("--collectives nccl: the CUDA backend was built without NCCL");
    auto c = gpu->make_nccl_communicator(mesh, a.comm_timeout);
    if (!c) return fail(c.message());
    comm = std::move(*c);
    gpu->register_nccl_collective_kernels(registry);  // replaces the host-staged collectives
  } else if (multi) {
    auto c = make_mpi_communicator(mesh);
    if (!c) return fail(c.message());
    comm = std::move(*c);
  } else {
    comm = make_local_communicator();
  }
  comm->timeout_seconds = a.comm_timeout;
  auto ex_or = Executor::create(plan, R, registry, a.backend, comm.get(), memory_hooks);
  if (!ex_or) return fail(a.plan + ": " + ex_or.message());
  Executor &ex = **ex_or;
  ex.enable_profile(a.profile);
  // --trace: every instruction and the session's spans (runtime/core/trace.h), merged at the end.
  // On the cuda backend the compute kernels are timed by CUDA events (runtime/cuda/device_timer.h).
  std::unique_ptr<TraceRecorder> trace;
  std::unique_ptr<DeviceTimer> device_timer;
  if (!a.trace.empty()) {
    trace = std::make_unique<TraceRecorder>(static_cast<size_t>(a.trace_max_events));
    if (trace->capacity() == 0)
      return fail("--trace-max-events " + std::to_string(a.trace_max_events) + ": cannot allocate " +
                  fmt("%.0f", a.trace_max_events * 64.0 / 1048576) + " MiB for the events (64 bytes each)");
    if (gpu) device_timer = gpu->make_device_timer();
    ex.set_trace(trace.get(), device_timer.get());
  }
  TraceRecorder *const tr = trace.get();

  // GPU metrics (cuda backend): NVML utilization of this rank's device (sampled by a background
  // thread during steps) and the device name for the default --peak-tflops.
  std::unique_ptr<NvmlSampler> nvml;
  std::string gpu_name, nvml_why;
  if (gpu) {
    std::string bus = gpu->device_pci_bus_id();
    nvml = bus.empty() ? NvmlSampler::open(0, &nvml_why) : NvmlSampler::open_by_pci_bus_id(bus, &nvml_why);
    if (nvml) {
      gpu_name = nvml->device_name();
    } else {
      gpu_name = device_line.substr(0, device_line.find(" (sm_"));
      if (rank0) std::cerr << "lora-run: GPU utilization unavailable: " << nvml_why << "\n";
    }
  }
  // MFU's peak (TFLOP/s per device): --peak-tflops, else the GPU's dense bf16 data-sheet peak.
  const double peak_tflops = a.peak_tflops >= 0 ? a.peak_tflops : dense_bf16_peak_tflops(gpu_name);

  // Checkpoints go to --out; the adapters record the base model they were trained on.
  const std::string weights = a.weights.empty() ? plan.base_weights : a.weights;
  const std::string base_model = weights;
  CheckpointStore store(a.out, plan, fingerprint, base_model, static_cast<int>(a.keep_last));
  if (!a.resume.empty()) {
    auto c = store.load(a.resume, ex, R, a.plan);  // refuses a checkpoint of another training
    if (!c) return fail("--resume " + a.resume + ": " + c.message());
    resume = std::move(*c);
    const TrainerState &st = resume->state;
    const std::string &cpath = resume->path;
    if (rank0 && st.plan_fingerprint != fingerprint && st.mesh.is_object() && st.mesh.contains("dp"))
      std::cerr << "lora-run: resuming " << cpath << " (written by plan " << st.plan_fingerprint << ": dp "
                << st.mesh.value("dp", 1) << " x tp " << st.mesh.value("tp", 1) << " x pp " << st.mesh.value("pp", 1)
                << ", " << st.mesh.value("precision", std::string("fp32")) << ") under " << a.plan << " (dp " << mesh.dp
                << " x tp " << mesh.tp << " x pp " << mesh.pp << ", " << plan.precision << ")\n";
    if (seed != st.seed)
      warn("using the checkpoint's seed " + std::to_string(st.seed) + " (not --seed " + std::to_string(seed) +
           ") so the data order continues unchanged");
    seed = st.seed;
    start_step = st.step;
  }

  // Data: every rank reads the same file in the same seeded order (batch_source.h: a token
  // stream, or examples with their label-mask file laid out in packed or padded rows).
  auto train_or = BatchSource::open({"--data", a.data, a.data_format, a.data_layout, seed, a.shuffle}, plan);
  if (!train_or) return fail(train_or.message());
  BatchSource &loader = **train_or;
  std::unique_ptr<BatchSource> val_file;
  if (!a.val_data.empty()) {
    auto v = BatchSource::open({"--val-data", a.val_data, a.data_format, a.data_layout, 0, false}, plan);
    if (!v) return fail(v.message());
    val_file = std::move(*v);
  }

  // Batch geometry: global batch B; dp rank d takes sequences [d*B/dp, (d+1)*B/dp), split into
  // micro_batches micro-batches of `micro_batch` sequences (the Input buffers' size).
  const int64_t dp = mesh.dp;
  const int64_t per_dp = plan.global_batch / dp;
  const int64_t micro_batch = per_dp / plan.micro_batches;
  const BufferTensor *ids_buf = ex.find("input_ids");
  const BufferTensor *labels_buf = ex.find("labels");
  const bool has_ids = ids_buf && ids_buf->buffer->kind == plan::BufferKind::Input;
  const bool has_labels = labels_buf && labels_buf->buffer->kind == plan::BufferKind::Input;
  if (!has_ids && !multi) return fail(a.plan + ": the plan has no input 'input_ids'");
  int64_t ids_numel = has_ids ? ids_buf->buffer->numel() : has_labels ? labels_buf->buffer->numel() : micro_batch * plan.seq_len;
  if (micro_batch < 1 || micro_batch * plan.micro_batches * dp != plan.global_batch ||
      ids_numel != micro_batch * plan.seq_len)
    return fail(a.plan + ": input 'input_ids' holds " + std::to_string(ids_numel) + " tokens but global batch " +
                std::to_string(plan.global_batch) + (dp > 1 ? " / " + std::to_string(dp) + " data-parallel ranks" : "") +
                " / " + std::to_string(plan.micro_batches) + " micro-batches x seq_len " + std::to_string(plan.seq_len) +
                " needs " + std::to_string(micro_batch * plan.seq_len));
  if (loader.rows() < micro_batch)
    return fail("--data " + a.data + ": " + loader.describe() + ", fewer rows of " + std::to_string(plan.seq_len) +
                " than one micro-batch of " + std::to_string(micro_batch));
  // Rows [first, first + micro_batch) of the loaded global batch into slot `slot`'s inputs.
  auto feed = [&](const BatchSource &src, int64_t first, int slot) -> Status {
    return src.feed(ex, first, micro_batch, slot);
  };

  // Pipeline schedule of this stage.
  const bool pipelined = mesh.pp > 1;
  const bool last_stage = rp.pp_stage == mesh.pp - 1;
  const bool loss_rank = last_stage && rp.tp_rank == 0;  // contributes to the logged losses
  std::vector<PipelineTask> tasks;
  if (pipelined) {
    if (Status s = check_pipeline_shape(plan.pipeline_schedule, mesh.pp, static_cast<int>(plan.micro_batches),
                                        plan.virtual_stages);
        !s)
      return fail(a.plan + ": " + s.message());
    int need = pipeline_slots(plan.pipeline_schedule, mesh.pp, rp.pp_stage, static_cast<int>(plan.micro_batches),
                              plan.virtual_stages);
    if (need > ex.slots())
      return fail(a.plan + ": the " + plan.pipeline_schedule + " schedule keeps " + std::to_string(need) +
                  " micro-batches in flight on stage " + std::to_string(rp.pp_stage) + " but the rank has " +
                  std::to_string(ex.slots()) + " slots");
    tasks = pipeline_tasks(plan.pipeline_schedule, mesh.pp, rp.pp_stage, static_cast<int>(plan.micro_batches),
                           plan.virtual_stages);
  }
  // Index of this rank's last backward (and, under zb-h1, last weight-gradient) task of a step.
  size_t last_backward = tasks.size(), last_weight = tasks.size();
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    if (tasks[ti].phase == Phase::Backward) last_backward = ti;
    if (tasks[ti].phase == Phase::Weight) last_weight = ti;
  }

  int64_t val_batch = 0, val_batches = 0;
  if (val_file) {
    if (!ex.has_program("eval_step")) return fail(a.plan + ": --val-data given but the plan has no eval_step program");
    // A validation batch is a global batch, split over dp ranks and micro-batches exactly like a
    // training batch, so every strategy evaluates the same sequences.
    val_batch = ids_numel / plan.seq_len;  // sequences per eval_step on this rank
    int64_t available = val_file->rows() / plan.global_batch;
    if (available < 1)
      return fail("--val-data " + a.val_data + ": " + val_file->describe() + ", fewer rows than one evaluation batch of " +
                  std::to_string(plan.global_batch) + " x " + std::to_string(plan.seq_len));
    val_batches = a.val_batches > 0 ? std::min(a.val_batches, available) : available;
    if (a.val_batches > available)
      warn("--val-batches " + std::to_string(a.val_batches) + " but " + a.val_data + " holds only " +
           std::to_string(available) + " batches; using " + std::to_string(available));
  }

  // Parameters: base weights, then the adapters (init spec, --init-adapter or the checkpoint).
  const bool adapters_given = !a.init_adapter.empty() || resume.has_value();
  if (Status s = ex.init_parameters(weights, seed, /*skip_trainables=*/adapters_given); !s) {
    std::string hint = (a.weights.empty() && !plan.base_weights.empty())
                           ? " (the plan records base weights " + plan.base_weights + "; pass --weights to use another copy)"
                           : "";
    return fail(s.message() + hint);
  }
  if (!a.init_adapter.empty()) {
    plan::LoraInfo info;
    if (Status s = load_init_adapter(a.init_adapter, plan, ex, &info); !s)
      return fail("--init-adapter " + a.init_adapter + ": " + s.message());
    if (info.rank != plan.lora.rank || info.alpha != plan.lora.alpha)
      warn("--init-adapter " + a.init_adapter + " was saved with r=" + std::to_string(info.rank) +
           ", lora_alpha=" + fmt("%g", info.alpha) + " but the plan uses r=" + std::to_string(plan.lora.rank) +
           ", lora_alpha=" + fmt("%g", plan.lora.alpha) + " (the plan's scaling applies)");
  }
  if (resume) {
    if (Status s = ex.set_trainables(resume->trainables); !s) return fail("--resume " + resume->path + ": " + s.message());
    if (Status s = ex.set_optimizer_state(resume->optimizer_state); !s)
      return fail("--resume " + resume->path + ": " + s.message());
    loader.restore(resume->state.data);
  }

  // Output directory and metrics (rank 0 writes them; every rank writes its checkpoint shard).
  // Rank 0 claims it (created with its parents, locked, not another run's unless resuming or
  // --overwrite, leftovers of killed saves removed: output_dir.h) before anything is written.
  std::optional<OutputDir> out_dir;
  if (rank0) {
    std::vector<std::string> removed;
    auto claimed = OutputDir::claim(a.out, resume.has_value(), a.overwrite, &removed);
    if (!claimed) return fail(claimed.message());
    out_dir.emplace(std::move(*claimed));
    if (!removed.empty()) {
      std::string list;
      for (size_t i = 0; i < removed.size() && i < 6; ++i) list += (i ? ", " : "") + removed[i];
      if (removed.size() > 6) list += ", ...";
      std::cerr << "lora-run: " << a.out << ": removed " << list << (a.overwrite ? "" : " (left by an interrupted save)") << "\n";
    }
  }
  // --trace is written at the end: find out now if rank 0 cannot write it.
  if (tr && rank0) {
    std::FILE *probe = std::fopen((a.trace + ".tmp").c_str(), "w");
    if (!probe) return fail("--trace " + a.trace + ": cannot write " + a.trace + ".tmp: " + std::strerror(errno));
    std::fclose(probe);
    std::remove((a.trace + ".tmp").c_str());
  }
  if (Status s = control_barrier(*comm); !s) return fail(s.message());
  // Several ranks write one checkpoint directory: --out must be the same directory on every host.
  if (multi)
    if (Status s = check_out_shared(*comm, a.out); !s) {
      outcome->same_on_every_rank = true;  // every rank stops here; rank 0 names the others
      return fail(s.message());
    }
  auto metrics_or = MetricsLog::open(a.out, rank0, resume ? start_step : -1, plan.world_size);
  if (!metrics_or) return fail(metrics_or.message());
  MetricsLog metrics = std::move(*metrics_or);
  const std::string &metrics_path = metrics.path();
  auto write_metrics = [&](json rec) -> Status { return metrics.write(std::move(rec)); };

  const int64_t tokens_per_step = plan.global_batch * plan.seq_len;
  int64_t trained_total = 0;  // counted labels of the applied steps of this run (goodput's tokens)
  // ... and of the steps before a resume (the checkpoint's count; 0 for older checkpoints)
  const int64_t trained_before = resume ? resume->state.extra.value("trained_tokens", int64_t(0)) : 0;
  if (rank0) {
    std::cout << "lora-run: " << a.plan << " (" << fingerprint << "), " << a.steps << " steps of " << plan.global_batch
              << " x " << plan.seq_len << " tokens (" << plan.micro_batches << " micro-batch"
              << (plan.micro_batches == 1 ? "" : "es") << (dp > 1 ? " per data-parallel rank" : "") << "), data "
              << a.data << " (" << loader.describe() << (a.shuffle ? ", shuffled" : "") << ")\n";
    if (multi)
      std::cout << "  ranks: " << plan.world_size << " (dp " << mesh.dp << " x tp " << mesh.tp << " x pp " << mesh.pp
                << "), strategy " << plan.strategy
                << (pipelined ? ", pipeline schedule " + plan.pipeline_schedule : std::string()) << "\n";
    std::cout << "  memory" << (multi ? " (rank 0)" : "") << ": arena " << fmt("%.1f", ex.arena_bytes() / 1048576.0)
              << " MiB" << (ex.slots() > 1 ? " x " + std::to_string(ex.slots()) + " slots" : std::string())
              << ", persistent " << fmt("%.1f", ex.persistent_bytes() / 1048576.0) << " MiB; "
              << (a.backend == "cuda" ? std::string("backend cuda")
                                      : "threads " + (threads > 0 ? std::to_string(threads) : std::string("all")) +
                                            ", OpenMP wait policy " + omp_wait_policy() +
                                            ", GEMM " + cpu::gemm_library_description())
              << "\n";
    if (!device_line.empty()) std::cout << "  device" << (multi ? " (rank 0)" : "") << ": " << device_line << "\n";
    std::cout << "  base weights" << (multi ? " (rank 0)" : "") << ": " << ex.base_weights_used() << "\n";
    if (start_step > 0) std::cout << "  resumed from " << resume->path << " at step " << start_step << "\n";
    if (start_step >= a.steps)
      std::cout << "  the checkpoint is at step " << start_step << " >= --steps " << a.steps
                << ": nothing to train (raise --steps to continue)\n";
  }
  if (!a.dump_first_step.empty() && start_step > 0) warn("--dump-first-step ignored: resuming after step 1");
  if (!a.dump_first_step.empty() && multi) warn("--dump-first-step ignored: it applies to single-rank plans only");

  // Sums `local` (this rank's contribution, or 0) over the world: control traffic, not counted
  // in the communicator's bytes.
  auto world_sum = [&](double local) -> StatusOr<double> {
    if (Status s = control_sum(*comm, &local, 1); !s) return s;
    return local;
  };

  ProgressBar progress(a.steps, std::max<int64_t>(1, a.log_every));
  // Mean eval_step loss over the first val_batches global batches of the validation file
  // (unshuffled). Each dp rank evaluates its block of every batch in micro-batches, like
  // training; every stage runs eval_step (stages exchange activations inside it) and the last
  // stage's tp-0 ranks contribute the losses.
  // The loss is the mean over every counted label of the val_batches batches (their total count
  // is the denominator of each micro-batch's share: a first pass counts them).
  auto validate = [&]() -> StatusOr<double> {
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
        if (Status s = feed(*val_file, rp.dp_rank * per_rank + m * val_batch, 0); !s) return s;
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
  };
  auto run_validation = [&](int64_t step) -> Status {
    if (!val_file) return Status::ok();
    if (tr) tr->set_context(step, -1);
    TraceScope span(tr, TraceTrack::Session, "validation");
    auto vl = validate();
    if (!vl) return vl.status();
    if (Status s = write_metrics({{"step", step}, {"val_loss", *vl}}); !s) return s;
    if (rank0) {
      progress.finish();  // ends an in-place progress line first
      std::cerr << "lora-run: step " << step << " val_loss " << fmt("%.6f", *vl) << "\n";
    }
    return Status::ok();
  };
  auto checkpoint = [&](int64_t step, double loss, double lr) -> Status {
    TrainerState st;
    st.step = step;
    st.data = loader.position();
    st.seed = seed;
    st.plan_fingerprint = fingerprint;
    st.extra = {{"loss", loss}, {"lr", lr}, {"tokens", step * tokens_per_step},
                {"trained_tokens", trained_before + trained_total}};
    TraceScope span(tr, TraceTrack::Session, "checkpoint save");
    return store.save(st, *comm, ex);
  };

  if (start_step == 0)
    if (Status s = run_validation(0); !s) return fail("validation before training: " + s.message());

  // The micro-batch logits for --dump-first-step: input 0 of micro_step's cross_entropy_fwd,
  // copied right after that instruction (the arena reuses its bytes later).
  std::vector<float> dump_logits;
  std::vector<int64_t> dump_logits_shape;
  Executor::InstrHook capture = [&](size_t, const KernelCall &c) {
    if (c.instr->op != "cross_entropy_fwd" || c.in.empty() || !c.in[0].present()) return;
    const Tensor &l = c.in[0];
    dump_logits.resize(static_cast<size_t>(l.numel()));
    if (l.dtype == plan::ElemType::BF16) bf16_to_f32(l.bf16(), dump_logits.data(), l.numel());  // --precision bf16
    else std::copy(l.f32(), l.f32() + l.numel(), dump_logits.begin());
    dump_logits_shape = c.in[0].shape;
  };

  // This rank's first row of micro-batch m in the global batch.
  auto micro = [&](int64_t m) { return rp.dp_rank * per_dp + m * micro_batch; };
  // The StepState of micro-batch m of step s: LoRA dropout's counters (runtime/lora_dropout.h)
  // are the run's seed, the step and the global index of the micro-batch's first sequence.
  auto micro_state_of = [&](int64_t s, int64_t m) {
    StepState st;
    st.step = s;
    st.seed = seed;
    st.first_sample = micro(m);
    return st;
  };
  // Time split of this rank's training steps (executor compute / comm + comm->flush, the rest
  // idle/other), step times (MFU), GPU memory and utilization.
  RunStats stats;
  // --nonfinite skip passes over at most this many non-finite steps in a row (a persistent NaN is
  // not transient).
  constexpr int kMaxConsecutiveSkips = 3;
  int consecutive_nonfinite = 0;
  int64_t last_saved = resume ? start_step : 0;  // the newest checkpoint of this run (0: none)
  // Whether the plan computes a loss at all (hand-made test plans may not): the same answer on
  // every rank, read from the plan.
  bool plan_has_loss = false;
  for (const plan::RankPlan &r : plan.ranks)
    for (const plan::Buffer &b : r.buffers) plan_has_loss |= b.kind == plan::BufferKind::Output && b.name == "loss";
  // Several ranks: a watch that names a peer lost to kill -9 when the launcher ends the job.
  std::unique_ptr<PeerWatch> watch;
  if (multi) {
    auto pw = PeerWatch::start(*comm, StopSignals::flag());
    if (!pw) return fail(pw.message());
    watch = std::move(*pw);
  }
  for (int64_t s = start_step + 1; s <= a.steps; ++s) {
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
    if (!pipelined) {
      for (int64_t m = 0; m < plan.micro_batches; ++m) {
        if (Status st = feed(loader, micro(m), 0); !st) return fail(st.message());
        bool dump = s == 1 && m == 0 && !a.dump_first_step.empty() && !multi;
        StepState micro_state = micro_state_of(s, m);  // the last micro-batch starts the gradient buckets
        micro_state.last_micro = m == plan.micro_batches - 1;
        if (tr) tr->set_context(s, static_cast<int>(m));
        Status st = dump ? ex.run("micro_step", &micro_state, capture) : ex.run("micro_step", &micro_state);
        if (!st) return fail("step " + std::to_string(s) + ", micro_step " + std::to_string(m) + ": " + st.message());
        if (loss_rank) loss_sum += ex.loss();
        if (dump) {
          if (Status d = dump_first_step(a.dump_first_step, ex, ex.loss(), dump_logits, dump_logits_shape); !d)
            return fail("--dump-first-step: " + d.message());
          std::cout << "  first micro-step dumped to " << a.dump_first_step << "\n";
        }
      }
    } else {
      for (size_t ti = 0; ti < tasks.size(); ++ti) {
        const PipelineTask &t = tasks[ti];
        if (tr) tr->set_context(s, static_cast<int>(t.micro_batch));
        if (t.phase == Phase::Forward) {
          if (Status st = feed(loader, micro(t.micro_batch), t.slot); !st) return fail(st.message());
          StepState fwd_state = micro_state_of(s, t.micro_batch);
          if (Status st = ex.run(pipeline_program(Phase::Forward, t.chunk), &fwd_state, t.slot); !st)
            return fail("step " + std::to_string(s) + ", forward of micro-batch " + std::to_string(t.micro_batch) + ": " +
                        st.message());
          if (loss_rank && t.chunk == plan.virtual_stages - 1) loss_sum += ex.loss(t.slot);  // the model's last chunk
        } else {
          StepState micro_state = micro_state_of(s, t.micro_batch);  // the last backward starts the buckets
          micro_state.last_micro = ti == last_backward || ti == last_weight;
          const std::string prog = pipeline_program(t.phase, t.chunk);
          if (Status st = ex.run(prog, &micro_state, t.slot); !st)
            return fail("step " + std::to_string(s) + ", " + prog + " of micro-batch " + std::to_string(t.micro_batch) +
                        ": " + st.message());
        }
      }
    }
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
    const int64_t trained_now = state.grad_norm_finite ? loader.label_count() : 0;
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
    if (Status st = write_metrics(rec); !st) return fail(st.message());
    if (rank0) {
      progress.update(s, stats.last_loss, tps, state.lr);
    }
    // Non-finite training (nonfinite.h): stop by default; "skip" only while every weight is finite.
    const bool loss_finite = !plan_has_loss || std::isfinite(stats.last_loss);
    if (!loss_finite || !state.grad_norm_finite || !weights_finite) {
      if (rank0) progress.finish();
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
      } else {
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
    } else {
      consecutive_nonfinite = 0;
    }
    if (val_file && ((a.val_every > 0 && s % a.val_every == 0) || s == a.steps))
      if (Status st = run_validation(s); !st) return fail("validation at step " + std::to_string(s) + ": " + st.message());
    const bool saved_now = a.save_every > 0 && s % a.save_every == 0 && s != a.steps;
    if (saved_now) {
      if (Status st = checkpoint(s, stats.last_loss, state.lr); !st)
        return fail("checkpoint at step " + std::to_string(s) + ": " + st.message());
      last_saved = s;
    }
    if (watch && (stop_requested || s == a.steps)) watch->quiet();  // peers may exit from here on
    if (stop_requested && s != a.steps) {
      // Every rank saw the same flag in the same all-reduce: all stop after step s.
      if (rank0) progress.finish();
      if (!saved_now)
        if (Status st = checkpoint(s, stats.last_loss, state.lr); !st)
          return fail("checkpoint at step " + std::to_string(s) + ": " + st.message());
      if (Status st = export_adapter(a.out + "/adapter", plan, *comm, ex, base_model); !st) return fail(st.message());
      const int sig = StopSignals::pending();
      outcome->same_on_every_rank = true;
      outcome->exit_code = 128 + (sig != 0 ? sig : SIGTERM);
      return fail("stopped by " + std::string(StopSignals::name(sig)) + " after step " + std::to_string(s) + " of " +
                  std::to_string(a.steps) + ": saved " + a.out + "/checkpoint-" + std::to_string(s) + " and " + a.out +
                  "/adapter; continue with: lora-run " + a.plan + " --data " + a.data + " --steps " +
                  std::to_string(a.steps) + " --out " + a.out + " --resume " + a.out);
    }
  }
  if (rank0) progress.finish();

  // Final adapter (full tensors, assembled on rank 0), checkpoint and summary.
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
