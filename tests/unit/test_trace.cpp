// The trace recorder (runtime/core/trace.h) and the merge (runtime/train/trace.h): events
// written in begin order and nested, JSON escaping, the breakdown (compute / hidden / exposed /
// idle), dropped events, clock offsets from barrier rounds, the merged file; the executor's
// hooks, host-timed and with a DeviceTimer (the CUDA path, emulated).
#include "runtime/comm/comm.h"
#include "runtime/core/executor.h"
#include "runtime/core/trace.h"
#include "runtime/train/trace.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <unistd.h>

using namespace parallora;
using namespace parallora::rt;
using json = nlohmann::json;

namespace {

using clock_t_ = TraceRecorder::clock;
clock_t_::time_point at_ns(int64_t ns) { return clock_t_::time_point(std::chrono::nanoseconds(ns)); }

plan::Instr make_instr(const std::string &op, const std::string &loc, std::vector<int32_t> in,
                       std::vector<int32_t> out, std::map<std::string, plan::AttrValue> attrs = {}) {
  plan::Instr i;
  i.op = op;
  i.loc = loc;
  i.inputs = std::move(in);
  i.outputs = std::move(out);
  i.attrs = std::move(attrs);
  return i;
}

json parse_events(const TraceRecorder &rec, int pid, const std::string &name, int64_t offset = 0, int64_t origin = 0) {
  std::string text;
  rec.append_json(text, pid, name, offset, origin);
  return json::parse("[" + text + "]");
}

std::vector<json> complete(const json &ev, int tid) {
  std::vector<json> out;
  for (const json &e : ev)
    if (e["ph"] == "X" && e["tid"] == tid) out.push_back(e);
  return out;
}

// One step of 1000 us: compute A, bucket 0 started, compute B while it is in flight, the wait,
// a blocking all_reduce, compute C (times in microseconds below).
struct OneStep {
  plan::RankPlan rp;
  std::string program = "micro_step";
  plan::Instr a, start, b, wait, ar, c;
  TraceRecorder rec{64};
  OneStep() {
    plan::Buffer g;
    g.id = 0;
    g.shape = {256};  // 1024 bytes of f32
    rp.buffers.push_back(g);
    g.id = 1;
    g.shape = {64};  // 256 bytes
    rp.buffers.push_back(g);
    a = make_instr("linear_fwd", "model.layers.2.mlp.up_proj", {1}, {1});
    b = make_instr("linear_bwd", "model.layers.1.mlp.up_proj", {1}, {1});
    c = make_instr("adamw_step", "optimizer", {1}, {1});
    start = make_instr("all_reduce_start", "optimizer", {0}, {}, {{"bucket", int64_t(0)}, {"group", std::string("dp")}});
    wait = make_instr("all_reduce_wait", "optimizer", {0}, {0}, {{"bucket", int64_t(0)}});
    ar = make_instr("all_reduce", "model.layers.0.self_attn.o_proj", {1}, {1}, {{"group", std::string("tp")}});
    rec.set_rank_plan(&rp);
    rec.set_context(7, 1);
    const int64_t us = 1000;
    // Recorded as the executor and the session do: each instruction when it ends, the program
    // and the step when they end.
    rec.instr(a, &program, 1, false, at_ns(100 * us), at_ns(300 * us));
    rec.instr(start, &program, 1, true, at_ns(300 * us), at_ns(350 * us));
    rec.instr(b, &program, 1, false, at_ns(350 * us), at_ns(650 * us));
    rec.instr(wait, &program, 1, true, at_ns(650 * us), at_ns(700 * us));
    rec.instr(ar, &program, 1, true, at_ns(700 * us), at_ns(800 * us));
    rec.instr(c, &program, 1, false, at_ns(800 * us), at_ns(900 * us));
    rec.program(&program, 1, 50 * us, 950 * us);
    rec.step(7, 0, 1000 * us);
  }
};

} // namespace

