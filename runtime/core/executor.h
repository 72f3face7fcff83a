//===- executor.h - runs one rank of a plan on a kernel registry ----------===//
//
// Load time (Executor::create): validates the plan, checks that every instruction's kernel
// exists in the registry (all missing kernels are reported in one error), makes ONE allocation
// holding the 64-byte-aligned arena of `arena_bytes` for the Activation buffers (one per slot) and
// every persistent buffer (each 64-byte aligned), and prebuilds one KernelCall per instruction with
// every operand resolved to a pointer (an absent operand, id -1, is a Tensor with data nullptr).
//
// Run time: init_parameters() once (or set_trainables/set_optimizer_state to restore), then
// per micro-batch feed() the inputs and run("micro_step"), then run("optimizer_step").
// Nothing is allocated while running.
//
// Slots (pipelines): a rank with RankPlan::slots = S gets S copies of its arena and of its
// Input and Output buffers (one per micro-batch in flight); Param, Trainable, Grad and OptState
// buffers exist once and are shared by every slot. feed/run/loss/buffer/find take a slot index
// (default 0): run("forward", step, slot) works on slot `slot`'s activations and inputs.
//
// Communicator: create() takes an optional rt::Communicator (runtime/comm/comm.h), set into
// every KernelCall::comm for the collective kernels (all_reduce, send, recv, vocab_group /
// norm_group); nullptr for single-rank plans without collectives.
//
// Memory hooks (other backends, e.g. runtime/cuda): create() takes optional MemoryHooks. The
// executor's one block then comes from hooks.alloc (it must return memory the host can
// read and write, e.g. CUDA managed memory: feed, init_parameters, loss and the adapter export
// touch it from the host; the executor zeroes it) and go back through hooks.free. hooks.sync,
// when set, waits for the backend's queued work: run() calls it before returning (also when it
// returns an error), before every InstrHook call (the hook reads buffers on the host) and, with
// profiling on, after every kernel (so the per-op times include the kernel, not just its
// launch). Default: 64-byte-aligned host memory (std::aligned_alloc) and no sync.
//
// Time split (always on; two steady_clock reads per kernel): run() accumulates, over the
// executor's life (reset_time_split() clears it), the wall time spent inside programs, split into
// communication = the kernels all_reduce, send, recv and broadcast (is_comm_op), and compute =
// every other kernel. Kernels that reduce internally (instructions with attr vocab_group or
// norm_group: the vocabulary-parallel embedding / cross entropy, the clipping norm in
// adamw_step) count entirely as compute, their small all-reduces included.
//   Synchronous backends (no hooks.sync, e.g. the CPU): compute_s = sum of the compute kernels'
//   own wall times, comm_s = sum of the communication kernels' wall times; the loop's own
//   overhead (and InstrHook calls) is in neither.
//   Asynchronous backends (hooks.sync set, e.g. CUDA): a kernel call only launches work, so the
//   executor syncs before every communication kernel (the wait for queued compute kernels is
//   not communication) and after it, times the communication kernel between the two syncs, and
//   counts compute_s = (wall time of the run, its final sync included) - comm_s - the time in
//   InstrHook calls. The CUDA backend's host-staged collectives sync the stream themselves, so
//   the extra syncs cost nothing there.
// A recv that waits for a slow peer (a pipeline stage upstream) and an all_reduce that waits for
// the slowest group member count that wait as communication.
//
// Trace (off by default; set_trace): run() records every kernel's begin / end (the two clock
// reads of the time split, nothing more) and the program's span into a TraceRecorder
// (runtime/core/trace.h). On an asynchronous backend these would be launch times; given a
// DeviceTimer, each compute kernel is timed between two device markers instead, resolved after
// the run's final sync (communication kernels are synced on both sides: host times are right).
// Programs replayed by MemoryHooks::run_program get their span only.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/core/trace.h"
#include "runtime/kernel.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

/// A buffer of the loaded rank and its storage.
struct BufferTensor {
  const plan::Buffer *buffer = nullptr;  // name, kind, param, shape (owned by the Executor)
  Tensor tensor;
};

