//===- lora-run.cpp - train LoRA adapters by executing a compiled plan ----===//
//
//   lora-run plan.lp --data tokens.bin --steps N --out dir/ [options]   train
//   mpirun -np N lora-run plan.lp ...                                    train a plan of N ranks
//   lora-run --describe plan.lp [--verbose]                              inspect a plan
//
// Multi-rank plans (world_size > 1, one MPI process per rank): every rank loads its RankPlan,
// reads the same data in the same seeded order and takes its data-parallel share of each
// global batch; pipelined plans (pp > 1) run forward/backward per the plan's schedule
// (runtime/plan/schedule.h). Rank 0 logs, writes metrics/summary and the full adapter (the
// slices gathered from the other ranks). A rank that fails prints "rank R: error: ..." and
// calls MPI_Abort, so no rank is left waiting.
//
// Exit codes: 0 success, 1 a runtime error (missing or bad file, kernel error), 2 a command
// line error. Every error names the file or flag involved.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <cstring>
#include <sys/resource.h>
#include <sys/stat.h>
#include <vector>

#include <filesystem>
#include <set>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <mpi.h>
#include <nlohmann/json.hpp>

#include "runtime/base/safetensors.h"
#include "runtime/comm/comm.h"
#include "runtime/base/bf16.h"
#include "runtime/core/executor.h"
#include "runtime/plan/schedule.h"
#include "runtime/core/tensor_slice.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cuda/plugin.h"
#include "runtime/io/checkpoint.h"
#include "runtime/base/fs_util.h"
#include "runtime/io/gpu_metrics.h"
#include "runtime/io/metrics.h"
#include "runtime/io/peft_adapter.h"
#include "runtime/io/token_data.h"
#include "runtime/plan/plan_io.h"

using namespace parallora;
using namespace parallora::rt;
using json = nlohmann::json;