TEST(TraceRecorder, BreakdownSplitsComputeHiddenExposedIdle) {
  OneStep s;
  TraceBreakdown b = s.rec.breakdown();
  EXPECT_NEAR(b.step_s, 1000e-6, 1e-12);
  EXPECT_NEAR(b.compute_s, 600e-6, 1e-12);       // A 200 + B 300 + C 100
  EXPECT_NEAR(b.exposed_comm_s, 200e-6, 1e-12);  // start 50 + wait 50 + all_reduce 100
  EXPECT_NEAR(b.hidden_comm_s, 300e-6, 1e-12);   // B, entirely while bucket 0 is in flight
  EXPECT_NEAR(b.idle_s, 200e-6, 1e-12);
  EXPECT_EQ(b.events, 8);
  EXPECT_EQ(b.dropped, 0);
}

TEST(TraceRecorder, EventsInBeginOrderParentsFirstWithArgs) {
  OneStep s;
  json ev = parse_events(s.rec, 3, "rank 3 (dp 1, tp 1, pp 0)");
  // Metadata: the process name and the four tracks.
  std::map<std::string, std::string> names;
  for (const json &e : ev)
    if (e["ph"] == "M" && e["name"] == "thread_name") names[std::to_string(e["tid"].get<int>())] = e["args"]["name"];
    else if (e["ph"] == "M" && e["name"] == "process_name") names["process"] = e["args"]["name"];
  EXPECT_EQ(names["process"], "rank 3 (dp 1, tp 1, pp 0)");
  EXPECT_EQ(names["0"], "session");
  EXPECT_EQ(names["1"], "compute");
  EXPECT_EQ(names["2"], "communication");
  EXPECT_EQ(names["3"], "idle");
  // Session track: the step (recorded last) before the program it holds.
  auto session = complete(ev, 0);
  ASSERT_EQ(session.size(), 2u);
  EXPECT_EQ(session[0]["name"], "step 7");
  EXPECT_EQ(session[0]["ts"].get<double>(), 0.0);
  EXPECT_EQ(session[0]["dur"].get<double>(), 1000.0);
  EXPECT_EQ(session[1]["name"], "micro_step");
  EXPECT_EQ(session[1]["args"]["micro_batch"], 1);
  auto compute = complete(ev, 1);
  ASSERT_EQ(compute.size(), 3u);
  EXPECT_EQ(compute[0]["name"], "linear_fwd");
  EXPECT_EQ(compute[0]["args"]["layer"], 2);  // from the loc "model.layers.2..."
  EXPECT_EQ(compute[0]["args"]["step"], 7);
  EXPECT_EQ(compute[0]["args"]["slot"], 1);
  EXPECT_EQ(compute[0]["args"]["program"], "micro_step");
  EXPECT_EQ(compute[1]["name"], "linear_bwd");
  EXPECT_EQ(compute[2]["name"], "adamw_step");
  EXPECT_FALSE(compute[2]["args"].contains("layer"));
  for (size_t i = 1; i < compute.size(); ++i) EXPECT_LE(compute[i - 1]["ts"].get<double>(), compute[i]["ts"].get<double>());
  auto comm = complete(ev, 2);
  ASSERT_EQ(comm.size(), 3u);
  EXPECT_EQ(comm[0]["name"], "all_reduce_start");
  EXPECT_EQ(comm[0]["args"]["bytes"], 1024);
  EXPECT_EQ(comm[0]["args"]["bucket"], 0);
  EXPECT_EQ(comm[0]["args"]["group"], "dp");
  EXPECT_EQ(comm[1]["args"]["bytes"], 1024);  // the wait: what it receives
  EXPECT_EQ(comm[2]["name"], "all_reduce");
  EXPECT_EQ(comm[2]["args"]["bytes"], 256);
  EXPECT_EQ(comm[2]["args"]["group"], "tp");
  // Idle: the gaps before A and after C (100 us each).
  auto idle = complete(ev, 3);
  ASSERT_EQ(idle.size(), 2u);
  EXPECT_EQ(idle[0]["ts"].get<double>(), 0.0);
  EXPECT_EQ(idle[0]["dur"].get<double>(), 100.0);
  EXPECT_EQ(idle[1]["ts"].get<double>(), 900.0);
  // Bucket 0 in flight from the start's end to the wait's begin.
  std::vector<json> flight;
  for (const json &e : ev)
    if (e["ph"] == "b" || e["ph"] == "e") flight.push_back(e);
  ASSERT_EQ(flight.size(), 2u);
  EXPECT_EQ(flight[0]["ph"], "b");
  EXPECT_EQ(flight[0]["ts"].get<double>(), 350.0);
  EXPECT_EQ(flight[1]["ts"].get<double>(), 650.0);
  EXPECT_EQ(flight[0]["id"], flight[1]["id"]);
}

