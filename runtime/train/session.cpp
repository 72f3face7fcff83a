//===- session.cpp - a training session ------------------------------------===//
//
// run_session as named steps (session_run.h): setup, load and the outputs here; the step loop
// and the end of the run in session_step.cpp.
//
//===----------------------------------------------------------------------===//
#include "runtime/train/session.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/cpu/blas_core.h"
#include "runtime/cpu/kernels.h"
#include "runtime/plan/plan_io.h"
#include "runtime/train/adapter_export.h"
#include "runtime/train/session_run.h"

namespace parallora::rt {

std::string omp_wait_policy() {
  const char *p = std::getenv("OMP_WAIT_POLICY");
  return p ? p : "default";
}

Status run_session(const SessionOptions &a, World &w, SessionOutcome *outcome) {
  SessionRun run(a, w, outcome);
  if (Status s = run.setup(); !s) return s;
  if (Status s = run.load(); !s) return s;
  if (Status s = run.open_outputs(); !s) return s;
  if (Status s = run.train(); !s) return s;
  return run.finish();
}

void SessionRun::warn(const std::string &message) const {
  if (rank0) std::cerr << "lora-run: warning: " << message << "\n";
}

Status SessionRun::feed(const BatchSource &src, int64_t first, int slot) {
  return src.feed(*executor, first, micro_batch, slot);
}

StatusOr<double> SessionRun::world_sum(double local) {
  if (Status s = control_sum(*comm, &local, 1); !s) return s;
  return local;
}

int64_t SessionRun::micro(int64_t m) const { return rank_plan->dp_rank * per_dp + m * micro_batch; }

// LoRA dropout's counters (runtime/lora_dropout.h) are the run's seed, the step and the global
// index of the micro-batch's first sequence.
StepState SessionRun::micro_state_of(int64_t s, int64_t m) const {
  StepState st;
  st.step = s;
  st.seed = seed;
  st.first_sample = micro(m);
  return st;
}

// The plan; the world; kernels, communicator and executor; the trace recorder; GPU metrics.
Status SessionRun::setup() {
  t_start = std::chrono::steady_clock::now();
  auto plan_or = plan::read_plan(a.plan);
  if (!plan_or) return fail(plan_or.message());
  plan = std::move(*plan_or);
  const plan::Mesh &mesh = plan.mesh;
  fingerprint = plan::plan_fingerprint(plan);

  // MPI: when a launcher started us, or the plan needs several ranks.
  w = init_world(plan.world_size > 1, a.comm_timeout);
  stop_signals.emplace();  // after MPI_Init, so the handlers are ours
  multi = plan.world_size > 1;
  if (w.size != plan.world_size) {
    outcome->same_on_every_rank = true;  // every rank finds it: no abort, rank 0 reports
    return Status::error(a.plan + " was compiled for " + std::to_string(plan.world_size) + " rank" +
                         (plan.world_size == 1 ? "" : "s") + " (dp " + std::to_string(mesh.dp) + " x tp " +
                         std::to_string(mesh.tp) + " x pp " + std::to_string(mesh.pp) + ") but " + std::to_string(w.size) +
                         " were started; launch with: " +
                         (plan.world_size > 1 ? "mpirun -np " + std::to_string(plan.world_size) + " " : std::string()) +
                         "lora-run " + a.plan + " ...");
  }
  R = w.rank;
  rank_plan = &plan.ranks[R];
  rank0 = R == 0;

  // Test hook (see --help): make one rank fail at one step.
  if (const char *e = std::getenv("PARALLORA_TEST_FAIL_RANK")) fail_rank = std::atoi(e);
  if (const char *e = std::getenv("PARALLORA_TEST_FAIL_STEP")) fail_step = std::atoll(e);

  // Resume first (load()): the checkpoint's seed fixes the data order.
  seed = a.seed;
  start_step = 0;

  // Threads, kernels, communicator, executor.
  threads = a.threads;
  if (threads < 0) {
    const char *env = std::getenv("OMP_NUM_THREADS");
    threads = env ? std::max(0, std::atoi(env)) : 0;
  }
  cpu::set_num_threads(threads);
  if (a.backend == "cpu")
    if (std::string err = cpu::set_gemm_library(a.cpu_gemm); !err.empty())
      return fail(a.cpu_gemm == "auto" ? err : "--cpu-gemm " + a.cpu_gemm + ": " + err);
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
  executor = std::move(*ex_or);
  Executor &ex = *executor;
  ex.enable_profile(a.profile);
  // --trace: every instruction and the session's spans (runtime/core/trace.h), merged at the end.
  // On the cuda backend the compute kernels are timed by CUDA events (runtime/cuda/device_timer.h).
  if (!a.trace.empty()) {
    trace = std::make_unique<TraceRecorder>(static_cast<size_t>(a.trace_max_events));
    if (trace->capacity() == 0)
      return fail("--trace-max-events " + std::to_string(a.trace_max_events) + ": cannot allocate " +
                  fmt("%.0f", a.trace_max_events * 64.0 / 1048576) + " MiB for the events (64 bytes each)");
    if (gpu) device_timer = gpu->make_device_timer();
    ex.set_trace(trace.get(), device_timer.get());
  }
  tr = trace.get();

  // GPU metrics (cuda backend): NVML utilization of this rank's device (sampled by a background
  // thread during steps) and the device name for the default --peak-tflops.
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
  peak_tflops = a.peak_tflops >= 0 ? a.peak_tflops : dense_bf16_peak_tflops(gpu_name);
  return Status::ok();
}

// The resume point; training and validation data; the batch geometry and this stage's pipeline
// schedule; base weights and adapters.
Status SessionRun::load() {
  Executor &ex = *executor;
  const plan::Mesh &mesh = plan.mesh;
  const plan::RankPlan &rp = *rank_plan;

  // Checkpoints go to --out; the adapters record the base model they were trained on.
  weights = a.weights.empty() ? plan.base_weights : a.weights;
  base_model = weights;
  store.emplace(a.out, plan, fingerprint, base_model, static_cast<int>(a.keep_last));
  if (!a.resume.empty()) {
    auto c = store->load(a.resume, ex, R, a.plan);  // refuses a checkpoint of another training
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
  train_data = std::move(*train_or);
  BatchSource &loader = *train_data;
  if (!a.val_data.empty()) {
    auto v = BatchSource::open({"--val-data", a.val_data, a.data_format, a.data_layout, 0, false}, plan);
    if (!v) return fail(v.message());
    val_file = std::move(*v);
  }

  // Batch geometry: global batch B; dp rank d takes sequences [d*B/dp, (d+1)*B/dp), split into
  // micro_batches micro-batches of `micro_batch` sequences (the Input buffers' size).
  dp = mesh.dp;
  per_dp = plan.global_batch / dp;
  micro_batch = per_dp / plan.micro_batches;
  const BufferTensor *ids_buf = ex.find("input_ids");
  const BufferTensor *labels_buf = ex.find("labels");
  const bool has_ids = ids_buf && ids_buf->buffer->kind == plan::BufferKind::Input;
  const bool has_labels = labels_buf && labels_buf->buffer->kind == plan::BufferKind::Input;
  if (!has_ids && !multi) return fail(a.plan + ": the plan has no input 'input_ids'");
  ids_numel = has_ids ? ids_buf->buffer->numel() : has_labels ? labels_buf->buffer->numel() : micro_batch * plan.seq_len;
  if (micro_batch < 1 || micro_batch * plan.micro_batches * dp != plan.global_batch ||
      ids_numel != micro_batch * plan.seq_len)
    return fail(a.plan + ": input 'input_ids' holds " + std::to_string(ids_numel) + " tokens but global batch " +
                std::to_string(plan.global_batch) + (dp > 1 ? " / " + std::to_string(dp) + " data-parallel ranks" : "") +
                " / " + std::to_string(plan.micro_batches) + " micro-batches x seq_len " + std::to_string(plan.seq_len) +
                " needs " + std::to_string(micro_batch * plan.seq_len));
  if (loader.rows() < micro_batch)
    return fail("--data " + a.data + ": " + loader.describe() + ", fewer rows of " + std::to_string(plan.seq_len) +
                " than one micro-batch of " + std::to_string(micro_batch));

  // Pipeline schedule of this stage.
  pipelined = mesh.pp > 1;
  last_stage = rp.pp_stage == mesh.pp - 1;
  loss_rank = last_stage && rp.tp_rank == 0;  // contributes to the logged losses
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
  last_backward = tasks.size();
  last_weight = tasks.size();
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    if (tasks[ti].phase == Phase::Backward) last_backward = ti;
    if (tasks[ti].phase == Phase::Weight) last_weight = ti;
  }

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
  return Status::ok();
}

// The output directory, metrics and the run's header lines.
Status SessionRun::open_outputs() {
  Executor &ex = *executor;
  const plan::Mesh &mesh = plan.mesh;
  const BatchSource &loader = *train_data;

  // Output directory and metrics (rank 0 writes them; every rank writes its checkpoint shard).
  // Rank 0 claims it (created with its parents, locked, not another run's unless resuming or
  // --overwrite, leftovers of killed saves removed: output_dir.h) before anything is written.
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
  metrics.emplace(std::move(*metrics_or));
  metrics_path = metrics->path();

  tokens_per_step = plan.global_batch * plan.seq_len;
  trained_total = 0;
  trained_before = resume ? resume->state.extra.value("trained_tokens", int64_t(0)) : 0;  // 0 for older checkpoints
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
  return Status::ok();
}

} // namespace parallora::rt
