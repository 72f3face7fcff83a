//===- executor.cpp - runs one rank of a plan on a kernel registry --------===//
#include "runtime/core/executor.h"
#include "runtime/base/bf16.h"
#include "runtime/comm/comm.h"
#include "runtime/core/tensor_slice.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "runtime/base/safetensors.h"
#include "runtime/plan/weight_init.h"
#include "runtime/plan/plan_io.h"

#include <zlib.h>

namespace parallora::rt {
namespace {

constexpr int64_t kAlign = 64;
// Trainables with init "checkpoint" are a PEFT export's adapters: say where their values come from.
constexpr const char *kAdapterHint =
    "; the adapters' values come from --init-adapter <PEFT adapter dir>, or recompile the ONNX export with "
    "lora-compile -o, which carries its adapter values in the plan";

int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// zlib's CRC32 of n bytes (in pieces: zlib takes 32-bit lengths).
uint32_t crc32_bytes(const uint8_t *p, size_t n) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  for (size_t off = 0; off < n;) {
    const size_t len = std::min<size_t>(n - off, size_t(1) << 30);
    crc = ::crc32(crc, p + off, static_cast<uInt>(len));
    off += len;
  }
  return uint32_t(crc);
}

std::string shape_str(const std::vector<int64_t> &shape) {
  if (shape.empty()) return "scalar";
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

std::string join_names(const std::vector<std::string> &names, size_t max_shown = 8) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < max_shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > max_shown) s += " (and " + std::to_string(names.size() - max_shown) + " more)";
  return s;
}


} // namespace

bool is_comm_op(const std::string &op) {
  return op == "all_reduce" || op == "send" || op == "recv" || op == "broadcast" || op == "all_reduce_start" ||
         op == "all_reduce_wait";
}

void Executor::AlignedFree::operator()(void *p) const {
  if (!p) return;
  if (free)
    free(p);
  else
    std::free(p);
}

std::unique_ptr<void, Executor::AlignedFree> Executor::allocate(int64_t bytes) const {
  size_t n = static_cast<size_t>(round_up(std::max<int64_t>(bytes, 1), kAlign));
  void *p = hooks_.alloc ? hooks_.alloc(n) : std::aligned_alloc(kAlign, n);
  if (p && !(hooks_.alloc && hooks_.zeroed)) std::memset(p, 0, n);
  return std::unique_ptr<void, AlignedFree>(p, AlignedFree{hooks_.alloc ? hooks_.free : nullptr});
}

Executor::~Executor() = default;

