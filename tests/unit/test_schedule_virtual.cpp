//===- test_schedule_virtual.cpp - interleaved 1F1B and ZB-H1 task orders ---===//
//
// The orders of runtime/plan/schedule.cpp for the schedules beyond GPipe / 1F1B: every
// (chunk, micro-batch) runs F, then B, then W (zb-h1) exactly once; a slot is never reused
// while its owner is live; the dependencies across ranks can be met (the simulator places every
// task: no deadlock); peak in-flight micro-batches as the papers say; the simulated bubble equals
// the textbook formulas on uniform stages.
//
//===----------------------------------------------------------------------===//
#include "runtime/plan/schedule.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <tuple>

using namespace parallora;
using namespace parallora::rt;

namespace {

// Checks one stage's order; returns the peak number of (chunk, micro-batch) in flight.
int check_order(const std::string &sched, int S, int s, int M, int v) {
  SCOPED_TRACE(sched + " S=" + std::to_string(S) + " s=" + std::to_string(s) + " M=" + std::to_string(M) +
               " v=" + std::to_string(v));
  const auto tasks = pipeline_tasks(sched, S, s, M, v);
  const int slots = pipeline_slots(sched, S, s, M, v);
  const bool zb = schedule_splits_weight_grad(sched);
  EXPECT_EQ(tasks.size(), static_cast<size_t>((zb ? 3 : 2) * M * v));
  std::map<std::tuple<int, int, int>, int> at;  // (phase, chunk, mb) -> position
  std::map<int, std::pair<int, int>> owner;     // slot -> live (chunk, mb)
  int live = 0, peak = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const PipelineTask &t = tasks[i];
    EXPECT_GE(t.chunk, 0);
    EXPECT_LT(t.chunk, v);
    EXPECT_GE(t.slot, 0);
    EXPECT_LT(t.slot, slots);
    auto key = std::make_tuple(int(t.phase), t.chunk, t.micro_batch);
    EXPECT_EQ(at.count(key), 0u) << "task twice";
    at[key] = static_cast<int>(i);
    auto cm = std::make_pair(t.chunk, t.micro_batch);
    if (t.phase == Phase::Forward) {
      EXPECT_EQ(owner.count(t.slot), 0u) << "slot " << t.slot << " reused while live";
      owner[t.slot] = cm;
      peak = std::max(peak, ++live);
    } else {
      EXPECT_TRUE(at.count(std::make_tuple(int(Phase::Forward), t.chunk, t.micro_batch))) << "B/W before F";
      EXPECT_EQ(owner[t.slot], cm) << "B/W on another micro-batch's slot";
      if (t.phase == Phase::Weight)
        EXPECT_TRUE(at.count(std::make_tuple(int(Phase::Backward), t.chunk, t.micro_batch))) << "W before B";
      if ((t.phase == Phase::Weight) == zb) owner.erase(t.slot), --live;
    }
  }
  EXPECT_EQ(live, 0);
  EXPECT_EQ(peak, slots);
  return peak;
}

std::string order_str(const std::vector<PipelineTask> &tasks) {
  std::string r;
  for (const auto &t : tasks) {
    r += r.empty() ? "" : " ";
    r += t.phase == Phase::Forward ? "F" : t.phase == Phase::Backward ? "B" : "W";
    r += std::to_string(t.micro_batch);
    if (t.chunk) r += "." + std::to_string(t.chunk);
  }
  return r;
}

} // namespace

TEST(ScheduleVirtual, Names) {
  EXPECT_TRUE(check_schedule_name("interleaved").is_ok());
  EXPECT_TRUE(check_schedule_name("zb-h1").is_ok());
  Status st = check_schedule_name("zb-h2");
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("zb-h2"), std::string::npos);
  EXPECT_NE(st.message().find("interleaved"), std::string::npos);
  EXPECT_EQ(pipeline_program(Phase::Forward), "forward");
  EXPECT_EQ(pipeline_program(Phase::Weight), "backward_weight");
  EXPECT_EQ(pipeline_program(Phase::Backward, 2), "backward.c2");
  EXPECT_TRUE(schedule_splits_weight_grad("zb-h1"));
  EXPECT_FALSE(schedule_splits_weight_grad("1f1b"));
}

