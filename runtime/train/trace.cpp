//===- trace.cpp - lora-run --trace: every rank's timeline in one file -----===//
#include "runtime/train/trace.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "runtime/train/world.h"

namespace parallora::rt {
namespace {
using json = nlohmann::json;

constexpr int kTraceTag = 7301;                    // control-plane tag of the event texts
constexpr int64_t kChunkBytes = int64_t(64) << 20;  // one control message at most

std::string pct(double part, double whole) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", whole > 0 ? 100.0 * part / whole : 0.0);
  return buf;
}

// steady_clock nanoseconds travel as two doubles (seconds, remainder): exact, unlike one double
// once the clock passes 2^53 ns (~104 days of uptime).
void split_ns(int64_t t, double *hi, double *lo) {
  *hi = static_cast<double>(t / 1000000000);
  *lo = static_cast<double>(t % 1000000000);
}
int64_t join_ns(double hi, double lo) { return static_cast<int64_t>(hi) * 1000000000 + static_cast<int64_t>(lo); }

// The merged file, written rank by rank to <path>.tmp and renamed at the end.
class TraceFileWriter {
public:
  TraceFileWriter(const std::string &path, const std::string &other_data) : path_(path), os_(path + ".tmp") {
    os_ << "{\"displayTimeUnit\":\"ms\",\n\"otherData\":" << other_data << ",\n\"traceEvents\":[";
  }
  void add(const std::string &fragment) {
    if (fragment.empty()) return;
    if (!first_) os_ << ',';
    first_ = false;
    os_ << fragment;
  }
  Status finish() {
    os_ << "\n]}\n";
    os_.close();
    if (!os_) return Status::error("--trace: cannot write " + path_ + ".tmp");
    if (std::rename((path_ + ".tmp").c_str(), path_.c_str()) != 0)
      return Status::error("--trace: cannot rename " + path_ + ".tmp to " + path_);
    return Status::ok();
  }
  bool ok() const { return static_cast<bool>(os_); }

private:
  std::string path_;
  std::ofstream os_;
  bool first_ = true;
};

} // namespace

ClockSync estimate_clock_offsets(const std::vector<std::vector<int64_t>> &exit_ns,
                                 const std::vector<std::vector<int64_t>> &barrier_ns) {
  ClockSync c;
  const size_t W = exit_ns.size();
  c.offset_ns.assign(W, 0);
  c.error_ns.assign(W, 0);
  for (size_t r = 0; r < W; ++r) {
    const size_t K = std::min(exit_ns[r].size(), exit_ns[0].size());
    if (K == 0) continue;
    if (r == 0) continue;
    // Nobody leaves a barrier before everybody entered it: in rank 0's time, enter_r - o <=
    // exit_0 and enter_0 <= exit_r - o, so every round bounds the offset o to
    // [enter_r - exit_0, exit_r - enter_0]; the rounds together to the intersection.
    int64_t lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
    std::vector<int64_t> d(K);
    for (size_t k = 0; k < K; ++k) {
      const int64_t enter_r = exit_ns[r][k] - (k < barrier_ns[r].size() ? barrier_ns[r][k] : 0);
      const int64_t enter_0 = exit_ns[0][k] - (k < barrier_ns[0].size() ? barrier_ns[0][k] : 0);
      lo = std::max(lo, enter_r - exit_ns[0][k]);
      hi = std::min(hi, exit_ns[r][k] - enter_0);
      d[k] = exit_ns[r][k] - exit_ns[0][k];
    }
    if (lo <= hi) {
      c.offset_ns[r] = lo + (hi - lo) / 2;
      c.error_ns[r] = (hi - lo + 1) / 2;
      continue;
    }
    // Contradictory rounds (the clocks drifted between them): the median exit difference, with
    // half the spread of the differences or the contradiction, whichever is larger, as error.
    std::sort(d.begin(), d.end());
    c.offset_ns[r] = K % 2 ? d[K / 2] : d[K / 2 - 1] + (d[K / 2] - d[K / 2 - 1]) / 2;
    c.error_ns[r] = std::max((d.back() - d.front() + 1) / 2, lo - hi);
  }
  return c;
}