StatusOr<std::unique_ptr<Executor>> Executor::create(const plan::Plan &plan, int rank,
                                                     const KernelRegistry &registry, const std::string &backend,
                                                     Communicator *comm, const MemoryHooks *memory) {
  if (Status s = plan::validate_plan(plan); !s) return Status::error("invalid plan: " + s.message());
  if (rank < 0 || rank >= static_cast<int>(plan.ranks.size()))
    return Status::error("rank " + std::to_string(rank) + " is not in the plan (world size " +
                         std::to_string(plan.ranks.size()) + ")");
  std::unique_ptr<Executor> ex(new Executor());
  ex->rank_ = plan.ranks[rank];
  ex->adapter_weights_ = plan.adapter_weights;
  ex->comm_ = comm;
  if (memory) ex->hooks_ = *memory;
  const plan::RankPlan &rp = ex->rank_;
  const int S = std::max(1, rp.slots);
  ex->slots_ = S;

  // Every kernel must exist; report all missing ones at once, in first-use order.
  std::vector<std::string> missing_order;
  std::map<std::string, int64_t> missing_uses;
  for (const plan::Program &prog : rp.programs)
    for (const plan::Instr &in : prog.instrs) {
      if (ex->kernels_.count(in.op)) continue;
      if (const KernelFn *fn = registry.find(in.op)) {
        ex->kernels_[in.op] = *fn;
        continue;
      }
      if (missing_uses[in.op]++ == 0) missing_order.push_back(in.op);
    }
  if (!missing_order.empty()) {
    std::string msg = "plan needs kernels not in the " + backend + " backend: ";
    for (size_t i = 0; i < missing_order.size(); ++i) {
      int64_t uses = missing_uses[missing_order[i]];
      msg += (i ? ", " : "") + missing_order[i] + (uses > 1 ? " (" + std::to_string(uses) + " uses)" : "");
    }
    return Status::error(msg);
  }

  // Storage: ONE allocation (one device allocation on CUDA): the arenas of the S slots, then the
  // persistent buffers (shared kinds once, Input/Output once per slot), each 64-byte aligned.
  auto per_slot = [](const plan::Buffer &b) {
    return b.kind == plan::BufferKind::Input || b.kind == plan::BufferKind::Output;
  };
  ex->arena_bytes_ = rp.arena_bytes;
  const int64_t arena_stride = round_up(rp.arena_bytes, kAlign);
  int64_t persistent = 0;
  std::vector<std::vector<int64_t>> offsets(S, std::vector<int64_t>(rp.buffers.size(), -1));
  for (const plan::Buffer &b : rp.buffers) {
    if (b.kind == plan::BufferKind::Activation) continue;
    for (int k = 0; k < S; ++k) {
      if (k > 0 && !per_slot(b)) {
        offsets[k][b.id] = offsets[0][b.id];
        continue;
      }
      offsets[k][b.id] = persistent;
      persistent += round_up(b.nbytes(), kAlign);
    }
  }
  ex->persistent_bytes_ = persistent;
  // set_loss_denominator's two words after the persistent buffers (the runtime's, not the plan's:
  // not counted in persistent_bytes()).
  const int64_t denominator_offset = persistent;
  ex->block_ = ex->allocate(S * arena_stride + persistent + kAlign);
  if (!ex->block_)
    return Status::error("out of memory allocating " + std::to_string(S) + " x " + std::to_string(rp.arena_bytes) +
                         " arena bytes + " + std::to_string(persistent) + " persistent bytes for rank " +
                         std::to_string(rank));
  auto *base = static_cast<uint8_t *>(ex->block_.get());
  auto *store = base + S * arena_stride;
  ex->loss_denominator_ = reinterpret_cast<int32_t *>(store + denominator_offset);
  ex->loss_denominator_[0] = ex->loss_denominator_[1] = 0;
  const Tensor denominator{ex->loss_denominator_, plan::ElemType::I32, {2}};
  ex->tensors_.assign(S, std::vector<BufferTensor>(rp.buffers.size()));
  for (int k = 0; k < S; ++k) {
    auto *arena = base + k * arena_stride;
    for (const plan::Buffer &b : rp.buffers) {
      BufferTensor &t = ex->tensors_[k][b.id];
      t.buffer = &b;
      t.tensor.dtype = b.dtype;
      t.tensor.shape = b.shape;
      t.tensor.data = b.kind == plan::BufferKind::Activation ? arena + b.offset : store + offsets[k][b.id];
    }
  }
  for (const plan::Buffer &b : rp.buffers) {
    if (!b.name.empty()) ex->by_name_.emplace(b.name, b.id);
    if (b.kind == plan::BufferKind::Output && b.name == "loss") ex->loss_id_ = b.id;
  }

  // Prebuilt calls, one set per slot.
  for (const plan::Program &prog : rp.programs) {
    std::vector<CompiledProgram> &per = ex->programs_[prog.name];
    per.resize(S);
    for (int k = 0; k < S; ++k) {
      CompiledProgram &cp = per[k];
      cp.calls.resize(prog.instrs.size());
      cp.fns.resize(prog.instrs.size());
      for (size_t i = 0; i < prog.instrs.size(); ++i) {
        const plan::Instr &in = prog.instrs[i];
        KernelCall &c = cp.calls[i];
        c.instr = &in;
        c.comm = comm;
        for (int32_t id : in.inputs) c.in.push_back(id < 0 ? Tensor{} : ex->tensors_[k][id].tensor);
        if ((in.op == "cross_entropy_fwd" || in.op == "cross_entropy_bwd") && c.in.size() == 2) c.in.push_back(denominator);
        for (int32_t id : in.outputs) c.out.push_back(id < 0 ? Tensor{} : ex->tensors_[k][id].tensor);
        cp.fns[i] = &ex->kernels_.at(in.op);
        cp.comm.push_back(is_comm_op(in.op) ? 1 : 0);
      }
    }
  }
  return ex;
}