TEST(ScheduleVirtual, ShapeErrors) {
  Status st = check_pipeline_shape("interleaved", 4, 6, 2);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("micro-batches 6 is not a multiple of pp 4"), std::string::npos) << st.message();
  EXPECT_TRUE(pipeline_tasks("interleaved", 4, 0, 6, 2).empty());
  st = check_pipeline_shape("1f1b", 4, 8, 2);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("virtual stages 2 need the interleaved schedule"), std::string::npos) << st.message();
  EXPECT_TRUE(check_pipeline_shape("interleaved", 4, 8, 2).is_ok());
  EXPECT_TRUE(check_pipeline_shape("zb-h1", 4, 3, 1).is_ok());
}

TEST(ScheduleVirtual, OrdersAreValid) {
  for (int S : {1, 2, 3, 4})
    for (int M : {1, 2, 3, 4, 8, 12}) {
      for (int s = 0; s < S; ++s) {
        int peak = check_order("zb-h1", S, s, M, 1);
        // ZB-H1 keeps 1F1B's peak: at most S micro-batches in flight (1F1B's stage 0).
        EXPECT_LE(peak, std::min(S, M));
      }
      for (int v : {1, 2, 3})
        if (M % S == 0)
          for (int s = 0; s < S; ++s) {
            int peak = check_order("interleaved", S, s, M, v);
            // Megatron: (S - s - 1) * 2 + (v - 1) * S warm-up forwards, + 1 (all when M == S).
            int expect = v == 1   ? std::min(S - s, M)
                         : M == S ? M * v
                                  : std::min((S - s - 1) * 2 + (v - 1) * S + 1, M * v);
            EXPECT_EQ(peak, expect) << "S=" << S << " s=" << s << " M=" << M << " v=" << v;
          }
    }
}

TEST(ScheduleVirtual, KnownOrders) {
  // ZB-H1, 4 stages, 6 micro-batches: stage s defers its first s W's into the cool-down.
  EXPECT_EQ(order_str(pipeline_tasks("zb-h1", 4, 3, 6)), "F0 B0 F1 B1 F2 B2 F3 B3 W0 F4 B4 W1 F5 B5 W2 W3 W4 W5");
  EXPECT_EQ(order_str(pipeline_tasks("zb-h1", 4, 1, 6)), "F0 F1 F2 B0 F3 B1 W0 F4 B2 W1 F5 B3 W2 B4 W3 B5 W4 W5");
  EXPECT_EQ(order_str(pipeline_tasks("zb-h1", 4, 0, 6)), "F0 F1 F2 F3 B0 W0 F4 B1 W1 F5 B2 W2 B3 W3 B4 W4 B5 W5");
  // Interleaved, 2 stages x 2 chunks, 4 micro-batches (Megatron's order: groups of pp per chunk).
  EXPECT_EQ(order_str(pipeline_tasks("interleaved", 2, 0, 4, 2)),
            "F0 F1 F0.1 F1.1 F2 B0.1 F3 B1.1 F2.1 B0 F3.1 B1 B2.1 B3.1 B2 B3");
  EXPECT_EQ(order_str(pipeline_tasks("interleaved", 2, 1, 4, 2)),
            "F0 F1 F0.1 B0.1 F1.1 B1.1 F2 B0 F3 B1 F2.1 B2.1 F3.1 B3.1 B2 B3");
  // One chunk: interleaved is 1F1B.
  for (int s = 0; s < 4; ++s)
    EXPECT_EQ(order_str(pipeline_tasks("interleaved", 4, s, 8, 1)), order_str(pipeline_tasks("1f1b", 4, s, 8)));
}