std::string trace_process_name(const plan::RankPlan &rank) {
  return "rank " + std::to_string(rank.rank) + " (dp " + std::to_string(rank.dp_rank) + ", tp " +
         std::to_string(rank.tp_rank) + ", pp " + std::to_string(rank.pp_stage) + ")";
}

void rank_extremes(TraceSummary &s) {
  s.slowest_rank = s.longest_waiting_rank = 0;
  for (size_t r = 0; r < s.ranks.size(); ++r) {
    const TraceBreakdown &b = s.ranks[r], &slow = s.ranks[s.slowest_rank], &wait = s.ranks[s.longest_waiting_rank];
    if (b.compute_s > slow.compute_s) s.slowest_rank = static_cast<int>(r);
    if (b.exposed_comm_s + b.idle_s > wait.exposed_comm_s + wait.idle_s) s.longest_waiting_rank = static_cast<int>(r);
  }
}

namespace {
// Why the slowest rank is slowest, in words.
std::string slowest_reason(const TraceSummary &s) {
  const TraceBreakdown &slow = s.ranks[s.slowest_rank], &wait = s.ranks[s.longest_waiting_rank];
  double least = slow.compute_s;
  for (const TraceBreakdown &b : s.ranks) least = std::min(least, b.compute_s);
  char buf[256];
  if (s.ranks.size() > 1 && least > 0 && slow.compute_s / least < 1.05)
    std::snprintf(buf, sizeof buf,
                  "compute is balanced (most / least %.2f): the step time goes to waiting; rank %d waits longest "
                  "(exposed communication + idle %s of its steps)",
                  slow.compute_s / least, s.longest_waiting_rank,
                  pct(wait.exposed_comm_s + wait.idle_s, wait.step_s).c_str());
  else
    std::snprintf(buf, sizeof buf,
                  "most compute (%.3f s, %s of its steps; least %.3f s): the others wait for it; rank %d waits "
                  "longest (exposed communication + idle %s)",
                  slow.compute_s, pct(slow.compute_s, slow.step_s).c_str(), least, s.longest_waiting_rank,
                  pct(wait.exposed_comm_s + wait.idle_s, wait.step_s).c_str());
  return buf;
}

double max_error_us(const TraceSummary &s) {
  int64_t m = 0;
  for (int64_t e : s.clock.error_ns) m = std::max(m, e);
  return m / 1000.0;
}
} // namespace

void print_trace_summary(std::ostream &os, const TraceSummary &s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", max_error_us(s));
  os << "trace: " << s.path << " (" << s.events << " events" << (s.dropped ? ", " + std::to_string(s.dropped) + " dropped" : "")
     << ", " << s.ranks.size() << " rank" << (s.ranks.size() == 1 ? "" : "s") << ", clocks aligned within " << buf
     << " us); share of step time:\n";
  for (size_t r = 0; r < s.ranks.size(); ++r) {
    const TraceBreakdown &b = s.ranks[r];
    os << "  " << s.names[r] << ": compute " << pct(b.compute_s, b.step_s) << " (communication hidden behind it "
       << pct(b.hidden_comm_s, b.step_s) << "), exposed communication " << pct(b.exposed_comm_s, b.step_s) << ", idle "
       << pct(b.idle_s, b.step_s) << "\n";
  }
  if (!s.ranks.empty())
    os << "  slowest: " << s.names[s.slowest_rank] << ": " << slowest_reason(s) << "\n";
}