Status Executor::check_slot(int slot) const {
  if (slot < 0 || slot >= slots_)
    return Status::error("slot " + std::to_string(slot) + " is out of range (the rank has " + std::to_string(slots_) +
                         " slot" + (slots_ == 1 ? "" : "s") + ")");
  return Status::ok();
}

Status Executor::init_parameters(const std::string &weights_path, uint64_t seed, bool skip_trainables) {
  std::vector<const plan::Buffer *> from_checkpoint;
  std::vector<const plan::Buffer *> from_adapter_file;  // Trainables read from Plan::adapter_weights
  std::vector<float> full;
  // f32 staging of a bf16 parameter: filled as if it were f32, then rounded into the tensor.
  struct Narrow {
    std::vector<float> f32;
    float *data(int64_t n) {
      f32.resize(static_cast<size_t>(n));
      return f32.data();
    }
    void store(const Tensor &t) const {
      if (t.dtype == plan::ElemType::BF16) f32_to_bf16(f32.data(), t.bf16(), t.numel());
    }
  } narrow;
  // Given weights override the plan's init specs of the frozen parameters: a plan compiled
  // without --weights draws them at random, and `lora-run --weights DIR` must not be ignored.
  const bool weights_given = !weights_path.empty();
  for (const plan::Buffer &b : rank_.buffers) {
    BufferTensor &t = tensors_[0][b.id];
    switch (b.kind) {
    case plan::BufferKind::Trainable:
      if (skip_trainables) break;
      [[fallthrough]];
    case plan::BufferKind::Param:
      if (b.kind == plan::BufferKind::Trainable && (b.init.empty() || b.init == "checkpoint") &&
          !adapter_weights_.empty()) {
        from_adapter_file.push_back(&b);
      } else if (b.init.empty() || b.init == "checkpoint" || (weights_given && b.kind == plan::BufferKind::Param)) {
        from_checkpoint.push_back(&b);
      } else {
        if (b.dtype == plan::ElemType::I32)
          return Status::error("parameter '" + b.name + "' is i32; only float parameters can be initialised with '" +
                               b.init + "'");
        auto spec = parse_init_spec(b.init);
        if (!spec) return Status::error("parameter '" + b.name + "': " + spec.message());
        // bf16 parameters: drawn in f32 (the same numbers as an fp32 plan), then rounded.
        float *dst = b.dtype == plan::ElemType::F32 ? t.tensor.f32() : narrow.data(b.numel());
        if (b.slice.empty()) {
          init_tensor(*spec, b.name, seed, dst, b.shape);
        } else {
          // Draw the whole tensor as the single-device plan does, keep this rank's slice.
          if (b.full_shape.size() != b.slice.size())
            return Status::error("parameter '" + b.name + "' is a slice with init '" + b.init +
                                 "' but the plan gives no full_shape to draw it from");
          int64_t n = 1;
          for (int64_t d : b.full_shape) n *= d;
          full.assign(static_cast<size_t>(n), 0.f);
          init_tensor(*spec, b.name, seed, full.data(), b.full_shape);
          take_slice(full.data(), b.full_shape, b.slice, dst);
        }
        narrow.store(t.tensor);
      }
      break;
    case plan::BufferKind::Activation:
      break;
    case plan::BufferKind::Input:
    case plan::BufferKind::Output:
      for (int k = 0; k < slots_; ++k) std::memset(tensors_[k][b.id].tensor.data, 0, static_cast<size_t>(b.nbytes()));
      break;
    default:
      std::memset(t.tensor.data, 0, static_cast<size_t>(b.nbytes()));
    }
  }
  base_weights_used_.clear();
  // Reads `list` from the safetensors at `path` (checked: presence, shape, dtype); `used` gets
  // "PATH (crc32 ... of the N tensors read ...)".
  auto load = [&](const std::vector<const plan::Buffer *> &list, const std::string &path, std::string *used) -> Status {
    auto store = WeightStore::open(path);
    if (!store) return store.status();

    std::vector<std::string> missing;
    bool adapter_missing = false;
    for (const plan::Buffer *b : list)
      if (!store->find(b->name)) {
        missing.push_back(b->name);
        adapter_missing |= b->kind == plan::BufferKind::Trainable;
      }
    if (!missing.empty())
      return Status::error(path + " lacks " + std::to_string(missing.size()) +
                           " tensor(s) the plan needs: " + join_names(missing) +
                           (adapter_missing ? std::string(kAdapterHint) : std::string()));

    std::vector<float> scratch;
    // Content hash of what was read: CRC32 (zlib's) chained over the raw bytes of every tensor
    // read, in name order, so the same checkpoint gives the same hash whatever its file layout.
    // Each tensor's CRC is taken while its pages are in memory and the chain is assembled with
    // crc32_combine afterwards, so each tensor's mapped pages can be released (WeightStore::
    // release) right after its copy: the mapping then never holds more than one tensor.
    std::map<std::string, std::pair<uint32_t, size_t>> read;  // name -> (crc of its bytes, size)
    for (const plan::Buffer *b : list) {
      const TensorView *v = store->find(b->name);
      if (auto [it, fresh] = read.try_emplace(b->name); fresh) it->second = {crc32_bytes(v->data, v->nbytes), v->nbytes};
      const Tensor &t = tensors_[0][b->id].tensor;
      if (b->dtype == plan::ElemType::I32)
        return Status::error("parameter '" + b->name + "' is i32; only float parameters can be read from a checkpoint");
      float *dst = b->dtype == plan::ElemType::F32 ? t.f32() : narrow.data(b->numel());
      if (!b->full_shape.empty() && v->shape != b->full_shape)
        return Status::error(path + ": tensor '" + b->name + "' has shape " + shape_str(v->shape) +
                             " but the plan was compiled for " + shape_str(b->full_shape));
      if (b->slice.empty()) {
        if (v->shape != b->shape)
          return Status::error(path + ": tensor '" + b->name + "' has shape " + shape_str(v->shape) +
                               " but the plan needs " + shape_str(b->shape));
        if (Status s = to_f32(*v, dst); !s) return Status::error(path + ": " + s.message());
      } else {
        bool fits = v->shape.size() == b->slice.size();
        for (size_t d = 0; fits && d < b->slice.size(); ++d)
          fits = b->slice[d].first + b->slice[d].second <= v->shape[d];
        if (!fits) {
          std::string sl;
          for (size_t d = 0; d < b->slice.size(); ++d)
            sl += (d ? ", " : "") + std::to_string(b->slice[d].first) + ":" +
                  std::to_string(b->slice[d].first + b->slice[d].second);
          return Status::error(path + ": tensor '" + b->name + "' has shape " + shape_str(v->shape) +
                               " but the plan needs its slice [" + sl + "]");
        }
        scratch.resize(static_cast<size_t>(v->numel()));
        if (Status s = to_f32(*v, scratch.data()); !s) return Status::error(path + ": " + s.message());
        take_slice(scratch.data(), v->shape, b->slice, dst);
      }
      narrow.store(t);  // a bf16 checkpoint tensor round-trips exactly
      store->release(*v);
    }
    uLong crc = ::crc32(0L, Z_NULL, 0);
    for (auto &[name, c] : read) crc = ::crc32_combine(crc, c.first, static_cast<z_off_t>(c.second));
    char hex[16];
    std::snprintf(hex, sizeof hex, "%08x", crc);
    if (used) *used = path + " (crc32 " + hex + " of the " + std::to_string(read.size()) +
                      " tensors read, raw bytes in name order)";
    return Status::ok();
  };
  if (!from_adapter_file.empty())
    if (Status s = load(from_adapter_file, adapter_weights_, nullptr); !s)
      return Status::error("the plan's adapter init " + s.message());
  if (from_checkpoint.empty()) {
    base_weights_used_ = "random init, seed " + std::to_string(seed);
    return Status::ok();
  }
  if (weights_path.empty())
    return Status::error("parameter '" + from_checkpoint.front()->name + "'" +
                         (from_checkpoint.size() > 1
                              ? " (and " + std::to_string(from_checkpoint.size() - 1) + " more)"
                              : std::string()) +
                         " must be loaded from a checkpoint but no weights were given: pass --weights "
                         "<HF model dir or .safetensors file>" +
                         (from_checkpoint.front()->kind == plan::BufferKind::Trainable ? kAdapterHint : ""));
  return load(from_checkpoint, weights_path, &base_weights_used_);
}

