//===- graph.cu - CUDA graph capture and replay of whole programs ------------===//
//
// MemoryHooks::run_program of the CUDA backend (memory(), backend.cu; lora-run keeps it only
// with --cuda-graphs). The executor hands it every run of a program without communication
// kernels (not while profiling or with an InstrHook). Per (program, slot) of one hooks
// instance (= one executor):
//   1st run   eager() as usual: the warm-up (scratch pools reach their size, cuBLASLt plans and
//             RoPE tables are built, cudaFuncSetAttribute is done).
//   2nd run   capture: cudaStreamBeginCapture(stream(), ThreadLocal), eager() (the kernels
//             enqueue as usual; nothing executes), cudaStreamEndCapture, cudaGraphInstantiate,
//             then one cudaGraphLaunch + wait + the deferred checks (below).
//   later     cudaGraphLaunch + wait + the deferred checks; eager() is not called.
// A capture that fails for any reason (a kernel refuses it: graph.cuh; a CUDA call not allowed
// while capturing; eager() failing; EndCapture / Instantiate errors) is abandoned without
// side effects on the device (captured work never executed), the error state is cleared, that
// (program, slot) runs eagerly from then on, and this run calls eager() for real: a capture
// problem never fails a run, and an error of eager() itself comes back as is.
// The wait after a launch is needed: the executor does not sync after run_program, and the host
// reads the loss right after run(). While capturing, memory().sync (the executor's end-of-run
// wait) does nothing.
// Safety net: the cache is per memory() call; a block allocated through the hooks after the
// first run_program (two executors sharing one memory()) or the free of one of the executor's
// blocks drops all its graphs and disables capture for those hooks (graph.cuh, note_alloc).
// Set PARALLORA_CUDA_GRAPHS_VERBOSE=1 to get one stderr line per capture and per fallback;
// graph_counters() (backend.h) counts them for tests.
//
// KERNEL AUDIT (every launch path of runtime/cuda; "safe" = every argument the graph bakes in is
// a pointer into the executor's fixed buffers, a stable scratch block, or a value derived from
// shapes and attributes only, which are the same on every run):
//   embedding_fwd        MADE SAFE. Eager: waits for the id check and reports a bad id at once.
//                        Capturing: the check kernel writes a per-call-site word of the graph
//                        (check_word) and the host check is deferred to after each replay (the
//                        gather writes zero rows for out-of-range ids, so nothing reads out of
//                        bounds; the run's error then names the id and its position as before,
//                        but the rest of the program has run).
//   rms_norm_fwd/_bwd    safe (eps, D from attrs / shapes; launches only).
//   rope_fwd/_bwd        safe: the cos/sin table (managed, built on the host) is cached per
//                        parameter set during the warm-up; building one while capturing is
//                        refused; a table evicted once graphs exist is retired, not freed.
//   linear_fwd, linear_bwd_input, lora_linear_fwd/_bwd
//                        safe: cuBLASLt with the process's fixed 32 MiB workspace and a plan
//                        cache filled during the warm-up; alpha / beta are attributes (host
//                        scalars read at enqueue time, the same on every run); temporaries in
//                        the matmul ScratchPool (stable, see below).
//   attention_fwd/_bwd   safe: scale / causal / dims from attrs and shapes; the backward's row
//                        scratch and bf16 ScratchPool are stable; cudaFuncSetAttribute is not a
//                        stream operation.
//   swiglu, add, accumulate, transpose, copy, fill_zero
//                        safe (element-wise launches, cudaMemcpyAsync / cudaMemsetAsync nodes).
//   cross_entropy_fwd/_bwd (no vocab_group, or a one-rank group)
//                        MADE SAFE. The number of counted rows stayed on the device (ce_mean and
//                        ce_grad read it from the count word; the grad's coefficient
//                        grad_scale / count is computed on the device in double, the same IEEE
//                        division the host did); the label check is deferred like embedding's.
//   cross_entropy_* with a vocab_group of several ranks
//                        NOT CAPTURABLE: host-staged all-reduces of the row statistics (they wait
//                        for the stream: refused by sync_stream).
//   adamw_step           NOT CAPTURABLE: lr and step come from the host StepState each step, the
//                        global norm is summed (and all-reduced) on the host and written back to
//                        StepState. Refused at entry, so optimizer_step always runs eagerly.
//   all_reduce_start / all_reduce_wait (host-staged and NCCL versions)
//                        NOT CAPTURABLE: StepState::last_micro decides on the host whether a
//                        start happens, and the communicator's host state (started buckets,
//                        events, deadlines) changes per call. Refused at entry, so a backward /
//                        micro_step with overlapped gradient buckets runs eagerly.
//   all_reduce, broadcast, send, recv
//                        never reach run_program (the executor keeps programs with
//                        communication kernels away from it); they would refuse (stream waits).
//   bf16 fallback (run_widened), widen / narrow
//                        safe (ScratchPool).
// Scratch (the reason "stable" holds): ScratchPool (bf16.cu: matmul, attention bwd, run_widened),
// the attention row scratch and ManagedScratch (device_util.cuh: embedding / cross-entropy /
// adamw words) are grow-only. They refuse to grow while capturing (a graph must not own an
// allocation or free one), and once graphs_exist() a block being replaced by a bigger one is
// retired instead of freed, so every graph's blocks stay valid. Graphs and eager work use the
// blocks in stream order, never concurrently.
// Managed memory: the executor's inputs are written by the host between runs (feed); graph
// kernels read them like eager ones (page migration on access).
//
//===----------------------------------------------------------------------===//
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_set>
#include <utility>
#include <vector>