std::string trace_summary_json(const TraceSummary &s) {
  auto frac = [](double part, double whole) -> json { return whole > 0 ? json(part / whole) : json(nullptr); };
  json ranks = json::array();
  for (size_t r = 0; r < s.ranks.size(); ++r) {
    const TraceBreakdown &b = s.ranks[r];
    ranks.push_back({{"rank", r},
                     {"name", s.names[r]},
                     {"step_s", b.step_s},
                     {"compute_s", b.compute_s},
                     {"hidden_comm_s", b.hidden_comm_s},
                     {"exposed_comm_s", b.exposed_comm_s},
                     {"idle_s", b.idle_s},
                     {"compute_fraction", frac(b.compute_s, b.step_s)},
                     {"hidden_comm_fraction", frac(b.hidden_comm_s, b.step_s)},
                     {"exposed_comm_fraction", frac(b.exposed_comm_s, b.step_s)},
                     {"idle_fraction", frac(b.idle_s, b.step_s)},
                     {"events", b.events},
                     {"dropped_events", b.dropped},
                     {"clock_offset_us", r < s.clock.offset_ns.size() ? s.clock.offset_ns[r] / 1000.0 : 0.0},
                     {"clock_error_us", r < s.clock.error_ns.size() ? s.clock.error_ns[r] / 1000.0 : 0.0}});
  }
  json j = {{"file", s.path},
            {"events", s.events},
            {"dropped_events", s.dropped},
            {"clock_error_us_max", max_error_us(s)},
            {"ranks", ranks}};
  if (!s.ranks.empty()) {
    j["slowest_rank"] = s.slowest_rank;
    j["slowest_reason"] = slowest_reason(s);
    j["longest_waiting_rank"] = s.longest_waiting_rank;
  }
  return j.dump();
}

Status write_trace_file(const std::string &path, const std::vector<std::string> &fragments,
                        const std::string &other_data) {
  TraceFileWriter w(path, other_data);
  for (const std::string &f : fragments) w.add(f);
  return w.finish();
}