Status Executor::set_kind(plan::BufferKind kind, const char *what,
                          const std::map<std::string, std::vector<float>> &values,
                          const std::map<std::string, std::vector<int64_t>> *shapes) {
  std::vector<std::string> missing, unexpected, mismatched;
  std::map<std::string, const plan::Buffer *> wanted;
  for (const plan::Buffer &b : rank_.buffers)
    if (b.kind == kind) wanted[b.name] = &b;
  for (auto &[name, b] : wanted) {
    auto it = values.find(name);
    if (it == values.end()) {
      missing.push_back(name);
      continue;
    }
    if (shapes) {
      auto sit = shapes->find(name);
      if (sit != shapes->end() && sit->second != b->shape) {
        mismatched.push_back(name + " is " + shape_str(sit->second) + ", the plan needs " + shape_str(b->shape));
        continue;
      }
    }
    if (static_cast<int64_t>(it->second.size()) != b->numel())
      mismatched.push_back(name + " has " + std::to_string(it->second.size()) + " values, the plan needs " +
                           std::to_string(b->numel()) + " (" + shape_str(b->shape) + ")");
  }
  for (auto &[name, v] : values)
    if (!wanted.count(name)) unexpected.push_back(name);
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string msg = std::string(what) + " do not match the plan:";
    if (!missing.empty()) msg += " missing " + join_names(missing) + ";";
    if (!unexpected.empty()) msg += " not in the plan " + join_names(unexpected) + ";";
    if (!mismatched.empty()) msg += " wrong shape: " + join_names(mismatched) + ";";
    msg.pop_back();
    return Status::error(msg);
  }
  for (auto &[name, b] : wanted) {
    const std::vector<float> &v = values.at(name);
    std::memcpy(tensors_[0][b->id].tensor.data, v.data(), v.size() * sizeof(float));
  }
  return Status::ok();
}