TEST(TraceRecorder, OffsetAndOriginShiftTimesExactly) {
  OneStep s;
  // This rank's clock runs 1234567 ns ahead of rank 0's; time zero is 10 ns before its step.
  json ev = parse_events(s.rec, 1, "r", 1234567, -1234567 - 10);
  auto session = complete(ev, 0);
  EXPECT_EQ(session[0]["ts"].get<double>(), 0.01);
  // Before time zero: negative, still exact.
  ev = parse_events(s.rec, 1, "r", 0, 1500);
  EXPECT_EQ(complete(ev, 0)[0]["ts"].get<double>(), -1.5);
}

TEST(TraceRecorder, JsonEscaping) {
  const std::string nasty = "a \"quoted\" back\\slash\nnew line\ttab\x01\x1f ctl, utf-8 \xc3\xa9";
  std::string out;
  append_json_escaped(out, nasty);
  EXPECT_EQ(json::parse("\"" + out + "\"").get<std::string>(), nasty);
  EXPECT_EQ(out.find('\n'), std::string::npos);
  // In an event: the loc and the process name survive the round trip.
  plan::Instr in = make_instr("matmul", nasty, {}, {});
  std::string program = "micro\"step";
  TraceRecorder rec(4);
  rec.instr(in, &program, 0, false, at_ns(0), at_ns(5));
  json ev = parse_events(rec, 0, nasty);
  auto compute = complete(ev, 1);
  ASSERT_EQ(compute.size(), 1u);
  EXPECT_EQ(compute[0]["args"]["loc"], nasty);
  EXPECT_EQ(compute[0]["args"]["program"], program);
  EXPECT_EQ(ev[0]["args"]["name"], nasty);
  EXPECT_EQ(compute[0]["dur"].get<double>(), 0.005);
}

TEST(TraceRecorder, FullBufferDropsAndCounts) {
  TraceRecorder rec(3);
  for (int i = 0; i < 5; ++i) rec.span(TraceTrack::Session, "load batch", i * 10, i * 10 + 5);
  EXPECT_EQ(rec.size(), 3u);
  EXPECT_EQ(rec.dropped(), 2);
  EXPECT_EQ(rec.breakdown().dropped, 2);
  EXPECT_EQ(complete(parse_events(rec, 0, "r"), 0).size(), 3u);
}

TEST(ClockSync, BarrierRoundsBoundTheOffset) {
  // Three ranks whose clocks are 0, +5 ms and -3 ms off rank 0's. In every round the ranks enter
  // at random times and leave at random times after the last one entered.
  const std::vector<int64_t> truth = {0, 5000000, -3000000};
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> jitter(0, 20000);
  std::vector<std::vector<int64_t>> exits(3), durations(3);
  int64_t t = 1000000000;
  for (int k = 0; k < kClockRounds; ++k) {
    std::vector<int64_t> enter(3);
    int64_t last = 0;
    for (int r = 0; r < 3; ++r) last = std::max(last, enter[r] = t + jitter(rng));
    for (int r = 0; r < 3; ++r) {
      const int64_t exit = last + 1 + jitter(rng);  // in true (rank 0) time
      exits[r].push_back(exit + truth[r]);
      durations[r].push_back(exit - enter[r]);
    }
    t = last + 50000;
  }
  ClockSync c = estimate_clock_offsets(exits, durations);
  ASSERT_EQ(c.offset_ns.size(), 3u);
  EXPECT_EQ(c.offset_ns[0], 0);
  EXPECT_EQ(c.error_ns[0], 0);
  for (int r = 1; r < 3; ++r) {
    EXPECT_LE(std::llabs(c.offset_ns[r] - truth[r]), c.error_ns[r]) << "rank " << r;
    EXPECT_LT(c.error_ns[r], 20001) << "rank " << r;  // never worse than one round's exit jitter
  }
}