namespace {

/// The CPU kernels mix OpenMP loops (libgomp) with OpenBLAS's own thread pool; with libgomp's
/// default ACTIVE wait policy its idle threads spin and steal the cores the GEMMs need (measured
/// 2.2x slower steps on 2 cores, docs/benchmarks.md). libgomp reads OMP_WAIT_POLICY when it is
/// loaded, before main, so when the user has not chosen one lora-run sets PASSIVE and re-executes
/// itself once (same pid, before MPI_Init; mpirun's environment is kept). If the exec fails the
/// run goes on with the default policy.
std::string omp_wait_policy() {
  const char *p = std::getenv("OMP_WAIT_POLICY");
  return p ? p : "default";
}

void passive_omp_wait_policy(char **argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
}


struct Args {
  std::string plan;
  bool describe = false, verbose = false;
  std::string data, data_format = "auto", val_data;
  int64_t val_every = 0, val_batches = 0;
  int64_t steps = 0;
  uint64_t seed = 42;
  bool shuffle = true;
  std::string out, weights, init_adapter, resume;
  int64_t save_every = 0, keep_last = 0;
  int threads = -1;
  std::string backend = "cpu";
  std::string collectives = "mpi";
  bool cuda_graphs = false;
  int64_t log_every = 10;
  bool profile = false;
  std::string dump_first_step;
  double comm_timeout = 300;
  double peak_tflops = -1;  // < 0: by GPU name (cuda), 0 on the cpu backend
};

/// An integer flag value >= lo, with a readable message ("--steps: must be >= 1 (got 0)").
CLI::Validator at_least(int64_t lo) {
  return CLI::Validator(
      [lo](std::string &text) -> std::string {
        try {
          size_t used = 0;
          long long v = std::stoll(text, &used);
          if (used != text.size()) return "not an integer: " + text;
          if (v < lo) return "must be >= " + std::to_string(lo) + " (got " + text + ")";
        } catch (const std::exception &) {
          return "not an integer: " + text;
        }
        return "";
      },
      ">=" + std::to_string(lo));
}

/// A runtime failure: printed as "error: <message>", exit code 1.
int fail(const std::string &message) {
  std::cerr << "error: " << message << "\n";
  return 1;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Median of `v` (0 when empty).
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double peak_rss_mib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

bool is_dir(const std::string &p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string shape_str(const std::vector<int64_t> &shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s.empty() ? "scalar" : s;
}

std::string fmt(const char *f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

/// Trainables (or OptStates) as the io library's borrowed tensors.
std::vector<NamedTensor> named_tensors(const Executor &ex, plan::BufferKind kind) {
  std::vector<NamedTensor> out;
  for (const BufferTensor &t : ex.buffers(kind)) out.push_back({t.buffer->name, t.buffer->shape, t.tensor.f32()});
  return out;
}

/// Keeps the lines of an existing metrics file up to (and including) `step`, so a resumed run
/// appends without duplicating the steps the checkpoint rolled back.
void truncate_metrics(const std::string &path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step) continue;
    kept += line + "\n";
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

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

int describe(const Args &a) {
  auto plan = plan::read_plan(a.plan);
  if (!plan) return fail(plan.message());
  std::cout << plan::describe_plan(*plan, a.verbose);
  return 0;
}

// ------------------------------------------------------------------ multi-rank helpers

/// This process's place in the world. `mpi`: MPI_Init was called.
struct World {
  bool mpi = false;
  int rank = 0;
  int size = 1;
};

bool launched_by_mpi_launcher() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}


/// One piece of a full trainable: the rank that sends it and its slice (empty = whole).
struct Piece {
  int rank = 0;
  const plan::Buffer *buffer = nullptr;
};
struct FullTrainable {
  std::string name;
  std::vector<int64_t> shape;  // the whole tensor
  std::vector<Piece> pieces;   // distinct slices, lowest holding rank with dp_rank == 0 each
};

/// Every trainable of the plan (sorted by name) and where its pieces live. Deterministic: every
/// rank computes the same list from the plan.
std::vector<FullTrainable> full_trainables(const plan::Plan &plan) {
  std::map<std::string, FullTrainable> by_name;
  std::map<std::string, std::set<std::vector<std::pair<int64_t, int64_t>>>> seen;
  for (const plan::RankPlan &r : plan.ranks) {
    if (r.dp_rank != 0) continue;
    for (const plan::Buffer &b : r.buffers) {
      if (b.kind != plan::BufferKind::Trainable) continue;
      FullTrainable &t = by_name[b.name];
      t.name = b.name;
      if (t.shape.empty()) t.shape = b.full_shape.empty() ? b.shape : b.full_shape;
      if (!seen[b.name].insert(b.slice).second) continue;  // an identical copy came first
      t.pieces.push_back({r.rank, &b});
    }
  }
  std::vector<FullTrainable> out;
  for (auto &kv : by_name) out.push_back(std::move(kv.second));
  return out;
}

/// The full (unsharded) trainables, assembled on rank 0 from the ranks holding their slices by
/// MPI point-to-point (collective over the world: every rank must call it). On rank 0 `out`
/// receives name -> (shape, data); elsewhere it stays empty.
Status gather_full_trainables(const plan::Plan &plan, const World &w, const Executor &ex,
                              std::vector<std::pair<FullTrainable, std::vector<float>>> *out) {
  std::vector<FullTrainable> all = full_trainables(plan);
  int tag = 0;
  std::vector<float> tmp;
  for (FullTrainable &t : all) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::vector<float> full;
    if (w.rank == 0) full.assign(static_cast<size_t>(n), 0.f);
    for (const Piece &p : t.pieces) {
      ++tag;
      const plan::Buffer &b = *p.buffer;
      if (p.rank == w.rank && w.rank == 0) {
        const BufferTensor *bt = ex.find(b.name);
        if (!bt) return Status::error("trainable " + b.name + " missing on rank 0");
        if (b.slice.empty()) std::memcpy(full.data(), bt->tensor.f32(), sizeof(float) * b.numel());
        else paste_slice(bt->tensor.f32(), t.shape, b.slice, full.data());
      } else if (p.rank == w.rank) {
        const BufferTensor *bt = ex.find(b.name);
        if (!bt) return Status::error("trainable " + b.name + " missing on rank " + std::to_string(w.rank));
        MPI_Send(bt->tensor.f32(), static_cast<int>(b.numel()), MPI_FLOAT, 0, tag % 30000, MPI_COMM_WORLD);
      } else if (w.rank == 0) {
        tmp.resize(static_cast<size_t>(b.numel()));
        MPI_Recv(tmp.data(), static_cast<int>(b.numel()), MPI_FLOAT, p.rank, tag % 30000, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
        if (b.slice.empty()) std::memcpy(full.data(), tmp.data(), sizeof(float) * b.numel());
        else paste_slice(tmp.data(), t.shape, b.slice, full.data());
      }
    }
    if (w.rank == 0) out->emplace_back(std::move(t), std::move(full));
  }
  return Status::ok();
}

std::vector<NamedTensor> as_named(const std::vector<std::pair<FullTrainable, std::vector<float>>> &full) {
  std::vector<NamedTensor> out;
  for (auto &[t, data] : full) out.push_back({t.name, t.shape, data.data()});
  return out;
}

// ---- multi-rank checkpoints: <out>/checkpoint-N/{rank-R.safetensors, trainer_state.json,
// ---- adapter_model.safetensors, adapter_config.json}, committed by rank 0 (tmp dir + rename).

int64_t checkpoint_dir_step(const std::string &name) {
  const std::string prefix = "checkpoint-";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || name.size() > prefix.size() + 18) return -1;
  int64_t v = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

std::string rank_file(int rank) { return "rank-" + std::to_string(rank) + ".safetensors"; }

struct RankCheckpoint {
  TrainerState state;
  std::map<std::string, std::vector<float>> trainables, optimizer_state;
  std::string path;
  int world_size = 0;
};

/// `path`: a checkpoint-N directory or an out dir (its `latest`, else the newest complete one).
StatusOr<RankCheckpoint> load_rank_checkpoint(const std::string &path_in, const Executor &ex, int rank) {
  namespace fs = std::filesystem;
  std::string dir = fsutil::strip_trailing_slashes(path_in);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status::error("checkpoint " + dir + " is not a directory");
  if (!fs::exists(dir + "/trainer_state.json", ec)) {
    std::string latest;
    if (fs::exists(dir + "/latest", ec)) {
      if (Status s = fsutil::read_file(dir + "/latest", &latest); !s) return s;
      while (!latest.empty() && (latest.back() == '\n' || latest.back() == '\r' || latest.back() == ' ')) latest.pop_back();
    } else {
      int64_t best = -1;
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::string name = it->path().filename().string();
        int64_t st = checkpoint_dir_step(name);
        std::error_code e2;
        if (st > best && fs::is_regular_file(it->path() / "trainer_state.json", e2)) {
          best = st;
          latest = name;
        }
      }
    }
    if (latest.empty() || latest.find('/') != std::string::npos || !fs::exists(dir + "/" + latest + "/trainer_state.json", ec))
      return Status::error(dir + " holds no complete checkpoint (neither trainer_state.json nor a valid `latest`)");
    dir += "/" + latest;
  }
  RankCheckpoint ck;
  ck.path = dir;
  std::string text;
  if (Status s = fsutil::read_file(dir + "/trainer_state.json", &text); !s) return s;
  json js = json::parse(text, nullptr, false);
  if (!js.is_object() || js.value("format", std::string()) != "parallora-trainer-state" ||
      !js.contains("global_step") || !js["global_step"].is_number_integer() || !js.contains("seed") ||
      !js["seed"].is_number_integer() || !js.contains("data_position") || !js["data_position"].is_object())
    return Status::error(dir + "/trainer_state.json: not a parallora trainer state");
  ck.state.step = js["global_step"].get<int64_t>();
  ck.state.seed = js["seed"].get<uint64_t>();
  ck.state.data.epoch = js["data_position"].value("epoch", uint64_t{0});
  ck.state.data.index = js["data_position"].value("index", uint64_t{0});
  ck.state.plan_fingerprint = js.value("plan_fingerprint", std::string());
  ck.world_size = js.value("world_size", 1);
  const std::string file = dir + "/" + rank_file(rank);
  if (!fs::exists(file, ec))
    return Status::error(dir + " has no " + rank_file(rank) + " (it was written by a run of " +
                         std::to_string(ck.world_size) + " rank" + (ck.world_size == 1 ? "" : "s") + ")");
  auto st = SafetensorsFile::open(file);
  if (!st) return st.status();
  std::set<std::string> opt_names;
  for (const BufferTensor &t : ex.buffers(plan::BufferKind::OptState)) opt_names.insert(t.buffer->name);
  for (const TensorView &t : (*st)->tensors()) {
    std::vector<float> data(static_cast<size_t>(t.numel()));
    if (Status s = to_f32(t, data.data()); !s) return Status::error(file + ": " + s.message());
    (opt_names.count(t.name) ? ck.optimizer_state : ck.trainables)[t.name] = std::move(data);
  }
  return ck;
}

void prune_rank_checkpoints(const std::string &out, int keep_last, const std::string &keep) {
  namespace fs = std::filesystem;
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    int64_t st = checkpoint_dir_step(name);
    if (st >= 0 && it->is_directory(ec)) found.emplace_back(st, name);
  }
  std::sort(found.begin(), found.end());
  if (static_cast<int64_t>(found.size()) <= keep_last) return;
  for (size_t i = 0; i + keep_last < found.size(); ++i)
    if (found[i].second != keep) fsutil::remove_all_quiet(out + "/" + found[i].second);
}

// ------------------------------------------------------------------ training

int train(const Args &a, World &w) {
  auto t_start = std::chrono::steady_clock::now();
  auto plan_or = plan::read_plan(a.plan);
  if (!plan_or) return fail(plan_or.message());
  const plan::Plan &plan = *plan_or;
  const plan::Mesh &mesh = plan.mesh;
  const std::string fingerprint = plan::plan_fingerprint(plan);

  // MPI: when a launcher started us, or the plan needs several ranks.
  if (launched_by_mpi_launcher() || plan.world_size > 1) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    w.mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  }
  const bool multi = plan.world_size > 1;
  if (w.size != plan.world_size) {
    if (w.rank == 0)
      std::cerr << "error: " << a.plan << " was compiled for " << plan.world_size << " rank"
                << (plan.world_size == 1 ? "" : "s") << " (dp " << mesh.dp << " x tp " << mesh.tp << " x pp " << mesh.pp
                << ") but " << w.size << " were started; launch with: "
                << (plan.world_size > 1 ? "mpirun -np " + std::to_string(plan.world_size) + " " : std::string())
                << "lora-run " << a.plan << " ...\n";
    return 1;
  }
  const int R = w.rank;
  const plan::RankPlan &rp = plan.ranks[R];
  const bool rank0 = R == 0;
  // After startup a failing rank must take the others down (they would wait on it otherwise).
  auto fail = [&](const std::string &message) -> int {
    if (!multi) return ::fail(message);
    // One write, so mpirun forwards the line whole (not interleaved with other ranks' output).
    std::fflush(stdout);
    const std::string line = "rank " + std::to_string(R) + ": error: " + message + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  };
  auto warn = [&](const std::string &message) {
    if (rank0) std::cerr << "lora-run: warning: " << message << "\n";
  };
  auto barrier = [&] {
    if (multi) MPI_Barrier(MPI_COMM_WORLD);
  };

  // Test hook (see --help): make one rank fail at one step.
  int fail_rank = -1;
  int64_t fail_step = -1;
  if (const char *e = std::getenv("PARALLORA_TEST_FAIL_RANK")) fail_rank = std::atoi(e);
  if (const char *e = std::getenv("PARALLORA_TEST_FAIL_STEP")) fail_step = std::atoll(e);

