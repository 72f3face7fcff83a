//===- trace.h - one rank's measured timeline (lora-run --trace) -----------===//
//
// A TraceRecorder holds the begin / end of every instruction the executor runs (and the
// session's own spans: steps, data loading, validation, checkpoint saves, the control
// all-reduce) as fixed-size events in ONE buffer allocated up front: recording an event is a
// bounds check and a 64-byte store, no allocation, no formatting. The executor already reads
// the steady clock before and after every kernel (its time split), so tracing adds no clock
// read per kernel. When the buffer is full, later events are dropped and counted (dropped()).
//
// Tracks (Chrome trace "tid" of the rank's process):
//   session  steps, programs (micro_step / forward / backward / optimizer_step / eval_step),
//            data loading, validation, checkpoint saves (properly nested: sequential host code)
//   compute  every kernel that is not communication (is_comm_op)
//   comm     the communication kernels (all_reduce, send, recv, broadcast, all_reduce_start /
//            _wait), the end-of-step flush of outstanding sends and the control all-reduce: the
//            time the rank is blocked in communication (exposed communication, waits included)
//   idle     derived when written: the gaps inside a step where the rank runs no kernel and no
//            communication (data loading, host bookkeeping)
// and, as async slices (ph "b"/"e"), each gradient bucket from its all_reduce_start to its
// all_reduce_wait: the communication that can hide behind the compute in between; on a backend
// that measures it (NCCL), also the reduction's own device time ("bucket K on the device").
//
// Times are this rank's std::chrono::steady_clock in nanoseconds; the session aligns the ranks
// (runtime/train/trace.h) and passes each rank's offset to append_json.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

enum class TraceTrack : uint8_t { Session = 0, Compute = 1, Comm = 2, Idle = 3 };
// DeviceInstr: an instruction whose times are still DeviceTimer marker indices (resolved into
// an Instr when the run's markers are; an unresolved one, after an error, is never written).
// DeviceComm: a gradient bucket's reduction as the device ran it (written as an async slice,
// not counted in breakdown()).
enum class TraceKind : uint8_t { Instr = 0, Program = 1, Step = 2, Span = 3, DeviceInstr = 4, DeviceComm = 5 };

/// One recorded event (trivially constructible: the buffer is not touched until written).
struct TraceEvent {
  int64_t begin_ns, end_ns;        // this rank's steady clock
  const plan::Instr *instr;        // Instr: the instruction (owned by the executor's plan copy)
  const char *name;                // Span: a string with static storage; Program: the program name
  const std::string *program;      // Instr / Program: the program (owned by the executor)
  int64_t step;                    // optimizer step of the context (0: before training)
  int32_t micro_batch;             // -1: none (optimizer_step, session spans)
  int16_t slot;                    // -1: none
  TraceTrack track;
  TraceKind kind;
  int64_t arg;                     // Span: bytes of a control message, else -1
};

/// Device-side timing for an asynchronous backend (MemoryHooks::sync set), where a kernel call
/// only enqueues work: the CUDA backend records events on its compute stream
/// (cuda::BackendApi::make_device_timer). With a timer, the executor times each compute kernel
/// between two markers and resolves them after the run's final sync.
class DeviceTimer {
public:
  virtual ~DeviceTimer() = default;
  /// Enqueues a timestamp after the work enqueued so far on the compute stream; returns its
  /// index among this run's markers (0, 1, ...), or -1 when it cannot (the kernel is then
  /// host-timed).
  virtual int64_t mark() = 0;
  /// Once the device has finished the marked work: every marker's time on this process's
  /// steady clock in ns (ns->size() == number of markers), then the markers are recycled.
  virtual Status resolve(std::vector<int64_t> *ns) = 0;
};

/// Per-rank totals over the step spans (what the summary reports).
struct TraceBreakdown {
  double step_s = 0;          // sum of the step spans
  double compute_s = 0;       // compute kernels inside steps
  double exposed_comm_s = 0;  // comm-track events inside steps (the rank waits for them)
  double hidden_comm_s = 0;   // compute time while a gradient bucket is in flight (at most)
  double idle_s = 0;          // step_s - compute_s - exposed_comm_s
  int64_t events = 0, dropped = 0;
};

class TraceRecorder {
public:
  using clock = std::chrono::steady_clock;
  static constexpr size_t kDefaultCapacity = size_t(1) << 20;  // 64 MiB of events

  /// Room for `capacity` events (capacity() is 0 when they cannot be allocated).
  explicit TraceRecorder(size_t capacity = kDefaultCapacity);

  static int64_t to_ns(clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }
  static int64_t now_ns() { return to_ns(clock::now()); }

  /// The step and micro-batch the following instructions belong to (set by the session).
  void set_context(int64_t step, int micro_batch) {
    step_ = step;
    micro_batch_ = micro_batch;
  }
  void set_micro_batch(int micro_batch) { micro_batch_ = micro_batch; }
  /// Buffers of the rank (the bytes of a collective are its operands' bytes).
  void set_rank_plan(const plan::RankPlan *rank_plan) { rank_plan_ = rank_plan; }