#include "runtime/cuda/backend.h"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/graph.cuh"

namespace parallora::rt::cuda {

namespace graph {

namespace {

/// Check words per captured graph (call sites of embedding_fwd / cross_entropy_* in one
/// program; a plan has a handful).
constexpr int kCheckWords = 64;

struct CaptureContext {
  unsigned long long *words = nullptr;
  int used = 0;
  std::vector<std::function<Status()>> checks;
  bool refused = false;
  std::string why;
};

thread_local CaptureContext *t_capture = nullptr;
std::atomic<bool> g_graphs_exist{false};

struct Retired {
  std::mutex mu;
  std::vector<std::pair<void *, bool>> blocks;  // never freed (a graph may use them)
};
Retired &retired() {
  static Retired *r = new Retired();  // leaked on purpose: blocks outlive static destruction
  return *r;
}

struct Counters {
  std::mutex mu;
  GraphCounters c;
};
Counters &counters() {
  static Counters *c = new Counters();
  return *c;
}

bool verbose() {
  static const bool v = [] {
    const char *e = std::getenv("PARALLORA_CUDA_GRAPHS_VERBOSE");
    return e && *e && std::string(e) != "0";
  }();
  return v;
}

std::string cuda_text(cudaError_t e, const char *what) {
  return std::string(what) + ": " + cudaGetErrorString(e) + " (error " + std::to_string(int(e)) + ")";
}

} // namespace

bool capturing() { return t_capture != nullptr; }

Status refuse_capture(const std::string &why) {
  if (!t_capture) return Status::ok();
  if (!t_capture->refused) {
    t_capture->refused = true;
    t_capture->why = why;
  }
  return Status::error("not capturable into a CUDA graph: " + why);
}

bool graphs_exist() { return g_graphs_exist.load(std::memory_order_relaxed); }

void retire(void *p, bool managed) {
  if (!p) return;
  Retired &r = retired();
  std::lock_guard<std::mutex> lock(r.mu);
  r.blocks.emplace_back(p, managed);
}

StatusOr<unsigned long long *> check_word() {
  if (!t_capture) return Status::error("check_word: not capturing");
  if (!t_capture->words || t_capture->used >= kCheckWords)
    return refuse_capture("more than " + std::to_string(kCheckWords) + " checked kernels in one program");
  return t_capture->words + t_capture->used++;
}

void defer_check(std::function<Status()> check) {
  if (t_capture) t_capture->checks.push_back(std::move(check));
}

// ------------------------------------------------------------------ the cache

namespace {

struct Entry {
  enum class State { Fresh, WarmedUp, Captured, Eager };
  State state = State::Fresh;
  cudaGraphExec_t exec = nullptr;
  unsigned long long *words = nullptr;  // managed, kCheckWords (the graph's check words)
  std::vector<std::function<Status()>> checks;
  std::string why;  // Eager: why the capture was abandoned
};

} // namespace

struct Cache {
  std::map<std::pair<std::string, int>, Entry> entries;
  std::unordered_set<void *> blocks;  // allocated through these hooks, not yet freed
  bool used = false;                  // run_program was called
  bool disabled = false;