  // Resume first: the checkpoint's seed fixes the data order.
  std::optional<LoadedCheckpoint> ckpt;
  std::optional<RankCheckpoint> rckpt;
  uint64_t seed = a.seed;
  int64_t start_step = 0;

  // Threads, kernels, communicator, executor.
  int threads = a.threads;
  if (threads < 0) {
    const char *env = std::getenv("OMP_NUM_THREADS");
    threads = env ? std::max(0, std::atoi(env)) : 0;
  }
  cpu::set_num_threads(threads);
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

  if (!a.resume.empty()) {
    if (!multi) {
      auto c = load_checkpoint(a.resume);
      if (!c) return fail("--resume " + a.resume + ": " + c.message());
      ckpt = std::move(*c);
    } else {
      auto c = load_rank_checkpoint(a.resume, ex, R);
      if (!c) return fail("--resume " + a.resume + ": " + c.message());
      rckpt = std::move(*c);
    }
    const TrainerState &st = ckpt ? ckpt->state : rckpt->state;
    const std::string &cpath = ckpt ? ckpt->path : rckpt->path;
    if (st.plan_fingerprint != fingerprint)
      return fail("--resume " + cpath + ": the checkpoint was written for plan " + st.plan_fingerprint + ", but " +
                  a.plan + " has fingerprint " + fingerprint +
                  " (resume with the plan that wrote the checkpoint, or start a new run with --init-adapter " + cpath +
                  ")");
    if (seed != st.seed)
      warn("using the checkpoint's seed " + std::to_string(st.seed) + " (not --seed " + std::to_string(seed) +
           ") so the data order continues unchanged");
    seed = st.seed;
    start_step = st.step;
  }