TEST(ClockSync, ContradictoryRoundsFallBackToTheMedian) {
  // Zero-length barriers whose exit differences disagree (a drifting clock): the median, with
  // an error covering the spread.
  std::vector<std::vector<int64_t>> exits = {{0, 1000, 2000}, {100, 1300, 2200}};
  std::vector<std::vector<int64_t>> dur = {{0, 0, 0}, {0, 0, 0}};
  ClockSync c = estimate_clock_offsets(exits, dur);
  EXPECT_EQ(c.offset_ns[1], 200);
  EXPECT_GE(c.error_ns[1], 100);
}

TEST(TraceFile, MergesRanksIntoOneValidFile) {
  OneStep s0, s1;
  std::string f0, f1;
  s0.rec.append_json(f0, 0, "rank 0 (dp 0, tp 0, pp 0)", 0, 0);
  s1.rec.append_json(f1, 1, "rank 1 (dp 1, tp 0, pp 0)", 250, 0);
  char dir[] = "/tmp/test_trace_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/trace.json";
  ASSERT_TRUE(write_trace_file(path, {f0, f1}, R"({"clock_error_us":[0,0.5]})"));
  std::ifstream is(path);
  json t = json::parse(is);
  EXPECT_EQ(t["otherData"]["clock_error_us"][1], 0.5);
  std::set<int> pids;
  for (const json &e : t["traceEvents"]) pids.insert(e["pid"].get<int>());
  EXPECT_EQ(pids, (std::set<int>{0, 1}));
  // Rank 1's step starts 250 ns earlier on rank 0's clock.
  for (const json &e : t["traceEvents"])
    if (e["ph"] == "X" && e["pid"] == 1 && e["name"] == "step 7") EXPECT_EQ(e["ts"].get<double>(), -0.25);
  std::remove(path.c_str());
  rmdir(dir);
}

TEST(TraceSummary, SlowestRankAndJson) {
  TraceSummary s;
  s.path = "t.json";
  s.names = {"rank 0 (dp 0, tp 0, pp 0)", "rank 1 (dp 0, tp 0, pp 1)"};
  TraceBreakdown a, b;
  a.step_s = b.step_s = 1.0;
  a.compute_s = 0.3, a.exposed_comm_s = 0.5, a.idle_s = 0.2;  // waits for rank 1
  b.compute_s = 0.8, b.exposed_comm_s = 0.1, b.idle_s = 0.1, b.hidden_comm_s = 0.05;
  s.ranks = {a, b};
  s.clock.offset_ns = {0, 1500};
  s.clock.error_ns = {0, 800};
  rank_extremes(s);
  EXPECT_EQ(s.slowest_rank, 1);
  EXPECT_EQ(s.longest_waiting_rank, 0);
  json j = json::parse(trace_summary_json(s));
  EXPECT_EQ(j["slowest_rank"], 1);
  EXPECT_EQ(j["longest_waiting_rank"], 0);
  EXPECT_NEAR(j["ranks"][1]["compute_fraction"].get<double>(), 0.8, 1e-12);
  EXPECT_NEAR(j["ranks"][1]["hidden_comm_fraction"].get<double>(), 0.05, 1e-12);
  EXPECT_EQ(j["ranks"][1]["clock_offset_us"], 1.5);
  EXPECT_EQ(j["clock_error_us_max"], 0.8);
  EXPECT_NE(j["slowest_reason"].get<std::string>().find("most compute"), std::string::npos);
  std::ostringstream os;
  print_trace_summary(os, s);
  EXPECT_NE(os.str().find("slowest: rank 1 (dp 0, tp 0, pp 1): most compute"), std::string::npos) << os.str();
}