Status write_merged_trace(const std::string &path, const TraceRecorder &rec, Communicator &comm, const plan::Plan &plan,
                          const std::string &plan_path, TraceSummary *summary) {
  const int W = comm.world_size(), R = comm.rank();
  const bool rank0 = R == 0;
  auto fail = [](const Status &s) { return Status::error("--trace: " + s.message()); };

  // 1. Clocks: barrier rounds, then every rank's exits (and its first event) to rank 0.
  constexpr int kFields = 2 + 3 * kClockRounds;
  double mine[kFields];
  for (int k = 0; k < kClockRounds; ++k) {
    const int64_t enter = TraceRecorder::now_ns();
    if (Status s = control_barrier(comm); !s) return fail(s);
    const int64_t exit = TraceRecorder::now_ns();
    split_ns(exit, &mine[2 + 3 * k], &mine[3 + 3 * k]);
    mine[4 + 3 * k] = static_cast<double>(exit - enter);
  }
  split_ns(rec.size() ? rec.first_ns() : join_ns(mine[2], mine[3]), &mine[0], &mine[1]);
  std::vector<double> all(rank0 ? static_cast<size_t>(kFields) * W : 0);
  if (Status s = control_gather(comm, mine, kFields, rank0 ? all.data() : nullptr); !s) return fail(s);
  // origin, then each rank's offset, from rank 0 to all.
  std::vector<int64_t> aligned(static_cast<size_t>(W) + 1, 0);
  ClockSync clock;
  if (rank0) {
    std::vector<std::vector<int64_t>> exits(W), barriers(W);
    for (int r = 0; r < W; ++r)
      for (int k = 0; k < kClockRounds; ++k) {
        const double *row = all.data() + static_cast<size_t>(r) * kFields;
        exits[r].push_back(join_ns(row[2 + 3 * k], row[3 + 3 * k]));
        barriers[r].push_back(static_cast<int64_t>(row[4 + 3 * k]));
      }
    clock = estimate_clock_offsets(exits, barriers);
    int64_t origin = std::numeric_limits<int64_t>::max();
    for (int r = 0; r < W; ++r) {
      const double *row = all.data() + static_cast<size_t>(r) * kFields;
      origin = std::min(origin, join_ns(row[0], row[1]) - clock.offset_ns[r]);
    }
    aligned[0] = origin;
    for (int r = 0; r < W; ++r) aligned[1 + r] = clock.offset_ns[r];
  }
  if (Status s = control_broadcast(comm, aligned.data(), static_cast<int64_t>(aligned.size() * sizeof(int64_t))); !s)
    return fail(s);

  // 2. The breakdowns, for the summary.
  const TraceBreakdown b = rec.breakdown();
  double row[7] = {b.step_s, b.compute_s, b.hidden_comm_s, b.exposed_comm_s, b.idle_s, static_cast<double>(b.events),
                   static_cast<double>(b.dropped)};
  std::vector<double> rows(rank0 ? static_cast<size_t>(7) * W : 0);
  if (Status s = control_gather(comm, row, 7, rank0 ? rows.data() : nullptr); !s) return fail(s);
  TraceSummary sum;
  if (rank0) {
    sum.path = path;
    sum.clock = clock;
    for (int r = 0; r < W; ++r) {
      const double *x = rows.data() + static_cast<size_t>(r) * 7;
      TraceBreakdown t;
      t.step_s = x[0], t.compute_s = x[1], t.hidden_comm_s = x[2], t.exposed_comm_s = x[3], t.idle_s = x[4];
      t.events = static_cast<int64_t>(x[5]), t.dropped = static_cast<int64_t>(x[6]);
      sum.ranks.push_back(t);
      sum.names.push_back(trace_process_name(plan.ranks[r]));
      sum.events += t.events;
      sum.dropped += t.dropped;
    }
    rank_extremes(sum);
  }

  // 3. The events: every rank's text to rank 0, which writes them in rank order.
  std::string text;
  text.reserve(rec.size() * 200);
  rec.append_json(text, R, trace_process_name(plan.ranks[R]), aligned[1 + R], aligned[0]);
  if (!rank0) {
    int64_t n = static_cast<int64_t>(text.size());
    if (Status s = comm.send_control(0, kTraceTag, &n, sizeof n); !s) return fail(s);
    for (int64_t off = 0; off < n; off += kChunkBytes)
      if (Status s = comm.send_control(0, kTraceTag, text.data() + off, std::min(kChunkBytes, n - off)); !s)
        return fail(s);
    return Status::ok();
  }
  json other = {{"producer", "lora-run --trace"},
                {"plan", plan_path},
                {"world_size", W},
                {"mesh", {{"dp", plan.mesh.dp}, {"tp", plan.mesh.tp}, {"pp", plan.mesh.pp}}},
                {"time_unit", "ts and dur in microseconds since the earliest event, on rank 0's clock"},
                {"clock", "std::chrono::steady_clock of each rank, shifted by its offset to rank 0"},
                {"clock_sync", std::to_string(kClockRounds) +
                                   " barrier rounds: each bounds (rank's clock - rank 0's) to [enter_r - exit_0, "
                                   "exit_r - enter_0]; offset = middle of the intersection, error = half its width"},
                {"clock_offset_us", json::array()},
                {"clock_error_us", json::array()},
                {"clock_error_us_max", max_error_us(sum)},
                {"summary", json::parse(trace_summary_json(sum))}};
  for (int r = 0; r < W; ++r) {
    other["clock_offset_us"].push_back(clock.offset_ns[r] / 1000.0);
    other["clock_error_us"].push_back(clock.error_ns[r] / 1000.0);
  }
  TraceFileWriter file(path, other.dump());
  file.add(text);
  text.clear();
  text.shrink_to_fit();
  std::string theirs;
  for (int r = 1; r < W; ++r) {
    int64_t n = 0;
    if (Status s = comm.recv_control(r, kTraceTag, &n, sizeof n); !s) return fail(s);
    theirs.resize(static_cast<size_t>(n));
    for (int64_t off = 0; off < n; off += kChunkBytes)
      if (Status s = comm.recv_control(r, kTraceTag, theirs.data() + off, std::min(kChunkBytes, n - off)); !s)
        return fail(s);
    file.add(theirs);  // a failed file still takes every rank's text (no sender left waiting)
  }
  if (Status s = file.finish(); !s) return s;
  *summary = std::move(sum);
  return Status::ok();
}

} // namespace parallora::rt
