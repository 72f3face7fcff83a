//===- trace.cpp - one rank's measured timeline ----------------------------===//
#include "runtime/core/trace.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <limits>
#include <map>
#include <new>
#include <type_traits>
#include <utility>

namespace parallora::rt {

// The cost claims of trace.h: one 64-byte store per event, and a buffer whose pages are only
// touched as events are written.
static_assert(sizeof(TraceEvent) == 64, "TraceEvent grew: update the buffer size in lora-run --help and trace.h");
static_assert(std::is_trivially_default_constructible_v<TraceEvent>, "new TraceEvent[n] must not write the buffer");

namespace {

// Parents before children on one track: earlier begin first, then the longer one, then by kind.
int kind_rank(TraceKind k) {
  switch (k) {
  case TraceKind::Step: return 0;
  case TraceKind::Span: return 1;
  case TraceKind::Program: return 2;
  default: return 3;
  }
}

void append_int(std::string &out, int64_t v) {
  char buf[32];
  int n = std::snprintf(buf, sizeof buf, "%" PRId64, v);
  out.append(buf, static_cast<size_t>(n));
}

// Nanoseconds as microseconds with three decimals, exactly (no floating point).
void append_us(std::string &out, int64_t ns) {
  char buf[40];
  const bool neg = ns < 0;
  const uint64_t a = neg ? static_cast<uint64_t>(-(ns + 1)) + 1 : static_cast<uint64_t>(ns);
  int n = std::snprintf(buf, sizeof buf, "%s%" PRIu64 ".%03u", neg ? "-" : "", a / 1000, static_cast<unsigned>(a % 1000));
  out.append(buf, static_cast<size_t>(n));
}

int64_t int_attr(const plan::Instr &in, const char *name) {
  auto it = in.attrs.find(name);
  if (it == in.attrs.end()) return -1;
  if (auto *i = std::get_if<int64_t>(&it->second)) return *i;
  if (auto *d = std::get_if<double>(&it->second)) return static_cast<int64_t>(*d);
  return -1;
}

const std::string *str_attr(const plan::Instr &in, const char *name) {
  auto it = in.attrs.find(name);
  return it == in.attrs.end() ? nullptr : std::get_if<std::string>(&it->second);
}

// The decoder layer: the plan's field, else "layers.<n>" in the HF module path.
int64_t layer_of(const plan::Instr &in) {
  if (in.layer >= 0) return in.layer;
  size_t p = in.loc.find("layers.");
  if (p == std::string::npos) return -1;
  p += 7;
  int64_t v = 0;
  size_t q = p;
  while (q < in.loc.size() && in.loc[q] >= '0' && in.loc[q] <= '9') v = v * 10 + (in.loc[q++] - '0');
  return q > p ? v : -1;
}

// Payload bytes of a communication instruction: what it sends (its inputs) or, for recv and
// all_reduce_wait, what it receives (its outputs).
int64_t comm_bytes(const plan::Instr &in, const plan::RankPlan *rp) {
  if (!rp) return -1;
  const bool incoming = in.op == "recv" || in.op == "all_reduce_wait";
  int64_t n = 0;
  for (int32_t id : incoming ? in.outputs : in.inputs)
    if (id >= 0 && id < static_cast<int32_t>(rp->buffers.size())) n += rp->buffers[id].nbytes();
  return n;
}

// Gradient buckets in flight: [all_reduce_start's end, the matching all_reduce_wait's begin].
struct InFlight {
  int64_t bucket, begin_ns, end_ns;
};
std::vector<InFlight> buckets_in_flight(const TraceRecorder &rec) {
  std::map<int64_t, int64_t> open;  // bucket -> start's end
  std::vector<InFlight> out;
  for (size_t i = 0; i < rec.size(); ++i) {  // instructions are recorded in execution order
    const TraceEvent &e = rec[i];
    if (e.kind != TraceKind::Instr) continue;
    if (e.instr->op == "all_reduce_start") {
      open[int_attr(*e.instr, "bucket")] = e.end_ns;
    } else if (e.instr->op == "all_reduce_wait") {
      auto it = open.find(int_attr(*e.instr, "bucket"));
      if (it == open.end()) continue;
      out.push_back({it->first, it->second, std::max(it->second, e.begin_ns)});
      open.erase(it);
    }
  }
  return out;
}

std::vector<std::pair<int64_t, int64_t>> step_spans(const TraceRecorder &rec) {
  std::vector<std::pair<int64_t, int64_t>> steps;
  for (size_t i = 0; i < rec.size(); ++i)
    if (rec[i].kind == TraceKind::Step) steps.emplace_back(rec[i].begin_ns, rec[i].end_ns);
  std::sort(steps.begin(), steps.end());
  return steps;
}

// Index of the step span holding time t, or -1.
int64_t step_holding(const std::vector<std::pair<int64_t, int64_t>> &steps, int64_t t) {
  auto it = std::upper_bound(steps.begin(), steps.end(), std::make_pair(t, std::numeric_limits<int64_t>::max()));
  if (it == steps.begin()) return -1;
  --it;
  return t <= it->second ? it - steps.begin() : -1;
}

bool busy(const TraceEvent &e) {
  return (e.track == TraceTrack::Compute || e.track == TraceTrack::Comm) &&
         (e.kind == TraceKind::Instr || e.kind == TraceKind::Span);
}

} // namespace

void append_json_escaped(std::string &out, const std::string &s) {
  for (unsigned char c : s) {
    switch (c) {
    case '"': out += "\\\""; break;
    case '\\': out += "\\\\"; break;
    case '\n': out += "\\n"; break;
    case '\t': out += "\\t"; break;
    case '\r': out += "\\r"; break;
    default:
      if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
  }
}

TraceRecorder::TraceRecorder(size_t capacity)
    : events_(new (std::nothrow) TraceEvent[std::max<size_t>(capacity, 1)]), capacity_(events_ ? capacity : 0) {}

void TraceRecorder::resolve_device(size_t from, const std::vector<int64_t> &ns) {
  const int64_t n = static_cast<int64_t>(ns.size());
  for (size_t i = from; i < size_; ++i) {
    TraceEvent &e = events_[i];
    if (e.kind != TraceKind::DeviceInstr || e.begin_ns < 0 || e.begin_ns >= n || e.end_ns < 0 || e.end_ns >= n)
      continue;
    e.begin_ns = ns[static_cast<size_t>(e.begin_ns)];
    e.end_ns = std::max(e.begin_ns, ns[static_cast<size_t>(e.end_ns)]);
    e.kind = TraceKind::Instr;
  }
}

int64_t TraceRecorder::first_ns() const {
  if (size_ == 0) return 0;
  int64_t t = std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < size_; ++i)
    if (events_[i].kind != TraceKind::DeviceInstr) t = std::min(t, events_[i].begin_ns);
  return t == std::numeric_limits<int64_t>::max() ? 0 : t;
}

TraceBreakdown TraceRecorder::breakdown() const {
  TraceBreakdown b;
  b.events = static_cast<int64_t>(size_);
  b.dropped = dropped_;
  const auto steps = step_spans(*this);
  int64_t step_ns = 0, compute_ns = 0, exposed_ns = 0, hidden_ns = 0;
  for (auto &[s, e] : steps) step_ns += e - s;
  // In-flight intervals, merged, against the compute kernels inside steps.
  std::vector<std::pair<int64_t, int64_t>> flight;
  for (const InFlight &f : buckets_in_flight(*this))
    if (f.end_ns > f.begin_ns) flight.emplace_back(f.begin_ns, f.end_ns);
  std::sort(flight.begin(), flight.end());
  std::vector<std::pair<int64_t, int64_t>> merged;
  for (auto &iv : flight) {
    if (!merged.empty() && iv.first <= merged.back().second) merged.back().second = std::max(merged.back().second, iv.second);
    else merged.push_back(iv);
  }
  for (size_t i = 0; i < size_; ++i) {
    const TraceEvent &e = events_[i];
    if (!busy(e) || step_holding(steps, e.begin_ns) < 0) continue;
    const int64_t d = e.end_ns - e.begin_ns;
    if (e.track == TraceTrack::Comm) {
      exposed_ns += d;
      continue;
    }
    compute_ns += d;
    // Overlap with the merged in-flight intervals (few: one per bucket and step).
    auto it = std::upper_bound(merged.begin(), merged.end(), std::make_pair(e.begin_ns, std::numeric_limits<int64_t>::max()));
    if (it != merged.begin()) --it;
    for (; it != merged.end() && it->first < e.end_ns; ++it)
      hidden_ns += std::max<int64_t>(0, std::min(e.end_ns, it->second) - std::max(e.begin_ns, it->first));
  }
  b.step_s = step_ns * 1e-9;
  b.compute_s = compute_ns * 1e-9;
  b.exposed_comm_s = exposed_ns * 1e-9;
  b.hidden_comm_s = hidden_ns * 1e-9;
  b.idle_s = std::max<int64_t>(0, step_ns - compute_ns - exposed_ns) * 1e-9;
  return b;
}

void TraceRecorder::append_json(std::string &out, int pid, const std::string &process_name, int64_t offset_ns,
                                int64_t origin_ns) const {
  auto ts = [&](int64_t t) { return t - offset_ns - origin_ns; };
  bool first = out.empty() || out.back() == '[' || out.back() == ',';
  auto open = [&](const char *ph, int tid) {
    if (!first) out += ',';
    first = false;
    out += "\n{\"ph\":\"";
    out += ph;
    out += "\",\"pid\":";
    append_int(out, pid);
    out += ",\"tid\":";
    append_int(out, tid);
  };
  auto meta = [&](int tid, const char *what, const std::string &name, int sort) {
    open("M", tid);
    out += ",\"name\":\"";
    out += what;
    out += "\",\"args\":{\"name\":\"";
    append_json_escaped(out, name);
    out += "\"}}";
    open("M", tid);
    out += what[0] == 'p' ? ",\"name\":\"process_sort_index\"" : ",\"name\":\"thread_sort_index\"";
    out += ",\"args\":{\"sort_index\":";
    append_int(out, sort);
    out += "}}";
  };
  meta(0, "process_name", process_name, pid);
  meta(0, "thread_name", "session", 0);
  meta(1, "thread_name", "compute", 1);
  meta(2, "thread_name", "communication", 2);
  meta(3, "thread_name", "idle", 3);

  auto x = [&](int tid, const char *cat, int64_t b, int64_t e) {
    open("X", tid);
    out += ",\"cat\":\"";
    out += cat;
    out += "\",\"ts\":";
    append_us(out, ts(b));
    out += ",\"dur\":";
    append_us(out, e - b);
  };
  // Tracks in begin order, parents first.
  std::vector<uint32_t> order(size_);
  for (size_t i = 0; i < size_; ++i) order[i] = static_cast<uint32_t>(i);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    const TraceEvent &p = events_[a], &q = events_[b];
    if (p.track != q.track) return p.track < q.track;
    if (p.begin_ns != q.begin_ns) return p.begin_ns < q.begin_ns;
    if (p.end_ns != q.end_ns) return p.end_ns > q.end_ns;
    return kind_rank(p.kind) < kind_rank(q.kind);
  });
  for (uint32_t i : order) {
    const TraceEvent &e = events_[i];
    const int tid = static_cast<int>(e.track);
    switch (e.kind) {
    case TraceKind::DeviceInstr:  // unresolved (the run failed): no times
    case TraceKind::DeviceComm:   // async slices, below
      break;
    case TraceKind::Step:
      x(tid, "step", e.begin_ns, e.end_ns);
      out += ",\"name\":\"step ";
      append_int(out, e.step);
      out += "\",\"args\":{\"step\":";
      append_int(out, e.step);
      out += "}}";
      break;
    case TraceKind::Program:
    case TraceKind::Span:
      x(tid, e.kind == TraceKind::Program ? "program" : "session", e.begin_ns, e.end_ns);
      out += ",\"name\":\"";
      append_json_escaped(out, e.name);
      out += "\",\"args\":{\"step\":";
      append_int(out, e.step);
      if (e.micro_batch >= 0) out += ",\"micro_batch\":", append_int(out, e.micro_batch);
      if (e.slot >= 0) out += ",\"slot\":", append_int(out, e.slot);
      if (e.arg >= 0) out += ",\"bytes\":", append_int(out, e.arg);
      out += "}}";
      break;
    case TraceKind::Instr: {
      const plan::Instr &in = *e.instr;
      const bool comm = e.track == TraceTrack::Comm;
      x(tid, comm ? "comm" : "compute", e.begin_ns, e.end_ns);
      out += ",\"name\":\"";
      append_json_escaped(out, in.op);
      out += "\",\"args\":{\"program\":\"";
      append_json_escaped(out, *e.program);
      out += "\",\"step\":";
      append_int(out, e.step);
      if (e.micro_batch >= 0) out += ",\"micro_batch\":", append_int(out, e.micro_batch);
      out += ",\"slot\":";
      append_int(out, e.slot);
      if (int64_t l = layer_of(in); l >= 0) out += ",\"layer\":", append_int(out, l);
      if (!in.loc.empty()) {
        out += ",\"loc\":\"";
        append_json_escaped(out, in.loc);
        out += '"';
      }
      if (comm) {
        if (int64_t n = comm_bytes(in, rank_plan_); n >= 0) out += ",\"bytes\":", append_int(out, n);
        if (const std::string *g = str_attr(in, "group")) {
          out += ",\"group\":\"";
          append_json_escaped(out, *g);
          out += '"';
        }
        if (int64_t p = int_attr(in, "peer"); p >= 0) out += ",\"peer\":", append_int(out, p);
        if (int64_t b = int_attr(in, "bucket"); b >= 0) out += ",\"bucket\":", append_int(out, b);
      }
      out += "}}";
      break;
    }
    }
  }
  // Idle: the gaps inside each step between the kernels and communication calls.
  const auto steps = step_spans(*this);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> busy_in(steps.size());
  for (size_t i = 0; i < size_; ++i)
    if (busy(events_[i]))
      if (int64_t s = step_holding(steps, events_[i].begin_ns); s >= 0)
        busy_in[s].emplace_back(events_[i].begin_ns, events_[i].end_ns);
  for (size_t s = 0; s < steps.size(); ++s) {
    std::vector<std::pair<int64_t, int64_t>> &bs = busy_in[s];
    std::sort(bs.begin(), bs.end());
    int64_t t = steps[s].first;
    auto gap = [&](int64_t until) {
      if (until - t >= kMinIdleNs) {
        x(3, "idle", t, until);
        out += ",\"name\":\"idle\",\"args\":{}}";
      }
    };
    for (auto &[b, e] : bs) {
      gap(b);
      t = std::max(t, e);
    }
    gap(steps[s].second);
  }
  // An async slice on the communication track: a "b"/"e" pair sharing an id that is unique in this
  // process ("r<pid><tag><n>"). Async slices may overlap each other and the compute.
  auto async_slice = [&](const char *cat, int64_t bucket, const char *what, const char *id_tag, int64_t n,
                         int64_t begin_ns, int64_t end_ns, const int64_t *step) {
    for (const char *ph : {"b", "e"}) {
      open(ph, 2);
      out += ",\"cat\":\"";
      out += cat;
      out += "\",\"name\":\"bucket ";
      append_int(out, bucket);
      out += what;
      out += "\",\"id\":\"r";
      append_int(out, pid);
      out += id_tag;
      append_int(out, n);
      out += "\",\"ts\":";
      append_us(out, ts(ph[0] == 'b' ? begin_ns : end_ns));
      out += ",\"args\":{\"bucket\":";
      append_int(out, bucket);
      if (step) out += ",\"step\":", append_int(out, *step);
      out += "}}";
    }
  };
  // Gradient buckets in flight on the host: from all_reduce_start's end to the wait's begin.
  int64_t n = 0;
  for (const InFlight &f : buckets_in_flight(*this))
    async_slice("bucket_in_flight", f.bucket, " in flight", ".", n++, f.begin_ns, f.end_ns, nullptr);
  // Bucket reductions as the device ran them (NCCL's communication stream).
  for (size_t i = 0; i < size_; ++i) {
    const TraceEvent &e = events_[i];
    if (e.kind == TraceKind::DeviceComm)
      async_slice("bucket_device", e.arg, " on the device", ".d", n++, e.begin_ns, e.end_ns, &e.step);
  }
}

} // namespace parallora::rt