// ---- The executor's hooks (Executor::set_trace), on a one-rank plan of fake kernels.
namespace {

struct TinyPlan {
  plan::Plan p;
  int32_t x;
  TinyPlan() {
    p.producer = "test";
    p.global_batch = 1;
    p.seq_len = 1;
    p.vocab_size = 4;
    p.ranks.resize(1);
    plan::Buffer b;
    b.id = 0;
    b.name = "x";
    b.kind = plan::BufferKind::Input;
    b.shape = {16};  // 64 bytes
    p.ranks[0].buffers.push_back(b);
    x = 0;
    plan::Program prog{"micro_step", {}};
    prog.instrs.push_back(make_instr("work", "model.layers.1.mlp", {x}, {}));
    prog.instrs.push_back(make_instr("all_reduce", "", {x}, {x}, {{"group", std::string("")}}));
    prog.instrs.push_back(make_instr("work", "lm_head", {x}, {}));
    p.ranks[0].programs.push_back(prog);
  }
};

// Markers at 1 ms, 2 ms, ... on the steady clock (what a DeviceTimer's resolve returns).
struct FakeTimer : DeviceTimer {
  int64_t n = 0, resolved = 0;
  int64_t mark() override { return n++; }
  Status resolve(std::vector<int64_t> *ns) override {
    ns->resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) (*ns)[i] = (i + 1) * 1000000;
    resolved += n;
    n = 0;
    return Status::ok();
  }
};

} // namespace

TEST(ExecutorTrace, RecordsEveryKernelAndTheProgram) {
  TinyPlan t;
  KernelRegistry reg;
  reg.add("work", [](KernelCall &) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    return Status::ok();
  });
  reg.add("all_reduce", [](KernelCall &) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return Status::ok();
  });
  auto ex = Executor::create(t.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  TraceRecorder rec(16);
  (*ex)->set_trace(&rec);
  rec.set_context(4, 1);
  ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
  ASSERT_EQ(rec.size(), 4u);  // three kernels, then the program
  const TraceEvent &prog = rec[3];
  EXPECT_EQ(prog.kind, TraceKind::Program);
  EXPECT_STREQ(prog.name, "micro_step");
  for (size_t i = 0; i < 3; ++i) {
    const TraceEvent &e = rec[i];
    EXPECT_EQ(e.kind, TraceKind::Instr);
    EXPECT_EQ(e.track, i == 1 ? TraceTrack::Comm : TraceTrack::Compute);
    EXPECT_GE(e.end_ns - e.begin_ns, (i == 1 ? 2 : 3) * 1000000);  // sleeps never end early
    EXPECT_LE(prog.begin_ns, e.begin_ns);
    EXPECT_LE(e.end_ns, prog.end_ns);
    EXPECT_EQ(e.step, 4);
    EXPECT_EQ(e.micro_batch, 1);
    if (i > 0) EXPECT_LE(rec[i - 1].end_ns, e.begin_ns);
  }
  json ev = parse_events(rec, 0, "rank 0", 0, prog.begin_ns);
  auto comm = complete(ev, 2);
  ASSERT_EQ(comm.size(), 1u);
  EXPECT_EQ(comm[0]["args"]["bytes"], 64);
  EXPECT_EQ(complete(ev, 1)[0]["args"]["layer"], 1);
  // Off again: nothing more is recorded.
  (*ex)->set_trace(nullptr);
  ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
  EXPECT_EQ(rec.size(), 4u);
}