Status Executor::set_trainables(const std::map<std::string, std::vector<float>> &values,
                                const std::map<std::string, std::vector<int64_t>> *shapes) {
  return set_kind(plan::BufferKind::Trainable, "adapter tensors", values, shapes);
}

Status Executor::set_optimizer_state(const std::map<std::string, std::vector<float>> &values) {
  return set_kind(plan::BufferKind::OptState, "optimizer state tensors", values, nullptr);
}

Status Executor::feed(const std::string &input_name, const int32_t *data, int64_t count, int slot) {
  if (Status s = check_slot(slot); !s) return Status::error("feed '" + input_name + "': " + s.message());
  auto it = by_name_.find(input_name);
  if (it == by_name_.end() || rank_.buffers[it->second].kind != plan::BufferKind::Input)
    return Status::error("the plan has no input '" + input_name + "'");
  const plan::Buffer &b = rank_.buffers[it->second];
  if (count != b.numel())
    return Status::error("input '" + input_name + "' takes " + std::to_string(b.numel()) + " values (" +
                         shape_str(b.shape) + "), got " + std::to_string(count));
  const Tensor &t = tensors_[slot][b.id].tensor;
  if (b.dtype == plan::ElemType::I32) {
    std::memcpy(t.data, data, static_cast<size_t>(count) * sizeof(int32_t));
  } else {
    float *dst = t.f32();
    for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<float>(data[i]);
  }
  return Status::ok();
}