/// Where the executor's storage comes from and how it waits for the backend (see above).
struct MemoryHooks {
  std::function<void *(size_t)> alloc;  // host-accessible bytes, nullptr on failure
  std::function<void(void *)> free;
  std::function<Status()> sync;         // may be empty: kernels finish before returning
  // alloc returns zeroed memory: the executor does not clear it from the host (which would pull
  // device-resident managed memory back to the host).
  bool zeroed = false;
  // May be empty. When set, run() hands every run of a program without communication kernels
  // (is_comm_op) to it, unless profiling is on or an InstrHook is given: `eager` runs the
  // instructions one by one as usual (and returns their status). A backend may capture the
  // work `eager` enqueues once (e.g. a CUDA graph) and replay it on later calls for the same
  // (program, slot) instead of calling `eager`; it must then guarantee that the program's kernels
  // read every per-call value from device memory (buffers), never from host state baked in at
  // capture. Such runs count entirely as compute in the time split.
  std::function<Status(const std::string &program, int slot, const std::function<Status()> &eager)> run_program;
};

/// Wall-time split of the programs run so far (see "Time split" above).
struct TimeSplit {
  double compute_s = 0;  // inside compute kernels (async backends: run wall - comm - hooks)
  double comm_s = 0;     // inside all_reduce / send / recv / broadcast
  double run_s = 0;      // wall time inside run() in total (>= compute_s + comm_s)
  int64_t comm_calls = 0;
  int64_t runs = 0;
};

/// True for the instructions whose time counts as communication: all_reduce, send, recv,
/// broadcast.
bool is_comm_op(const std::string &op);

struct OpProfile {
  double seconds = 0;  // total wall time in this op's kernel
  int64_t calls = 0;
  double flops = 0;    // sum of the instructions' model FLOPs
};

class Executor {
public:
  /// `backend` names the registry in errors ("plan needs kernels not in the cpu backend: ...").
  /// The registry's functions are copied: it need not outlive the executor. `memory`: storage
  /// and sync hooks (copied; nullptr = host memory, no sync).
  static StatusOr<std::unique_ptr<Executor>> create(const plan::Plan &plan, int rank,
                                                    const KernelRegistry &registry,
                                                    const std::string &backend = "cpu",
                                                    Communicator *comm = nullptr,
                                                    const MemoryHooks *memory = nullptr);
  ~Executor();
  Executor(const Executor &) = delete;
  Executor &operator=(const Executor &) = delete;

  /// Fills Param and Trainable buffers: init "checkpoint" (or empty) reads tensor `name` (its
  /// `slice` when set) from `weights_path` (a .safetensors file, a directory with
  /// model.safetensors or model.safetensors.index.json, or an index .json; "" = none),
  /// converting F16/BF16/F64 to f32 (and rounding to bf16 for a bf16 buffer: --precision bf16)
  /// and checking the shape; any other init is a
  /// runtime/plan/weight_init.h spec drawn from `seed`; a sliced buffer (tensor parallel) draws the spec
  /// for its `full_shape` and keeps its slice, so it holds exactly the numbers the single-device
  /// plan would have there. A sliced checkpoint tensor must have `full_shape` when that is set.
  /// Grad, OptState, Input and Output (every slot) are zeroed.
  /// `skip_trainables`: leave the Trainables alone (the caller sets them with set_trainables,
  /// e.g. from --init-adapter or a checkpoint).
  /// Trainables with init "checkpoint" are read from Plan::adapter_weights when the plan names
  /// one (a PEFT ONNX export's adapters), else from `weights_path`.
  /// A non-empty `weights_path` is never ignored: every Param (frozen base weight) is then read
  /// from it, whatever its init spec (a plan compiled without --weights has random-init specs),
  /// and a missing path, a missing tensor or a wrong shape/dtype is an error.
  Status init_parameters(const std::string &weights_path, uint64_t seed, bool skip_trainables = false);
  /// What the last successful init_parameters filled the parameters from, for run headers and
  /// summaries: "PATH (crc32 1a2b3c4d of the N tensors read, raw bytes in name order)" or
  /// "random init, seed N" (nothing read from a checkpoint); "" before init_parameters.
  const std::string &base_weights_used() const { return base_weights_used_; }

  /// Overwrites every Trainable from `values` (by buffer name). The names must be exactly the
  /// plan's trainables and the element counts (and the shapes, when `shapes` is given) must
  /// match; the error lists every missing, unexpected and mis-shaped tensor.
  Status set_trainables(const std::map<std::string, std::vector<float>> &values,
                        const std::map<std::string, std::vector<int64_t>> *shapes = nullptr);
  /// Same for the OptState buffers ("<param>.exp_avg" / "<param>.exp_avg_sq").
  Status set_optimizer_state(const std::map<std::string, std::vector<float>> &values);

  /// Copies `count` token ids into slot `slot`'s Input buffer `input_name`; count must equal
  /// its numel.
  Status feed(const std::string &input_name, const int32_t *data, int64_t count, int slot = 0);