  void instr(const plan::Instr &in, const std::string *program, int slot, bool comm, clock::time_point begin,
             clock::time_point end) {
    if (TraceEvent *e = next()) {
      *e = TraceEvent{to_ns(begin), to_ns(end), &in, nullptr, program, step_, micro_batch_,
                      static_cast<int16_t>(slot), comm ? TraceTrack::Comm : TraceTrack::Compute, TraceKind::Instr, -1};
    }
  }
  /// An instruction timed by DeviceTimer markers `begin_mark` / `end_mark` (resolve_device).
  void device_instr(const plan::Instr &in, const std::string *program, int slot, int64_t begin_mark,
                    int64_t end_mark) {
    if (TraceEvent *e = next())
      *e = TraceEvent{begin_mark, end_mark, &in, nullptr, program, step_, micro_batch_, static_cast<int16_t>(slot),
                      TraceTrack::Compute, TraceKind::DeviceInstr, -1};
  }
  /// Turns the DeviceInstr events from index `from` on into Instr events with the markers'
  /// times `ns` (DeviceTimer::resolve); markers out of range leave an event unresolved.
  void resolve_device(size_t from, const std::vector<int64_t> &ns);
  /// Gradient bucket `bucket`'s reduction as the device ran it (Communicator::device_span).
  void device_comm(int64_t bucket, int64_t begin_ns, int64_t end_ns) {
    if (TraceEvent *e = next())
      *e = TraceEvent{begin_ns, end_ns, nullptr, "device", nullptr, step_, micro_batch_, -1, TraceTrack::Comm,
                      TraceKind::DeviceComm, bucket};
  }
  void program(const std::string *program, int slot, int64_t begin_ns, int64_t end_ns) {
    if (TraceEvent *e = next())
      *e = TraceEvent{begin_ns, end_ns, nullptr, program->c_str(), program, step_, micro_batch_,
                      static_cast<int16_t>(slot), TraceTrack::Session, TraceKind::Program, -1};
  }
  void step(int64_t step, int64_t begin_ns, int64_t end_ns) {
    if (TraceEvent *e = next())
      *e = TraceEvent{begin_ns, end_ns, nullptr, "step", nullptr, step, -1, -1, TraceTrack::Session, TraceKind::Step, -1};
  }
  /// A session span; `name` must have static storage.
  void span(TraceTrack track, const char *name, int64_t begin_ns, int64_t end_ns, int64_t arg = -1) {
    if (TraceEvent *e = next())
      *e = TraceEvent{begin_ns, end_ns, nullptr, name, nullptr, step_, -1, -1, track, TraceKind::Span, arg};
  }

  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  int64_t dropped() const { return dropped_; }
  const TraceEvent &operator[](size_t i) const { return events_[i]; }
  void clear() {
    size_ = 0;
    dropped_ = 0;
  }
  /// Earliest begin of any event (0 when empty).
  int64_t first_ns() const;

  /// Totals over the step spans (see TraceBreakdown).
  TraceBreakdown breakdown() const;

  /// Appends this rank's events as Chrome trace event objects separated by commas (no
  /// brackets) to `out`: the process / thread names of `pid` first, then every track ordered
  /// by begin (a parent before its children), the idle gaps and the buckets' async slices.
  /// Written times: (t - offset_ns - origin_ns) / 1000 microseconds, offset_ns being this
  /// rank's clock minus rank 0's and origin_ns the merged trace's time zero on rank 0's clock.
  void append_json(std::string &out, int pid, const std::string &process_name, int64_t offset_ns,
                   int64_t origin_ns) const;

  /// Gaps shorter than this inside a step are not written as idle slices (they still count as
  /// idle in breakdown()): the loop's own overhead between kernels is tens of nanoseconds.
  static constexpr int64_t kMinIdleNs = 2000;

private:
  TraceEvent *next() {
    if (size_ == capacity_) {
      ++dropped_;
      return nullptr;
    }
    return &events_[size_++];
  }

  std::unique_ptr<TraceEvent[]> events_;
  size_t capacity_ = 0, size_ = 0;
  int64_t dropped_ = 0;
  int64_t step_ = 0;
  int micro_batch_ = -1;
  const plan::RankPlan *rank_plan_ = nullptr;
};

/// Records a session span from construction to destruction; no-op for a null recorder.
class TraceScope {
public:
  TraceScope(TraceRecorder *rec, TraceTrack track, const char *name)
      : rec_(rec), track_(track), name_(name), begin_(rec ? TraceRecorder::now_ns() : 0) {}
  ~TraceScope() {
    if (rec_) rec_->span(track_, name_, begin_, TraceRecorder::now_ns());
  }
  TraceScope(const TraceScope &) = delete;
  TraceScope &operator=(const TraceScope &) = delete;

private:
  TraceRecorder *rec_;
  TraceTrack track_;
  const char *name_;
  int64_t begin_;
};

/// `s` as the body of a JSON string (quotes, backslashes and control characters escaped).
void append_json_escaped(std::string &out, const std::string &s);

} // namespace parallora::rt