// An asynchronous backend with a DeviceTimer: compute kernels get the markers' device times,
// the communication kernel (synced on both sides) its host times.
TEST(ExecutorTrace, DeviceTimerTimesTheComputeKernels) {
  TinyPlan t;
  KernelRegistry reg;
  reg.add("work", [](KernelCall &) { return Status::ok(); });
  reg.add("all_reduce", [](KernelCall &) { return Status::ok(); });
  MemoryHooks hooks;
  hooks.alloc = [](size_t n) { return std::aligned_alloc(64, n); };
  hooks.free = [](void *p) { std::free(p); };
  hooks.sync = [] { return Status::ok(); };
  auto ex = Executor::create(t.p, 0, reg, "cuda-like", nullptr, &hooks);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  TraceRecorder rec(16);
  FakeTimer timer;
  (*ex)->set_trace(&rec, &timer);
  ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
  EXPECT_EQ(timer.resolved, 4);  // two markers per compute kernel
  ASSERT_EQ(rec.size(), 4u);
  EXPECT_EQ(rec[0].kind, TraceKind::Instr);
  EXPECT_EQ(rec[0].begin_ns, 1000000);
  EXPECT_EQ(rec[0].end_ns, 2000000);
  EXPECT_EQ(rec[2].begin_ns, 3000000);
  EXPECT_EQ(rec[2].end_ns, 4000000);
  EXPECT_EQ(rec[1].track, TraceTrack::Comm);
  EXPECT_GT(rec[1].begin_ns, 1000000000);  // a host steady-clock time, not a marker's
  // A second run numbers its markers from 0 again and resolves only its own events.
  ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
  ASSERT_EQ(rec.size(), 8u);
  EXPECT_EQ(rec[4].begin_ns, 1000000);
  EXPECT_EQ(rec[6].end_ns, 4000000);
  EXPECT_EQ(rec[0].end_ns, 2000000);
}

// A bucket's reduction as the device ran it (NCCL's communication stream): an async slice of its
// own on the communication track, outside the breakdown (the compute it overlaps stays compute).
TEST(TraceRecorder, DeviceCommIsAnAsyncSliceOutsideTheBreakdown) {
  OneStep s;
  const TraceBreakdown before = s.rec.breakdown();
  s.rec.device_comm(0, 360000, 600000);
  const TraceBreakdown after = s.rec.breakdown();
  EXPECT_EQ(after.compute_s, before.compute_s);
  EXPECT_EQ(after.exposed_comm_s, before.exposed_comm_s);
  EXPECT_EQ(after.hidden_comm_s, before.hidden_comm_s);
  EXPECT_EQ(after.idle_s, before.idle_s);
  json ev = parse_events(s.rec, 2, "rank 2");
  std::vector<json> dev;
  for (const json &e : ev)
    if (e.value("cat", "") == "bucket_device") dev.push_back(e);
  ASSERT_EQ(dev.size(), 2u);
  EXPECT_EQ(dev[0]["ph"], "b");
  EXPECT_EQ(dev[1]["ph"], "e");
  EXPECT_EQ(dev[0]["id"], dev[1]["id"]);
  EXPECT_EQ(dev[0]["tid"], 2);
  EXPECT_EQ(dev[0]["name"], "bucket 0 on the device");
  EXPECT_DOUBLE_EQ(dev[0]["ts"].get<double>(), 360.0);
  EXPECT_DOUBLE_EQ(dev[1]["ts"].get<double>(), 600.0);
  EXPECT_EQ(dev[0]["args"]["step"], 7);
  // Its id differs from the host-side in-flight slice of the same bucket.
  for (const json &e : ev)
    if (e.value("cat", "") == "bucket_in_flight") EXPECT_NE(e["id"], dev[0]["id"]);
  // No complete ("X") event came from it.
  for (const json &e : ev)
    if (e["ph"] == "X") EXPECT_NE(e["name"], "device");
}