// Uniform stages: the simulator reproduces the formulas, and never deadlocks.
TEST(ScheduleVirtual, SimulatedBubbleMatchesFormula) {
  for (int S : {2, 3, 4, 8})
    for (int M : {S, 2 * S, 4 * S}) {
      for (int v : {1, 2, 4}) {
        SCOPED_TRACE("interleaved S=" + std::to_string(S) + " M=" + std::to_string(M) + " v=" + std::to_string(v));
        PipelineCosts c;
        c.fwd.assign(S * v, 1.0 / v);  // a rank's layers split into v chunks
        c.bwd.assign(S * v, 2.0 / v);
        Timeline tl = simulate_pipeline("interleaved", M, c, v);
        ASSERT_EQ(tl.entries.size(), static_cast<size_t>(2 * S * M * v)) << "deadlock";
        // Megatron's bound (S-1)/(vM+S-1) holds from M >= 2S (with M == S every rank runs all
        // its forwards first, which is GPipe over S*v chunks).
        if (M >= 2 * S || v == 1) EXPECT_NEAR(tl.bubble_fraction, bubble_formula("interleaved", S, M, v), 1e-9);
        else EXPECT_LE(tl.bubble_fraction, bubble_formula("1f1b", S, M, 1) + 1e-9);
      }
      for (double w : {0.5, 1.0}) {
        SCOPED_TRACE("zb-h1 S=" + std::to_string(S) + " M=" + std::to_string(M));
        PipelineCosts c{std::vector<double>(S, 1.0), std::vector<double>(S, 1.0), std::vector<double>(S, w), 0};
        Timeline tl = simulate_pipeline("zb-h1", M, c, 1);
        ASSERT_EQ(tl.entries.size(), static_cast<size_t>(3 * S * M)) << "deadlock";
        EXPECT_NEAR(tl.makespan, M * (2.0 + w) + (S - 1) * (2.0 - w), 1e-9);
        EXPECT_NEAR(tl.bubble_fraction, bubble_formula("zb-h1", S, M, 1, 1, 1, w), 1e-9);
        // The same work as 1F1B with the backward whole: ZB-H1 is never slower.
        Timeline o = simulate_pipeline("1f1b", M, std::vector<double>(S, 1.0), std::vector<double>(S, 1.0 + w));
        EXPECT_LT(tl.makespan, o.makespan);
      }
    }
}

TEST(ScheduleVirtual, DependenciesHonoured) {
  const int S = 3, v = 2, M = 6;
  PipelineCosts c{{1, 2, 0.5, 1.5, 1, 3}, {2, 1, 4, 1, 2, 1}, {}, 0.25};
  Timeline tl = simulate_pipeline("interleaved", M, c, v);
  ASSERT_EQ(tl.entries.size(), static_cast<size_t>(2 * S * M * v));
  std::map<std::tuple<int, int, int>, TimelineEntry> at;  // (phase, model chunk, mb)
  for (const auto &e : tl.entries) at[{int(e.phase), e.chunk * S + e.stage, e.micro_batch}] = e;
  for (int k = 0; k < S * v; ++k)
    for (int mb = 0; mb < M; ++mb) {
      const auto &f = at[{int(Phase::Forward), k, mb}], &b = at[{int(Phase::Backward), k, mb}];
      EXPECT_NEAR(f.end - f.start, c.fwd[k], 1e-12);
      EXPECT_GE(b.start, f.end - 1e-12);
      if (k > 0) EXPECT_GE(f.start, at[std::make_tuple(int(Phase::Forward), k - 1, mb)].end + c.p2p - 1e-12);
      if (k + 1 < S * v) EXPECT_GE(b.start, at[std::make_tuple(int(Phase::Backward), k + 1, mb)].end + c.p2p - 1e-12);
    }
  // ZB-H1: W after its own B; a stage's tasks never overlap.
  PipelineCosts z{{1, 2, 1}, {1, 1, 2}, {0.5, 0.2, 0.1}, 0.1};
  Timeline zt = simulate_pipeline("zb-h1", M, z, 1);
  ASSERT_EQ(zt.entries.size(), static_cast<size_t>(3 * S * M));
  std::map<std::tuple<int, int, int>, TimelineEntry> zat;
  std::vector<std::vector<TimelineEntry>> per(S);
  for (const auto &e : zt.entries) zat[{int(e.phase), e.stage, e.micro_batch}] = e, per[e.stage].push_back(e);
  for (int s = 0; s < S; ++s) {
    for (size_t i = 1; i < per[s].size(); ++i) EXPECT_GE(per[s][i].start, per[s][i - 1].end - 1e-12);
    for (int mb = 0; mb < M; ++mb)
      EXPECT_GE(zat[std::make_tuple(int(Phase::Weight), s, mb)].start,
                zat[std::make_tuple(int(Phase::Backward), s, mb)].end - 1e-12);
  }
}