  // Data: every rank reads the same file in the same seeded order.
  auto train_file = TokenFile::open(a.data, a.data_format);
  if (!train_file) return fail("--data " + a.data + ": " + train_file.message());
  SequenceLoader loader(&*train_file, plan.seq_len, seed, a.shuffle);
  if (plan.vocab_size > 0)
    if (Status s = loader.check_vocab(plan.vocab_size); !s) return fail("--data: " + s.message());
  std::optional<TokenFile> val_file;
  if (!a.val_data.empty()) {
    auto v = TokenFile::open(a.val_data, a.data_format);
    if (!v) return fail("--val-data " + a.val_data + ": " + v.message());
    val_file = std::move(*v);
    SequenceLoader check(&*val_file, plan.seq_len, 0, false);
    if (plan.vocab_size > 0)
      if (Status s = check.check_vocab(plan.vocab_size); !s) return fail("--val-data: " + s.message());
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
  if (loader.num_sequences() < micro_batch)
    return fail("--data " + a.data + ": " + std::to_string(train_file->num_tokens()) + " tokens make " +
                std::to_string(loader.num_sequences()) + " sequences of " + std::to_string(plan.seq_len) +
                ", fewer than one micro-batch of " + std::to_string(micro_batch));
  auto feed = [&](const int32_t *block, int slot) -> Status {
    if (has_ids)
      if (Status s = ex.feed("input_ids", block, ids_numel, slot); !s) return s;
    if (has_labels) return ex.feed("labels", block, ids_numel, slot);
    return Status::ok();
  };

  // Pipeline schedule of this stage.
  const bool pipelined = mesh.pp > 1;
  const bool last_stage = rp.pp_stage == mesh.pp - 1;
  const bool loss_rank = last_stage && rp.tp_rank == 0;  // contributes to the logged losses
  std::vector<PipelineTask> tasks;
  if (pipelined) {
    if (Status s = check_schedule_name(plan.pipeline_schedule); !s) return fail(a.plan + ": " + s.message());
    int need = pipeline_slots(plan.pipeline_schedule, mesh.pp, rp.pp_stage, static_cast<int>(plan.micro_batches));
    if (need > ex.slots())
      return fail(a.plan + ": the " + plan.pipeline_schedule + " schedule keeps " + std::to_string(need) +
                  " micro-batches in flight on stage " + std::to_string(rp.pp_stage) + " but the rank has " +
                  std::to_string(ex.slots()) + " slots");
    tasks = pipeline_tasks(plan.pipeline_schedule, mesh.pp, rp.pp_stage, static_cast<int>(plan.micro_batches));
  }
  size_t last_backward = tasks.size();  // index of this rank's last backward task of a step
  for (size_t ti = 0; ti < tasks.size(); ++ti)
    if (tasks[ti].phase == Phase::Backward) last_backward = ti;

  int64_t val_batch = 0, val_batches = 0;
  if (val_file) {
    if (!ex.has_program("eval_step")) return fail(a.plan + ": --val-data given but the plan has no eval_step program");
    // A validation batch is a global batch, split over dp ranks and micro-batches exactly like a
    // training batch, so every strategy evaluates the same sequences.
    val_batch = ids_numel / plan.seq_len;  // sequences per eval_step on this rank
    int64_t available = (val_file->num_tokens() / plan.seq_len) / plan.global_batch;
    if (available < 1)
      return fail("--val-data " + a.val_data + ": " + std::to_string(val_file->num_tokens()) +
                  " tokens, fewer than one evaluation batch of " + std::to_string(plan.global_batch) + " x " +
                  std::to_string(plan.seq_len));
    val_batches = a.val_batches > 0 ? std::min(a.val_batches, available) : available;
    if (a.val_batches > available)
      warn("--val-batches " + std::to_string(a.val_batches) + " but " + a.val_data + " holds only " +
           std::to_string(available) + " batches; using " + std::to_string(available));
  }

  // Parameters: base weights, then the adapters (init spec, --init-adapter or the checkpoint).
  const std::string weights = a.weights.empty() ? plan.base_weights : a.weights;
  const bool adapters_given = !a.init_adapter.empty() || ckpt.has_value() || rckpt.has_value();
  if (Status s = ex.init_parameters(weights, seed, /*skip_trainables=*/adapters_given); !s) {
    std::string hint = (a.weights.empty() && !plan.base_weights.empty())
                           ? " (the plan records base weights " + plan.base_weights + "; pass --weights to use another copy)"
                           : "";
    return fail(s.message() + hint);
  }
  const std::string base_model = weights;
  if (!a.init_adapter.empty()) {
    plan::LoraInfo info;
    auto adapter = read_peft_adapter_with_shapes(a.init_adapter, &info);
    if (!adapter) return fail("--init-adapter " + a.init_adapter + ": " + adapter.message());
    std::map<std::string, std::vector<float>> values;
    std::map<std::string, std::vector<int64_t>> shapes;
    if (!multi) {
      for (auto &[name, t] : *adapter) {
        shapes[name] = t.shape;
        values[name] = std::move(t.data);
      }
    } else {
      // Every rank reads the whole adapter and keeps its trainables (their slices).
      std::set<std::string> plan_names;
      for (const FullTrainable &t : full_trainables(plan)) plan_names.insert(t.name);
      std::vector<std::string> unexpected;
      for (auto &kv : *adapter)
        if (!plan_names.count(kv.first)) unexpected.push_back(kv.first);
      if (!unexpected.empty()) {
        std::string list;
        for (size_t i = 0; i < unexpected.size() && i < 8; ++i) list += (i ? ", " : "") + unexpected[i];
        return fail("--init-adapter " + a.init_adapter + ": adapter tensors do not match the plan: not in the plan " + list);
      }
      for (const BufferTensor &t : ex.buffers(plan::BufferKind::Trainable)) {
        const plan::Buffer &b = *t.buffer;
        auto it = adapter->find(b.name);
        if (it == adapter->end()) continue;  // reported by set_trainables
        if (b.slice.empty()) {
          shapes[b.name] = it->second.shape;
          values[b.name] = it->second.data;
          continue;
        }
        std::vector<int64_t> want = b.full_shape;
        bool fits = it->second.shape.size() == b.slice.size();
        for (size_t d = 0; fits && d < b.slice.size(); ++d)
          fits = b.slice[d].first + b.slice[d].second <= it->second.shape[d] && (want.empty() || want[d] == it->second.shape[d]);
        if (!fits)
          return fail("--init-adapter " + a.init_adapter + ": tensor " + b.name + " is " + shape_str(it->second.shape) +
                      ", the plan needs " + shape_str(want.empty() ? b.shape : want));
        std::vector<float> part(static_cast<size_t>(b.numel()));
        take_slice(it->second.data.data(), it->second.shape, b.slice, part.data());
        values[b.name] = std::move(part);
        shapes[b.name] = b.shape;
      }
    }
    if (Status s = ex.set_trainables(values, &shapes); !s) return fail("--init-adapter " + a.init_adapter + ": " + s.message());
    if (info.rank != plan.lora.rank || info.alpha != plan.lora.alpha)
      warn("--init-adapter " + a.init_adapter + " was saved with r=" + std::to_string(info.rank) +
           ", lora_alpha=" + fmt("%g", info.alpha) + " but the plan uses r=" + std::to_string(plan.lora.rank) +
           ", lora_alpha=" + fmt("%g", plan.lora.alpha) + " (the plan's scaling applies)");
  }
  if (ckpt) {
    if (Status s = ex.set_trainables(ckpt->adapters); !s) return fail("--resume " + ckpt->path + ": " + s.message());
    if (Status s = ex.set_optimizer_state(ckpt->optimizer_state); !s)
      return fail("--resume " + ckpt->path + ": " + s.message());
    loader.restore(ckpt->state.data);
  }
  if (rckpt) {
    if (Status s = ex.set_trainables(rckpt->trainables); !s) return fail("--resume " + rckpt->path + ": " + s.message());
    if (Status s = ex.set_optimizer_state(rckpt->optimizer_state); !s)
      return fail("--resume " + rckpt->path + ": " + s.message());
    loader.restore(rckpt->state.data);
  }

  // Output directory and metrics (rank 0 writes them; every rank writes its checkpoint shard).
  if (rank0) {
    if (mkdir(a.out.c_str(), 0755) != 0 && errno != EEXIST) return fail("--out " + a.out + ": " + std::strerror(errno));
    if (!is_dir(a.out)) return fail("--out " + a.out + " is not a directory");
  }
  barrier();
  const std::string metrics_path = a.out + "/metrics.jsonl";
  std::optional<JsonlWriter> metrics_w;
  const bool resumed = ckpt.has_value() || rckpt.has_value();
  if (rank0) {
    if (resumed) truncate_metrics(metrics_path, start_step);
    auto metrics_or = JsonlWriter::open(metrics_path, /*append=*/resumed);
    if (!metrics_or) return fail(metrics_or.message());
    metrics_w.emplace(std::move(*metrics_or));
  }
  auto write_metrics = [&](json rec) -> Status {
    if (!rank0) return Status::ok();
    if (multi) rec["world_size"] = plan.world_size;
    return metrics_w->write(rec);
  };

  const int64_t tokens_per_step = plan.global_batch * plan.seq_len;
  if (rank0) {
    std::cout << "lora-run: " << a.plan << " (" << fingerprint << "), " << a.steps << " steps of " << plan.global_batch
              << " x " << plan.seq_len << " tokens (" << plan.micro_batches << " micro-batch"
              << (plan.micro_batches == 1 ? "" : "es") << (dp > 1 ? " per data-parallel rank" : "") << "), data "
              << a.data << " (" << train_file->num_tokens() << " tokens, " << loader.num_sequences() << " sequences"
              << (a.shuffle ? ", shuffled" : "") << ")\n";
    if (multi)
      std::cout << "  ranks: " << plan.world_size << " (dp " << mesh.dp << " x tp " << mesh.tp << " x pp " << mesh.pp
                << "), strategy " << plan.strategy
                << (pipelined ? ", pipeline schedule " + plan.pipeline_schedule : std::string()) << "\n";
    std::cout << "  memory" << (multi ? " (rank 0)" : "") << ": arena " << fmt("%.1f", ex.arena_bytes() / 1048576.0)
              << " MiB" << (ex.slots() > 1 ? " x " + std::to_string(ex.slots()) + " slots" : std::string())
              << ", persistent " << fmt("%.1f", ex.persistent_bytes() / 1048576.0) << " MiB; "
              << (a.backend == "cuda" ? std::string("backend cuda")
                                      : "threads " + (threads > 0 ? std::to_string(threads) : std::string("all")) +
                                            ", OpenMP wait policy " + omp_wait_policy())
              << "\n";
    if (!device_line.empty()) std::cout << "  device" << (multi ? " (rank 0)" : "") << ": " << device_line << "\n";
    if (start_step > 0) std::cout << "  resumed from " << (ckpt ? ckpt->path : rckpt->path) << " at step " << start_step << "\n";
    if (start_step >= a.steps)
      std::cout << "  the checkpoint is at step " << start_step << " >= --steps " << a.steps
                << ": nothing to train (raise --steps to continue)\n";
  }
  if (!a.dump_first_step.empty() && start_step > 0) warn("--dump-first-step ignored: resuming after step 1");
  if (!a.dump_first_step.empty() && multi) warn("--dump-first-step ignored: it applies to single-rank plans only");

  // Sums `local` (this rank's contribution, or 0) over the world: control traffic, not counted
  // in the communicator's bytes.
  auto world_sum = [&](double local) -> double {
    if (!multi) return local;
    double total = 0;
    MPI_Allreduce(&local, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return total;
  };

  ProgressBar progress(a.steps, std::max<int64_t>(1, a.log_every));
  // Mean eval_step loss over the first val_batches global batches of the validation file
  // (unshuffled). Each dp rank evaluates its block of every batch in micro-batches, like
  // training; every stage runs eval_step (stages exchange activations inside it) and the last
  // stage's tp-0 ranks contribute the losses.
  auto validate = [&]() -> StatusOr<double> {
    SequenceLoader vl(&*val_file, plan.seq_len, 0, /*shuffle=*/false);
    std::vector<int32_t> global(static_cast<size_t>(plan.global_batch * plan.seq_len));
    const int64_t per_rank = plan.global_batch / mesh.dp;
    double sum = 0;
    for (int64_t b = 0; b < val_batches; ++b) {
      if (Status s = vl.next(plan.global_batch, global.data()); !s)
        return Status::error(val_file->path + ": " + s.message());
      for (int64_t m = 0; m < plan.micro_batches; ++m) {
        const int32_t *mine = global.data() + (rp.dp_rank * per_rank + m * val_batch) * plan.seq_len;
        if (Status s = feed(mine, 0); !s) return s;
        if (Status s = ex.run("eval_step", nullptr, 0); !s) return Status::error("eval_step: " + s.message());
        if (loss_rank) sum += ex.loss(0);
      }
    }
    if (multi)
      if (Status s = comm->flush(); !s) return s;
    return world_sum(sum) / static_cast<double>(val_batches * plan.micro_batches * mesh.dp);
  };
  auto run_validation = [&](int64_t step) -> Status {
    if (!val_file) return Status::ok();
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
    st.extra = {{"loss", loss}, {"lr", lr}, {"tokens", step * tokens_per_step}};
    if (!multi) {
      std::string saved;
      return save_checkpoint(a.out, st, plan.lora, base_model, named_tensors(ex, plan::BufferKind::Trainable),
                             named_tensors(ex, plan::BufferKind::OptState), &saved, static_cast<int>(a.keep_last));
    }
    // Multi-rank: rank 0 names and creates the tmp dir; every rank writes its shard; rank 0
    // adds the full adapter and trainer_state.json (last) and commits by rename.
    const std::string out = fsutil::strip_trailing_slashes(a.out);
    const std::string name = "checkpoint-" + std::to_string(step);
    const std::string final_dir = out + "/" + name;
    long long pid = rank0 ? static_cast<long long>(::getpid()) : 0;
    MPI_Bcast(&pid, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    const std::string tmp = final_dir + ".tmp-" + std::to_string(pid);
    if (rank0) {
      fsutil::remove_all_quiet(tmp);
      if (Status s = fsutil::create_dirs(tmp); !s) return s;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    std::vector<TensorToWrite> mine;
    for (const BufferTensor &t : ex.buffers(plan::BufferKind::Trainable))
      mine.push_back({t.buffer->name, DType::F32, t.buffer->shape, t.tensor.data});
    for (const BufferTensor &t : ex.buffers(plan::BufferKind::OptState))
      mine.push_back({t.buffer->name, DType::F32, t.buffer->shape, t.tensor.data});
    if (Status s = write_safetensors(tmp + "/" + rank_file(R), mine,
                                     {{"format", "pt"}, {"rank", std::to_string(R)}, {"plan_fingerprint", fingerprint}});
        !s)
      return s;
    std::vector<std::pair<FullTrainable, std::vector<float>>> full;
    if (Status s = gather_full_trainables(plan, w, ex, &full); !s) return s;
    MPI_Barrier(MPI_COMM_WORLD);
    if (!rank0) return Status::ok();
    if (Status s = write_peft_files(tmp, plan.lora, base_model, as_named(full)); !s) return s;
    json js = {{"format", "parallora-trainer-state"},
               {"version", 1},
               {"global_step", st.step},
               {"data_position", {{"epoch", st.data.epoch}, {"index", st.data.index}}},
               {"seed", st.seed},
               {"plan_fingerprint", st.plan_fingerprint},
               {"world_size", plan.world_size},
               {"mesh", {{"dp", mesh.dp}, {"tp", mesh.tp}, {"pp", mesh.pp}}},
               {"extra", st.extra}};
    if (Status s = fsutil::write_file_atomic(tmp + "/trainer_state.json", js.dump(2) + "\n"); !s) return s;
    if (Status s = fsutil::fsync_dir(tmp); !s) return s;
    if (Status s = fsutil::replace_dir(tmp, final_dir); !s) return s;
    if (Status s = fsutil::write_file_atomic(out + "/latest", name + "\n"); !s) return s;
    if (a.keep_last > 0) prune_rank_checkpoints(out, static_cast<int>(a.keep_last), name);
    return Status::ok();
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

  std::vector<int32_t> global(static_cast<size_t>(plan.global_batch * plan.seq_len));
  const int32_t *my_block = global.data() + rp.dp_rank * per_dp * plan.seq_len;
  auto micro = [&](int64_t m) { return my_block + m * micro_batch * plan.seq_len; };
  std::vector<double> step_tps;
  std::map<std::string, int64_t> train_bytes;  // communicator bytes of the training steps only
  // Time split of this rank's training steps (executor compute / comm + comm->flush, the rest
  // idle/other), step times (MFU), GPU memory and utilization.
  double total_compute = 0, total_comm = 0, total_step_time = 0;
  std::vector<double> step_times;
  double gpu_peak_used_mib = 0, gpu_alloc_peak_mib = 0;
  int64_t steps_run = 0;
  double last_loss = std::nan(""), last_lr = 0;
  for (int64_t s = start_step + 1; s <= a.steps; ++s) {
    auto t0 = std::chrono::steady_clock::now();
    if (R == fail_rank && s == fail_step)
      return fail("step " + std::to_string(s) + ": injected failure (PARALLORA_TEST_FAIL_RANK=" + std::to_string(fail_rank) +
                  ", PARALLORA_TEST_FAIL_STEP=" + std::to_string(fail_step) + ")");
    const std::map<std::string, int64_t> bytes_before = comm->bytes_sent();
    const TimeSplit split_before = ex.time_split();
    double flush_s = 0;  // comm->flush(): waiting for outstanding sends counts as communication
    if (nvml) nvml->begin_window();
    if (Status st = loader.next(plan.global_batch, global.data()); !st) return fail("--data " + a.data + ": " + st.message());
    double loss_sum = 0;
    if (!pipelined) {
      for (int64_t m = 0; m < plan.micro_batches; ++m) {
        if (Status st = feed(micro(m), 0); !st) return fail(st.message());
        bool dump = s == 1 && m == 0 && !a.dump_first_step.empty() && !multi;
        StepState micro_state;  // the last micro-batch starts the overlapped gradient buckets
        micro_state.last_micro = m == plan.micro_batches - 1;
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
        if (t.phase == Phase::Forward) {
          if (Status st = feed(micro(t.micro_batch), t.slot); !st) return fail(st.message());
          if (Status st = ex.run("forward", nullptr, t.slot); !st)
            return fail("step " + std::to_string(s) + ", forward of micro-batch " + std::to_string(t.micro_batch) + ": " +
                        st.message());
          if (loss_rank) loss_sum += ex.loss(t.slot);
        } else {
          StepState micro_state;  // this rank's last backward starts the overlapped gradient buckets
          micro_state.last_micro = ti == last_backward;
          if (Status st = ex.run("backward", &micro_state, t.slot); !st)
            return fail("step " + std::to_string(s) + ", backward of micro-batch " + std::to_string(t.micro_batch) +
                        ": " + st.message());
        }
      }
    }
    if (multi) {
      auto tf = std::chrono::steady_clock::now();
      if (Status st = comm->flush(); !st) return fail("step " + std::to_string(s) + ": " + st.message());
      flush_s = seconds_since(tf);
    }
    StepState state;
    state.step = s;
    state.lr = lr_at_step(plan.hparams, s, a.steps);
    if (Status st = ex.run("optimizer_step", &state); !st)
      return fail("step " + std::to_string(s) + ", optimizer_step: " + st.message());
    for (auto &[k, v] : comm->bytes_sent()) {
      auto it = bytes_before.find(k);
      train_bytes[k] += v - (it == bytes_before.end() ? 0 : it->second);
    }
    ++steps_run;
    last_loss = world_sum(loss_sum) / static_cast<double>(plan.micro_batches * dp);
    double dt = seconds_since(t0);
    const TimeSplit &split_after = ex.time_split();
    const double compute_s = split_after.compute_s - split_before.compute_s;
    const double comm_s = split_after.comm_s - split_before.comm_s + flush_s;
    const double idle_s = dt - compute_s - comm_s;
    total_compute += compute_s;
    total_comm += comm_s;
    total_step_time += dt;
    step_times.push_back(dt);
    last_lr = state.lr;
    double tps = dt > 0 ? tokens_per_step / dt : 0;
    if (s > start_step + 1) step_tps.push_back(tps);
    json rec = {{"step", s},
                {"loss", last_loss},
                {"lr", state.lr},
                {"grad_norm", state.grad_norm},
                {"tokens", s * tokens_per_step},
                {"tokens_per_s", tps},
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
        gpu_peak_used_mib = std::max(gpu_peak_used_mib, dm.used_bytes / 1048576.0);
        rec["gpu_mem_used_mib"] = dm.used_bytes / 1048576.0;
      }
      gpu_alloc_peak_mib = std::max(gpu_alloc_peak_mib, dm.peak_allocated_bytes / 1048576.0);
    }
    if (nvml) {
      GpuUtilStats u = nvml->end_window();
      if (u.samples > 0) rec["gpu_util"] = u.mean;
    }
    if (Status st = write_metrics(rec); !st) return fail(st.message());
    if (rank0) {
      progress.update(s, last_loss, tps, state.lr);
      if (!state.grad_norm_finite) {
        progress.finish();
        std::cerr << "lora-run: warning: step " << s << ": gradient norm is not finite; update skipped\n";
      }
    }
    if (val_file && ((a.val_every > 0 && s % a.val_every == 0) || s == a.steps))
      if (Status st = run_validation(s); !st) return fail("validation at step " + std::to_string(s) + ": " + st.message());
    if (a.save_every > 0 && s % a.save_every == 0 && s != a.steps) {
      if (Status st = checkpoint(s, last_loss, state.lr); !st)
        return fail("checkpoint at step " + std::to_string(s) + ": " + st.message());
    }
  }
  if (rank0) progress.finish();

  // Final adapter (full tensors, assembled on rank 0), checkpoint and summary.
  if (!multi) {
    if (Status s = write_peft_adapter(a.out + "/adapter", plan.lora, base_model, named_tensors(ex, plan::BufferKind::Trainable)); !s)
      return fail(s.message());
  } else {
    std::vector<std::pair<FullTrainable, std::vector<float>>> full;
    if (Status s = gather_full_trainables(plan, w, ex, &full); !s) return fail("adapter export: " + s.message());
    if (rank0)
      if (Status s = write_peft_adapter(a.out + "/adapter", plan.lora, base_model, as_named(full)); !s) return fail(s.message());
  }
  if (a.steps > start_step)
    if (Status s = checkpoint(a.steps, last_loss, last_lr); !s) return fail("final checkpoint: " + s.message());

  // Per-rank communication report: measured (training steps only) vs predicted, gathered on
  // rank 0 as fixed-size numbers.
  // Row fields 0-8 as before (rank, bytes by all_reduce / send measured and predicted, arena,
  // RSS, steps, persistent bytes); then the time split, MFU inputs, GPU numbers, broadcast bytes.
  enum : int { kCompute = 9, kComm, kStepTime, kStepMedian, kFlops, kGpuPeak, kGpuAlloc, kUtilMean, kUtilSamples,
               kUtilMax, kBcast, kBcastPred, kFields };
  auto per_step = [&](const std::string &kind) -> double {
    auto it = train_bytes.find(kind);
    return steps_run > 0 && it != train_bytes.end() ? static_cast<double>(it->second) / steps_run : 0.0;
  };
  auto predicted = [&](const plan::RankPlan &r, const std::string &kind) -> double {
    auto it = r.bytes_sent.find(kind);
    return it == r.bytes_sent.end() ? 0.0 : static_cast<double>(it->second);
  };
  double mine_row[kFields] = {static_cast<double>(R),
                              per_step("all_reduce"),
                              per_step("send"),
                              predicted(rp, "all_reduce"),
                              predicted(rp, "send"),
                              static_cast<double>(ex.arena_bytes() * ex.slots()),
                              peak_rss_mib(),
                              static_cast<double>(steps_run),
                              static_cast<double>(ex.persistent_bytes()),
                              total_compute,
                              total_comm,
                              total_step_time,
                              median(step_times),
                              rp.flops_per_step,
                              gpu_peak_used_mib,
                              gpu_alloc_peak_mib,
                              nvml ? nvml->total().mean : -1.0,
                              nvml ? static_cast<double>(nvml->total().samples) : 0.0,
                              nvml ? nvml->total().max : -1.0,
                              per_step("broadcast"),
                              predicted(rp, "broadcast")};
  std::vector<double> rows(static_cast<size_t>(kFields * plan.world_size));
  if (multi) MPI_Gather(mine_row, kFields, MPI_DOUBLE, rows.data(), kFields, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  else std::copy(mine_row, mine_row + kFields, rows.begin());
  if (!rank0) return 0;

  double median_tps = median(step_tps);
  double wall = seconds_since(t_start);
  json summary = {{"plan", a.plan},
                  {"plan_fingerprint", fingerprint},
                  {"steps", a.steps},
                  {"start_step", start_step},
                  {"final_loss", last_loss},
                  {"tokens_per_s_median", median_tps},
                  {"wall_time_s", wall},
                  {"peak_rss_mib", peak_rss_mib()},
                  {"arena_mib", ex.arena_bytes() * ex.slots() / 1048576.0},
                  {"persistent_mib", ex.persistent_bytes() / 1048576.0},
                  {"adapter", a.out + "/adapter"},
                  {"threads", threads},
                  {"omp_wait_policy", omp_wait_policy()},
                  {"backend", a.backend},
                  {"world_size", plan.world_size},
                  {"mesh", {{"dp", mesh.dp}, {"tp", mesh.tp}, {"pp", mesh.pp}}},
                  {"strategy", plan.strategy},
                  {"schedule", plan.pipeline_schedule}};
  // Time split and MFU (docs/training.md "Metrics"). Per rank: compute / comm / idle totals over
  // the training steps of this run. MFU: the plan's model FLOPs of one step summed over ranks /
  // rank 0's median step time (first step excluded when there are several) / (peak x ranks).
  auto fraction = [](double part, double whole) -> json { return whole > 0 ? json(part / whole) : json(nullptr); };
  auto time_json = [&](const double *row) {
    double idle = row[kStepTime] - row[kCompute] - row[kComm];
    return json{{"compute_s", row[kCompute]},
                {"comm_s", row[kComm]},
                {"idle_s", idle},
                {"step_time_s", row[kStepTime]},
                {"compute_fraction", fraction(row[kCompute], row[kStepTime])},
                {"comm_fraction", fraction(row[kComm], row[kStepTime])},
                {"idle_fraction", fraction(idle, row[kStepTime])}};
  };
  int slowest = 0;  // the rank with the most compute time: the one the others wait for
  double flops_per_step = 0;
  for (int r = 0; r < plan.world_size; ++r) {
    const double *row = rows.data() + static_cast<size_t>(r) * kFields;
    if (row[kCompute] > rows[static_cast<size_t>(slowest) * kFields + kCompute]) slowest = r;
    flops_per_step += row[kFlops];
  }
  const json time0 = time_json(rows.data());  // rank 0's split, at the top level
  for (auto it = time0.begin(); it != time0.end(); ++it) summary[it.key()] = it.value();
  summary["slowest_rank"] = slowest;
  std::vector<double> mfu_times(step_times.begin() + (step_times.size() > 1 ? 1 : 0), step_times.end());
  const double step_median = median(mfu_times);
  const double achieved = step_median > 0 ? flops_per_step / step_median : 0.0;  // FLOP/s
  summary["step_time_s_median"] = step_median;
  summary["flops_per_step"] = flops_per_step;
  summary["achieved_tflops"] = achieved / 1e12;
  summary["peak_tflops"] = peak_tflops > 0 ? json(peak_tflops) : json(nullptr);
  summary["mfu"] = peak_tflops > 0 ? json(achieved / (peak_tflops * 1e12 * plan.world_size)) : json(nullptr);
  if (!gpu_name.empty()) summary["gpu_name"] = gpu_name;
  double util_sum = 0, util_max = -1;
  int64_t util_samples = 0;
  double gpu_peak_all = 0, gpu_alloc_all = 0;
  if (a.backend == "cuda") {
    for (int r = 0; r < plan.world_size; ++r) {
      const double *row = rows.data() + static_cast<size_t>(r) * kFields;
      gpu_peak_all = std::max(gpu_peak_all, row[kGpuPeak]);
      gpu_alloc_all = std::max(gpu_alloc_all, row[kGpuAlloc]);
      if (row[kUtilMean] >= 0 && row[kUtilSamples] > 0) {
        util_sum += row[kUtilMean] * row[kUtilSamples];
        util_samples += static_cast<int64_t>(row[kUtilSamples]);
        util_max = std::max(util_max, row[kUtilMax]);
      }
    }
    summary["gpu_peak_mem_mib"] = gpu_peak_all;  // max over ranks of cudaMemGetInfo used
    summary["gpu_alloc_peak_mib"] = gpu_alloc_all;
    summary["gpu_util_mean"] = util_samples > 0 ? json(util_sum / util_samples) : json(nullptr);
    summary["gpu_util_max"] = util_samples > 0 ? json(util_max) : json(nullptr);
  }
  json ranks = json::array();
  std::ostringstream comm_report, mismatch;
  for (int r = 0; r < plan.world_size; ++r) {
    const double *row = rows.data() + static_cast<size_t>(r) * kFields;
    const plan::RankPlan &pr = plan.ranks[r];
    auto as_int = [](double v) -> json {
      double i = std::round(v);
      return std::fabs(v - i) < 1e-9 ? json(static_cast<int64_t>(i)) : json(v);
    };
    json measured = {{"all_reduce", as_int(row[1])}, {"send", as_int(row[2])}};
    if (row[kBcast] != 0 || pr.bytes_sent.count("broadcast")) measured["broadcast"] = as_int(row[kBcast]);  // ZeRO-1
    json pred = json::object();
    for (auto &[k, v] : pr.bytes_sent) pred[k] = v;
    if (!pred.contains("all_reduce")) pred["all_reduce"] = 0;
    if (!pred.contains("send")) pred["send"] = 0;
    ranks.push_back({{"rank", r},
                     {"coords", {{"dp", pr.dp_rank}, {"tp", pr.tp_rank}, {"pp", pr.pp_stage}}},
                     {"bytes_sent_per_step", measured},
                     {"bytes_sent_predicted", pred},
                     {"arena_bytes", static_cast<int64_t>(row[5])},
                     {"predicted_peak_bytes", pr.peak_bytes},
                     {"predicted_bubble_fraction", pr.bubble_fraction},
                     {"persistent_bytes", static_cast<int64_t>(row[8])},
                     {"peak_rss_mib", row[6]},
                     {"time", time_json(row)},
                     {"step_time_s_median", row[kStepMedian]},
                     {"flops_per_step", row[kFlops]}});
    if (a.backend == "cuda") {
      json &e = ranks.back();
      e["gpu_peak_mem_mib"] = row[kGpuPeak];
      e["gpu_alloc_peak_mib"] = row[kGpuAlloc];
      e["gpu_util_mean"] = row[kUtilMean] >= 0 && row[kUtilSamples] > 0 ? json(row[kUtilMean]) : json(nullptr);
    }
    if (multi) {
      comm_report << "  rank " << r << " (dp " << pr.dp_rank << ", tp " << pr.tp_rank << ", pp " << pr.pp_stage
                  << "): sent " << fmt("%.0f", row[1]) << " B/step by all_reduce, " << fmt("%.0f", row[2])
                  << " by send; predicted " << fmt("%.0f", row[3]) << ", " << fmt("%.0f", row[4])
                  << (row[kBcast] != 0 || row[kBcastPred] != 0
                          ? "; broadcast " + fmt("%.0f", row[kBcast]) + " B/step, predicted " + fmt("%.0f", row[kBcastPred])
                          : std::string())
                  << "\n";
      if (row[7] > 0 && (std::fabs(row[1] - row[3]) > 0.5 || std::fabs(row[2] - row[4]) > 0.5 ||
                         std::fabs(row[kBcast] - row[kBcastPred]) > 0.5))
        mismatch << "lora-run: warning: MISMATCH on rank " << r << ": measured bytes sent per step ("
                    << fmt("%.0f", row[1]) << " all_reduce, " << fmt("%.0f", row[2])
                    << " send) differ from the plan's prediction (" << fmt("%.0f", row[3]) << ", "
                    << fmt("%.0f", row[4]) << ")"
                 << (row[kBcast] != 0 || row[kBcastPred] != 0
                         ? "; broadcast " + fmt("%.0f", row[kBcast]) + " vs " + fmt("%.0f", row[kBcastPred])
                         : std::string())
                 << "\n";
    }
  }
  summary["ranks"] = ranks;
  std::ostringstream prof;
  if (a.profile) {
    json pj = json::object();
    std::vector<std::pair<std::string, OpProfile>> ops(ex.profile().begin(), ex.profile().end());
    std::sort(ops.begin(), ops.end(), [](auto &x, auto &y) { return x.second.seconds > y.second.seconds; });
    double total = 0;
    for (auto &o : ops) total += o.second.seconds;
    prof << "  profile" << (multi ? " of rank 0" : "") << " (kernel time " << fmt("%.3f", total) << " s):\n";
    char line[256];
    std::snprintf(line, sizeof line, "    %-20s %10s %8s %7s %10s\n", "op", "seconds", "calls", "share", "GFLOP/s");
    prof << line;
    for (auto &[name, p] : ops) {
      double gflops = p.seconds > 0 ? p.flops / p.seconds / 1e9 : 0;
      std::snprintf(line, sizeof line, "    %-20s %10.4f %8lld %6.1f%% %10.2f\n", name.c_str(), p.seconds,
                    static_cast<long long>(p.calls), total > 0 ? 100.0 * p.seconds / total : 0.0, gflops);
      prof << line;
      pj[name] = {{"seconds", p.seconds}, {"calls", p.calls}, {"flops", p.flops}};
    }
    summary["profile"] = pj;
  }
  {
    std::ofstream os(a.out + "/summary.json");
    os << summary.dump(2) << "\n";
    if (!os) return fail("cannot write " + a.out + "/summary.json");
  }
  std::cout << "lora-run: done: " << a.steps << " steps, final loss " << fmt("%.6f", last_loss) << ", "
            << fmt("%.0f", median_tps) << " tokens/s (median, first step excluded), wall " << fmt("%.2f", wall)
            << " s, peak RSS " << fmt("%.0f", peak_rss_mib()) << " MiB" << (multi ? " (rank 0)" : "") << "\n"
            << "  adapter: " << a.out << "/adapter, metrics: " << metrics_path << ", summary: " << a.out
            << "/summary.json\n";
  {
    const double *r0 = rows.data();
    const double *rs = rows.data() + static_cast<size_t>(slowest) * kFields;
    auto pct = [](double part, double whole) { return fmt("%.1f", whole > 0 ? 100.0 * part / whole : 0.0); };
    std::cout << "time: compute " << pct(r0[kCompute], r0[kStepTime]) << "%, communication " << pct(r0[kComm], r0[kStepTime])
              << "%, idle/other " << pct(r0[kStepTime] - r0[kCompute] - r0[kComm], r0[kStepTime]) << "% (rank 0); slowest rank " << slowest
              << " (most compute): compute " << pct(rs[kCompute], rs[kStepTime]) << "%, communication " << pct(rs[kComm], rs[kStepTime])
              << "%, idle/other " << pct(rs[kStepTime] - rs[kCompute] - rs[kComm], rs[kStepTime]) << "%\n";
    if (peak_tflops > 0)
      std::cout << "MFU: " << fmt("%.2f", 100.0 * achieved / (peak_tflops * 1e12 * plan.world_size)) << "% ("
                << fmt("%.4g", achieved / 1e12) << " TFLOP/s achieved by " << plan.world_size << " rank"
                << (plan.world_size == 1 ? "" : "s") << " / " << fmt("%g", peak_tflops) << " TFLOP/s peak per device)\n";
    else
      std::cout << "MFU: not reported (" << fmt("%.4g", achieved / 1e12)
                << " TFLOP/s achieved; peak unknown: pass --peak-tflops)\n";
    if (a.backend == "cuda")
      std::cout << "gpu: peak memory used " << fmt("%.0f", gpu_peak_all) << " MiB (cudaMemGetInfo, max over ranks), "
                << "allocator peak " << fmt("%.0f", gpu_alloc_all) << " MiB; utilization "
                << (util_samples > 0 ? "mean " + fmt("%.1f", util_sum / util_samples) + "% (NVML)"
                                     : std::string("unavailable (") + (nvml_why.empty() ? "no samples" : nvml_why) + ")")
                << "\n";
  }
  std::cout << comm_report.str() << prof.str();
  std::cout.flush();
  std::cerr << mismatch.str();
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  passive_omp_wait_policy(argv);
  CLI::App app{"lora-run: train LoRA adapters by executing a plan compiled by lora-compile (CPU backend;\n"
               "--backend cuda runs the same kernels on a GPU when lora-run was built with CUDA).\n"
               "Each optimizer step runs the plan's micro_step on every micro-batch (forward, loss, backward,\n"
               "gradient accumulation), then optimizer_step (global-norm clipping + AdamW)."};
  app.footer(
      "Outputs in --out:\n"
      "  metrics.jsonl      one line per step: step, loss (mean over micro-batches), lr, grad_norm (before\n"
      "                     clipping), tokens (seen so far), tokens_per_s, step_time_s, peak_rss_mib, arena_mib,\n"
      "                     skipped (non-finite gradient), compute_s / comm_s / idle_s (rank 0's step time split),\n"
      "                     with --backend cuda gpu_mem_used_mib and gpu_util (NVML); with --val-data also\n"
      "                     {step, val_loss} lines\n"
      "                     (step 0 = before training)\n"
      "  adapter/           the final PEFT LoRA adapter (PeftModel.from_pretrained(base, 'out/adapter'))\n"
      "  checkpoint-N/      resumable checkpoints (every --save-every steps and at the end); latest names the newest\n"
      "  summary.json       steps, final loss, median tokens/s (first step excluded), wall time, peak RSS,\n"
      "                     time split (per rank), mfu (null without a known peak), GPU memory and utilization\n"
      "\n"
      "Examples:\n"
      "  lora-run --describe plan.lp --verbose\n"
      "  lora-run plan.lp --data train.bin --val-data val.bin --val-every 50 --steps 500 --out runs/a\n"
      "  lora-run plan.lp --data train.bin --steps 1000 --out runs/a --resume runs/a      (continue after a stop)\n"
      "  lora-run plan.lp --data train.bin --steps 20 --out runs/b --weights ~/models/llama --init-adapter runs/a/adapter\n"
      "  OMP_NUM_THREADS=8 lora-run plan.lp --data train.bin --steps 10 --out /tmp/r --profile\n"
      "\n"
      "Multi-rank plans (lora-compile --dp/--tp/--pp): launch one process per rank, e.g.\n"
      "  mpirun -np 4 lora-run plan.lp --data train.bin --steps 100 --out runs/p\n"
      "  (as root add OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1). Rank 0 prints progress and writes\n"
      "  metrics/summary (with per-rank bytes sent, measured vs predicted) and the full adapter; checkpoints hold\n"
      "  one rank-R.safetensors shard per rank. A failing rank aborts the whole job (MPI_Abort).\n"
      "  Testing aid: PARALLORA_TEST_FAIL_RANK=r PARALLORA_TEST_FAIL_STEP=s make rank r fail at step s.\n"
      "\n"
      "Exit codes: 0 success, 1 runtime error (files, data, kernels), 2 command-line error.");
  Args a;
  app.add_option("plan", a.plan, "the plan file written by lora-compile -o plan.lp");
  app.add_flag("--describe", a.describe, "print what the plan computes (model, LoRA, hyperparameters, memory, FLOPs, programs) and exit");
  app.add_flag("--verbose", a.verbose, "with --describe: also list every buffer and instruction");
  app.add_option("--data", a.data, "training tokens: llm.c .bin file (uint16/uint32 tokens) or raw token file");
  app.add_option("--data-format", a.data_format, "token file format (auto: llm.c header required; u16/u32: raw little-endian)")
      ->check(CLI::IsMember({"auto", "llmc", "u16", "u32"}));
  app.add_option("--val-data", a.val_data, "validation tokens (same format); evaluated before training, every --val-every steps and at the end");
  app.add_option("--val-every", a.val_every, "validate every K steps (0: only before and after training)")->check(at_least(0));
  app.add_option("--val-batches", a.val_batches, "validation batches from the start of --val-data, unshuffled (0: all)")->check(at_least(0));
  app.add_option("--steps", a.steps, "train until this optimizer step (with --resume: the total, not additional steps)")->check(at_least(1));
  app.add_option("--seed", a.seed, "seed of the adapter init and the data shuffle (default 42; --resume keeps the checkpoint's)");
  app.add_flag("--shuffle,!--no-shuffle", a.shuffle, "shuffle the training sequences each epoch (default) / read them in file order");
  app.add_option("--out", a.out, "output directory (created): metrics, adapter, checkpoints, summary");
  app.add_option("--weights", a.weights, "base model weights (HF dir with model.safetensors[.index.json] or a .safetensors file); default: the path recorded in the plan");
  auto *init_opt = app.add_option("--init-adapter", a.init_adapter, "start from this PEFT adapter directory instead of the plan's adapter init");
  auto *resume_opt = app.add_option("--resume", a.resume, "continue from a checkpoint-N directory, or an out dir (uses its `latest`); bit-identical to an uninterrupted run");
  init_opt->excludes(resume_opt);
  app.add_option("--save-every", a.save_every, "write a checkpoint every K steps (0: only at the end)")->check(at_least(0));
  app.add_option("--keep-last", a.keep_last, "keep only the newest K checkpoints (0: keep all)")->check(at_least(0));
  app.add_option("--threads", a.threads, "CPU threads of the cpu backend (default: OMP_NUM_THREADS, else all cores); "
                                         "OMP_WAIT_POLICY defaults to PASSIVE (see docs/training.md)")->check(at_least(0));
  app.add_option("--backend", a.backend,
                 "kernels: cpu (fp32 reference, default) or cuda (one GPU per process: device = local rank % device "
                 "count; multi-rank collectives are host-staged through MPI)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--collectives", a.collectives,
                 "multi-rank collectives: mpi (default; host-staged with --backend cuda, several ranks may share a GPU) "
                 "or nccl (--backend cuda, one GPU per rank)")
      ->check(CLI::IsMember({"mpi", "nccl"}));
  app.add_flag("--cuda-graphs", a.cuda_graphs,
               "--backend cuda: capture each program without collectives once as a CUDA graph and replay it "
               "(experimental: not yet run on a GPU)");
  app.add_option("--log-every", a.log_every, "progress line every K steps when stderr is not a terminal")->check(at_least(1));
  app.add_flag("--profile", a.profile, "time every kernel and print a per-op table at the end (also in summary.json)");
  app.add_option("--comm-timeout", a.comm_timeout, "multi-rank: seconds a collective or receive waits for its peers before failing (default 300)")
      ->check(CLI::PositiveNumber);
  app.add_option("--peak-tflops", a.peak_tflops,
                 "MFU's peak per device in TFLOP/s (default: the GPU's dense bf16 data-sheet peak by name: H100 SXM/HBM3 "
                 "and H200 989, H100 PCIe 756, A100 312; otherwise, and on the cpu backend, MFU is not reported)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--dump-first-step", a.dump_first_step, "write loss, logits and every grad.<param> after the first micro-step to this .safetensors file (parity tests)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  auto usage = [](const std::string &msg) {
    std::cerr << "error: " << msg << " (see lora-run --help)\n";
    return 2;
  };
  if (a.plan.empty()) return usage("give the plan file: lora-run plan.lp --data tokens.bin --steps N --out dir/");
  if (a.describe) return describe(a);
  if (a.verbose) return usage("--verbose only applies to --describe");
  if (a.data.empty()) return usage("--data is required for training (an llm.c token file)");
  if (a.steps <= 0) return usage("--steps is required for training");
  if (a.out.empty()) return usage("--out is required for training (the output directory)");
  World world;
  int rc = train(a, world);
  if (world.mpi) MPI_Finalize();
  return rc;
}