namespace {
// One rank; all_reduce_wait of a bucket reports the device span a NCCL communicator measured.
struct SpanComm final : Communicator {
  bool timing = false;
  int asked = -1;
  SpanComm() : Communicator(plan::Mesh{1, 1, 1}) {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  Status all_reduce(const std::string &, void *, int64_t, plan::ElemType, ReduceOp) override { return Status::ok(); }
  Status send(int, int, const void *, int64_t) override { return Status::ok(); }
  Status recv(int, int, void *, int64_t) override { return Status::ok(); }
  Status flush() override { return Status::ok(); }
  void set_device_timing(bool on) override { timing = on; }
  bool device_span(int handle, int64_t *b, int64_t *e) override {
    asked = handle;
    if (!timing) return false;
    *b = 5000;
    *e = 9000;
    return true;
  }
};
} // namespace

// The executor turns the communicator's device span into the trace's device_comm event, after
// the all_reduce_wait of that bucket, and switches the timing on only with a DeviceTimer.
TEST(ExecutorTrace, BucketDeviceSpanFromTheCommunicator) {
  TinyPlan t;
  t.p.ranks[0].programs[0].instrs[1] = make_instr("all_reduce_wait", "", {t.x}, {t.x}, {{"bucket", int64_t(3)}});
  KernelRegistry reg;
  reg.add("work", [](KernelCall &) { return Status::ok(); });
  reg.add("all_reduce_wait", [](KernelCall &) { return Status::ok(); });
  MemoryHooks hooks;
  hooks.alloc = [](size_t n) { return std::aligned_alloc(64, n); };
  hooks.free = [](void *p) { std::free(p); };
  hooks.sync = [] { return Status::ok(); };
  SpanComm comm;
  auto ex = Executor::create(t.p, 0, reg, "cuda-like", &comm, &hooks);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  TraceRecorder rec(16);
  (*ex)->set_trace(&rec);  // no DeviceTimer (the cpu backend): no device timing
  EXPECT_FALSE(comm.timing);
  ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
  for (size_t i = 0; i < rec.size(); ++i) EXPECT_NE(rec[i].kind, TraceKind::DeviceComm);
  rec.clear();
  FakeTimer timer;
  (*ex)->set_trace(&rec, &timer);
  EXPECT_TRUE(comm.timing);
  ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
  EXPECT_EQ(comm.asked, 3);
  int found = 0;
  for (size_t i = 0; i < rec.size(); ++i)
    if (rec[i].kind == TraceKind::DeviceComm) {
      ++found;
      EXPECT_EQ(rec[i].begin_ns, 5000);
      EXPECT_EQ(rec[i].end_ns, 9000);
      EXPECT_EQ(rec[i].arg, 3);
    }
  EXPECT_EQ(found, 1);
  (*ex)->set_trace(nullptr);
  EXPECT_FALSE(comm.timing);
}

// Not a test: the cost of tracing per kernel call, for docs/benchmarks.md. Run with
//   build/tests/unit/test_trace --gtest_also_run_disabled_tests --gtest_filter='*OverheadPerKernel'
// A program of 1000 empty kernels runs alternately with and without a recorder, 200 times each;
// the fastest run of each (background load only ever adds time) gives the added nanoseconds per
// kernel, page faults of the growing event buffer included (it is never cleared).
TEST(ExecutorTrace, DISABLED_OverheadPerKernel) {
  TinyPlan t;
  plan::Program &prog = t.p.ranks[0].programs[0];
  prog.instrs.clear();
  for (int i = 0; i < 1000; ++i) prog.instrs.push_back(make_instr("work", "model.layers.0.mlp", {t.x}, {}));
  KernelRegistry reg;
  reg.add("work", [](KernelCall &) { return Status::ok(); });
  auto ex = Executor::create(t.p, 0, reg);
  ASSERT_TRUE(ex.is_ok()) << ex.message();
  constexpr int kRounds = 200;
  TraceRecorder rec(static_cast<size_t>(kRounds) * 1001);
  double best_off = 1e9, best_on = 1e9;
  for (int r = 0; r < kRounds; ++r)
    for (bool on : {false, true}) {
      (*ex)->set_trace(on ? &rec : nullptr);
      const auto t0 = std::chrono::steady_clock::now();
      ASSERT_TRUE((*ex)->run("micro_step", nullptr).is_ok());
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      (on ? best_on : best_off) = std::min(on ? best_on : best_off, s);
    }
  EXPECT_EQ(rec.dropped(), 0);
  std::printf("1000 kernels: fastest run %.1f us without, %.1f us with the trace: %.1f ns per kernel\n",
              best_off * 1e6, best_on * 1e6, (best_on - best_off) * 1e6);
}