bool Executor::has_program(const std::string &program) const { return programs_.count(program) != 0; }

Status Executor::run(const std::string &program, StepState *step, int slot) {
  return run(program, step, InstrHook(), slot);
}

Status Executor::run(const std::string &program, StepState *step, const InstrHook &after, int slot) {
  auto it = programs_.find(program);
  if (it == programs_.end()) {
    std::string have;
    for (auto &kv : programs_) have += (have.empty() ? "" : ", ") + kv.first;
    return Status::error("the plan has no program '" + program + "' (it has: " + (have.empty() ? "none" : have) + ")");
  }
  if (Status s = check_slot(slot); !s) return Status::error("program '" + program + "': " + s.message());
  CompiledProgram &cp = it->second[slot];
  const size_t n = cp.calls.size();
  // The program's span on the trace's session track (once: not again for the eager run inside
  // MemoryHooks::run_program).
  struct ProgramSpan {
    TraceRecorder *trace;
    const std::string *program;
    int slot;
    int64_t begin_ns;
    ~ProgramSpan() {
      if (trace) trace->program(program, slot, begin_ns, TraceRecorder::now_ns());
    }
  } program_span{in_run_program_ ? nullptr : trace_, &it->first, slot, trace_ ? TraceRecorder::now_ns() : 0};
  // A backend that runs whole programs (MemoryHooks::run_program, e.g. CUDA graph replay).
  if (hooks_.run_program && !in_run_program_ && !after && !profile_on_ &&
      std::find(cp.comm.begin(), cp.comm.end(), 1) == cp.comm.end()) {
    in_run_program_ = true;
    bool eager_ran = false;
    const auto t0 = std::chrono::steady_clock::now();
    Status s = hooks_.run_program(program, slot, [&] {
      eager_ran = true;
      return run(program, step, after, slot);  // accounts its own time split
    });
    in_run_program_ = false;
    if (!eager_ran) {  // replayed: the whole wall time is compute
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      time_split_.run_s += wall;
      time_split_.compute_s += wall;
      time_split_.runs += 1;
    }
    if (!s) return Status::error("program '" + program + "': " + s.message());
    return s;
  }
  // Time split (see executor.h): comm = communication kernels; compute = the other kernels
  // (synchronous backends) or the run's wall time minus comm and InstrHook time (asynchronous).
  using clock = std::chrono::steady_clock;
  const bool async = static_cast<bool>(hooks_.sync);
  const clock::time_point t_run = clock::now();
  double comm_s = 0, compute_s = 0, hook_s = 0;
  int64_t comm_calls = 0;
  auto account_fn = [&] {
    double wall = std::chrono::duration<double>(clock::now() - t_run).count();
    time_split_.run_s += wall;
    time_split_.comm_s += comm_s;
    time_split_.compute_s += async ? std::max(0.0, wall - comm_s - hook_s) : compute_s;
    time_split_.comm_calls += comm_calls;
    time_split_.runs += 1;
  };
  struct Account {  // accounts the run on every return path (no allocation)
    decltype(account_fn) &fn;
    ~Account() { fn(); }
  } account{account_fn};
  DeviceTimer *const timer = async ? timer_ : nullptr;  // device markers (see "Trace")
  const size_t trace_from = trace_ ? trace_->size() : 0;
  for (size_t i = 0; i < n; ++i) {
    KernelCall &c = cp.calls[i];
    c.step = step;
    const bool comm = cp.comm[i] != 0;
    Status s;
    if (comm && async) s = sync();  // the wait for queued compute kernels is not communication
    // Overlapped gradient buckets (all_reduce_start): let them advance between kernels.
    if (!comm && comm_ && comm_->any_started()) comm_->progress();
    const int64_t mark0 = timer && !comm ? timer->mark() : -1;
    const clock::time_point t0 = clock::now();
    if (s) s = (*cp.fns[i])(c);
    const int64_t mark1 = mark0 >= 0 ? timer->mark() : -1;
    // Profiling times the kernel, not only its launch; a collective on an asynchronous backend
    // is timed until its work is done.
    if (s && (profile_on_ || (comm && async))) s = sync();
    const clock::time_point t1 = clock::now();
    const double dt = std::chrono::duration<double>(t1 - t0).count();
    if (trace_) {
      if (mark1 >= 0) trace_->device_instr(*c.instr, &it->first, slot, mark0, mark1);
      else trace_->instr(*c.instr, &it->first, slot, comm, t0, t1);
      if (comm && comm_ && s) trace_device_comm(*c.instr);
    }
    if (comm) {
      comm_s += dt;
      ++comm_calls;
    } else {
      compute_s += dt;
    }
    if (profile_on_) {
      OpProfile &p = profile_[c.instr->op];
      p.seconds += dt;
      p.calls += 1;
      p.flops += c.instr->flops;
    }
    if (!s) {
      (void)sync();  // leave no queued work behind (its own error is secondary)
      const plan::Instr &in = *c.instr;
      return Status::error("instruction #" + std::to_string(i) + " " + in.op +
                           (in.loc.empty() ? "" : " (" + in.loc + ")") + ": " + s.message());
    }
    if (after) {
      if (Status ss = sync(); !ss)  // waits for compute kernels: counted as compute
        return Status::error("program '" + program + "' after instruction #" + std::to_string(i) + ": " +
                             ss.message());
      const clock::time_point th = clock::now();
      after(i, c);
      hook_s += std::chrono::duration<double>(clock::now() - th).count();
    }
  }
  if (Status ss = sync(); !ss) return Status::error("program '" + program + "': " + ss.message());
  if (timer) {
    if (Status ss = timer->resolve(&marks_); !ss) return Status::error("program '" + program + "': " + ss.message());
    trace_->resolve_device(trace_from, marks_);
  }
  return Status::ok();
}