  void drop_all() {
    bool any = false;
    for (auto &kv : entries) any = any || kv.second.exec || kv.second.words;
    if (any && !capturing()) {
      // A launched graph may still run: wait before destroying it and its check words.
      if (cudaStreamSynchronize(stream()) != cudaSuccess) cudaGetLastError();
    }
    for (auto &kv : entries) {
      Entry &e = kv.second;
      if (e.exec) cudaGraphExecDestroy(e.exec);
      if (e.words) cudaFree(e.words);
      e.exec = nullptr;
      e.words = nullptr;
      e.checks.clear();
    }
    entries.clear();
    if (any) cudaGetLastError();
  }
  ~Cache() { drop_all(); }
};

std::shared_ptr<Cache> new_cache() { return std::make_shared<Cache>(); }

void note_alloc(Cache &cache, void *p) {
  if (cache.used && !cache.disabled) {
    cache.disabled = true;
    cache.drop_all();
    if (verbose())
      std::fprintf(stderr, "[cuda-graphs] memory allocated after a program ran (two executors on one memory()?): "
                           "graphs off for these hooks\n");
  }
  if (p) cache.blocks.insert(p);
}

void note_free(Cache &cache, void *p) {
  if (cache.blocks.erase(p) == 0) return;
  // The executor is going away (or one of its blocks is): its graphs point into it.
  cache.disabled = true;
  cache.drop_all();
}

namespace {

void count(const std::function<void(GraphCounters &)> &f) {
  Counters &c = counters();
  std::lock_guard<std::mutex> lock(c.mu);
  f(c.c);
}

std::string key_text(const std::string &program, int slot) {
  return "program '" + program + "' slot " + std::to_string(slot);
}

Status run_eager(const std::function<Status()> &eager) {
  count([](GraphCounters &c) { ++c.eager_runs; });
  return eager();
}

/// Abandons capture for this (program, slot) and runs it eagerly (this run included).
Status fall_back(Entry &e, const std::string &key, const std::string &why, const std::function<Status()> &eager) {
  cudaGetLastError();  // clear a non-sticky error the failed capture left
  if (e.words) cudaFree(e.words);  // only the abandoned capture referred to them
  e.words = nullptr;
  e.checks.clear();
  e.state = Entry::State::Eager;
  e.why = why;
  count([&](GraphCounters &c) {
    ++c.fallbacks;
    c.last_fallback = key + ": " + why;
  });
  if (verbose()) std::fprintf(stderr, "[cuda-graphs] %s runs eagerly: %s\n", key.c_str(), why.c_str());
  return run_eager(eager);
}

/// One replay: launch, wait, then the deferred checks in capture order.
Status launch(Entry &e) {
  if (cudaError_t r = cudaGraphLaunch(e.exec, stream()); r != cudaSuccess) {
    cudaGetLastError();
    return Status::error(cuda_text(r, "cudaGraphLaunch"));
  }
  if (Status s = sync_stream(); !s) return s;
  count([](GraphCounters &c) { ++c.replays; });
  for (const std::function<Status()> &check : e.checks)
    if (Status s = check(); !s) return s;
  return Status::ok();
}

Status capture(Entry &e, const std::string &key, const std::function<Status()> &eager) {
  if (!e.words) {
    void *w = nullptr;
    if (cudaError_t r = cudaMallocManaged(&w, kCheckWords * sizeof(unsigned long long)); r != cudaSuccess)
      return fall_back(e, key, cuda_text(r, "cudaMallocManaged (check words)"), eager);
    e.words = static_cast<unsigned long long *>(w);
  }
  CaptureContext ctx;
  ctx.words = e.words;
  // From here on, scratch that grows retires its old block (this graph may use it).
  g_graphs_exist.store(true, std::memory_order_relaxed);
  if (cudaError_t r = cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal); r != cudaSuccess)
    return fall_back(e, key, cuda_text(r, "cudaStreamBeginCapture"), eager);
  t_capture = &ctx;
  Status s = eager();
  cudaGraph_t g = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream(), &g);
  t_capture = nullptr;
  std::string why;
  if (ctx.refused)
    why = s.is_ok() ? ctx.why : s.message();  // the executor's message names the instruction
  else if (!s)
    why = "failed while capturing: " + s.message();
  else if (end != cudaSuccess || !g)
    why = cuda_text(end != cudaSuccess ? end : cudaErrorUnknown, "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  if (why.empty()) {
    if (cudaError_t r = cudaGraphInstantiate(&exec, g, 0); r != cudaSuccess) {
      why = cuda_text(r, "cudaGraphInstantiate");
      exec = nullptr;
    }
  }
  size_t nodes = 0;
  if (g && verbose()) cudaGraphGetNodes(g, nullptr, &nodes);
  if (g) cudaGraphDestroy(g);  // the executable graph is independent of it
  if (!why.empty()) return fall_back(e, key, why, eager);
  e.exec = exec;
  e.checks = std::move(ctx.checks);
  e.state = Entry::State::Captured;
  count([](GraphCounters &c) { ++c.captures; });
  if (verbose())
    std::fprintf(stderr, "[cuda-graphs] %s captured: %zu nodes, %zu deferred checks\n", key.c_str(), nodes,
                 e.checks.size());
  return launch(e);
}

} // namespace

Status run_program(Cache &cache, const std::string &program, int slot, const std::function<Status()> &eager) {
  if (cache.disabled || capturing() || !available()) return run_eager(eager);
  cache.used = true;
  Entry &e = cache.entries[{program, slot}];
  switch (e.state) {
  case Entry::State::Fresh:
    e.state = Entry::State::WarmedUp;
    count([](GraphCounters &c) { ++c.warmups; });
    return run_eager(eager);
  case Entry::State::WarmedUp:
    return capture(e, key_text(program, slot), eager);
  case Entry::State::Captured:
    return launch(e);
  case Entry::State::Eager:
    break;
  }
  return run_eager(eager);
}

} // namespace graph

GraphCounters graph_counters() {
  graph::Counters &c = graph::counters();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.c;
}

} // namespace parallora::rt::cuda