  /// Runs the named program's instructions in order on slot `slot`. A kernel error comes back
  /// as "instruction #i op (loc): <kernel message>".
  Status run(const std::string &program, StepState *step, int slot = 0);
  /// Same, calling `after(i, call)` once instruction #i has run (e.g. to copy an activation
  /// before the arena reuses its bytes).
  using InstrHook = std::function<void(size_t index, const KernelCall &call)>;
  Status run(const std::string &program, StepState *step, const InstrHook &after, int slot = 0);
  bool has_program(const std::string &program) const;
  /// Number of slots (RankPlan::slots).
  int slots() const { return slots_; }
  Communicator *communicator() const { return comm_; }

  /// Per-op timing (off by default): when on, run() times every kernel call.
  void enable_profile(bool on) { profile_on_ = on; }
  const std::map<std::string, OpProfile> &profile() const { return profile_; }
  void reset_profile() { profile_.clear(); }

  /// Records every run()'s kernels and program span into `trace` (nullptr: off; see "Trace"
  /// above). The recorder must outlive the runs.
  /// `timer`: device markers for the compute kernels of an asynchronous backend (may be null).
  void set_trace(TraceRecorder *trace, DeviceTimer *timer = nullptr);

  /// Compute / communication wall time of every run() so far (see "Time split" above).
  const TimeSplit &time_split() const { return time_split_; }
  void reset_time_split() { time_split_ = TimeSplit(); }

  /// Slot `slot`'s Output buffer "loss" (NaN when the plan has none).
  double loss(int slot = 0) const;

  /// Buffers of one kind, in buffer order (Trainable, OptState, Grad, ...), of slot `slot`.
  std::vector<BufferTensor> buffers(plan::BufferKind kind, int slot = 0) const;
  /// Any buffer by name (activations by their plan name); nullptr when absent.
  const BufferTensor *find(const std::string &name, int slot = 0) const;
  /// Buffer by id.
  const BufferTensor &buffer(int32_t id, int slot = 0) const { return tensors_[slot][id]; }

  const plan::RankPlan &rank_plan() const { return rank_; }
  /// Bytes of one arena (one slot); the rank holds slots() of them.
  int64_t arena_bytes() const { return arena_bytes_; }
  /// Bytes of all persistent (non-Activation) buffers, every slot's Input/Output copies
  /// included, with alignment padding.
  int64_t persistent_bytes() const { return persistent_bytes_; }

private:
  /// After an all_reduce_wait: the bucket's reduction as the device ran it, when measured.
  void trace_device_comm(const plan::Instr &in);
  Executor() = default;
  Status set_kind(plan::BufferKind kind, const char *what, const std::map<std::string, std::vector<float>> &values,
                  const std::map<std::string, std::vector<int64_t>> *shapes);

  struct CompiledProgram {
    std::vector<KernelCall> calls;
    std::vector<const KernelFn *> fns;
    std::vector<char> comm;  // is_comm_op(calls[i].instr->op)
  };
  /// Frees a block through the hooks' free (std::free when none).
  struct AlignedFree {
    std::function<void(void *)> free;
    void operator()(void *p) const;
  };
  /// A zeroed block of round_up(max(bytes, 1), 64) bytes from the hooks (or aligned_alloc).
  std::unique_ptr<void, AlignedFree> allocate(int64_t bytes) const;
  Status sync() const { return hooks_.sync ? hooks_.sync() : Status::ok(); }

  Status check_slot(int slot) const;

  plan::RankPlan rank_;  // owned copy: KernelCall::instr points into it
  std::map<std::string, KernelFn> kernels_;
  std::map<std::string, std::vector<CompiledProgram>> programs_;  // one per slot
  std::vector<std::vector<BufferTensor>> tensors_;                  // [slot][buffer id]
  std::map<std::string, int32_t> by_name_;
  std::unique_ptr<void, AlignedFree> block_;  // all storage: the slots' arenas, then the persistent buffers
  int64_t arena_bytes_ = 0;
  int64_t persistent_bytes_ = 0;
  int32_t loss_id_ = -1;
  int slots_ = 1;
  Communicator *comm_ = nullptr;
  MemoryHooks hooks_;
  bool profile_on_ = false;
  bool in_run_program_ = false;  // inside MemoryHooks::run_program: run eagerly
  std::map<std::string, OpProfile> profile_;
  TimeSplit time_split_;
  std::string base_weights_used_;
  std::string adapter_weights_;  // Plan::adapter_weights
  TraceRecorder *trace_ = nullptr;
  DeviceTimer *timer_ = nullptr;
  std::vector<int64_t> marks_;  // the timer's markers, resolved (kept: no allocation per run)
};

} // namespace parallora::rt