void Executor::set_loss_denominator(int64_t label_count, int64_t shares) {
  loss_denominator_[0] = static_cast<int32_t>(label_count);
  loss_denominator_[1] = static_cast<int32_t>(shares);
}

void Executor::set_trace(TraceRecorder *trace, DeviceTimer *timer) {
  trace_ = trace;
  timer_ = trace ? timer : nullptr;
  if (trace) trace->set_rank_plan(&rank_);
  if (comm_) comm_->set_device_timing(timer_ != nullptr);  // the buckets' device times (NCCL)
}

void Executor::trace_device_comm(const plan::Instr &in) {
  if (in.op != "all_reduce_wait") return;
  auto it = in.attrs.find("bucket");
  const int64_t *bucket = it == in.attrs.end() ? nullptr : std::get_if<int64_t>(&it->second);
  int64_t begin_ns = 0, end_ns = 0;
  if (bucket && *bucket >= 0 && *bucket <= INT32_MAX && comm_->device_span(static_cast<int>(*bucket), &begin_ns, &end_ns))
    trace_->device_comm(*bucket, begin_ns, end_ns);
}

double Executor::loss(int slot) const {
  if (loss_id_ < 0 || slot < 0 || slot >= slots_) return std::numeric_limits<double>::quiet_NaN();
  return tensors_[slot][loss_id_].tensor.f32()[0];
}

std::vector<BufferTensor> Executor::buffers(plan::BufferKind kind, int slot) const {
  std::vector<BufferTensor> out;
  if (slot < 0 || slot >= slots_) return out;
  for (const BufferTensor &t : tensors_[slot])
    if (t.buffer->kind == kind) out.push_back(t);
  return out;
}

const BufferTensor *Executor::find(const std::string &name, int slot) const {
  if (slot < 0 || slot >= slots_) return nullptr;
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[slot][it->second];
}

} // namespace parallora::rt
