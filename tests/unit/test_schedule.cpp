//===- test_schedule.cpp - pipeline schedules and their simulation ---------===//
#include "runtime/plan/schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

using namespace parallora;
using namespace parallora::rt;

namespace {

const char *kSchedules[] = {"gpipe", "1f1b"};

// Checks the structural invariants of one stage's order.
void check_order(const std::string &schedule, int S, int s, int M) {
  SCOPED_TRACE(schedule + " S=" + std::to_string(S) + " s=" + std::to_string(s) + " M=" + std::to_string(M));
  const auto tasks = pipeline_tasks(schedule, S, s, M);
  const int slots = pipeline_slots(schedule, S, s, M);
  ASSERT_EQ(tasks.size(), static_cast<size_t>(2 * M));
  ASSERT_GE(slots, 1);
  std::vector<int> fwd_at(M, -1), bwd_at(M, -1);
  std::set<int> in_flight;
  std::map<int, int> slot_owner;  // slot -> live micro-batch
  int max_in_flight = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const PipelineTask &t = tasks[i];
    ASSERT_GE(t.micro_batch, 0);
    ASSERT_LT(t.micro_batch, M);
    EXPECT_EQ(t.slot, t.micro_batch % slots);
    ASSERT_GE(t.slot, 0);
    ASSERT_LT(t.slot, slots);
    if (t.phase == Phase::Forward) {
      EXPECT_EQ(fwd_at[t.micro_batch], -1) << "forward of mb " << t.micro_batch << " twice";
      fwd_at[t.micro_batch] = static_cast<int>(i);
      EXPECT_EQ(slot_owner.count(t.slot), 0u)
          << "mb " << t.micro_batch << " reuses slot " << t.slot << " of live mb " << slot_owner[t.slot];
      slot_owner[t.slot] = t.micro_batch;
      in_flight.insert(t.micro_batch);
      max_in_flight = std::max<int>(max_in_flight, static_cast<int>(in_flight.size()));
    } else {
      EXPECT_EQ(bwd_at[t.micro_batch], -1) << "backward of mb " << t.micro_batch << " twice";
      EXPECT_NE(fwd_at[t.micro_batch], -1) << "backward of mb " << t.micro_batch << " before its forward";
      bwd_at[t.micro_batch] = static_cast<int>(i);
      EXPECT_EQ(slot_owner[t.slot], t.micro_batch);
      slot_owner.erase(t.slot);
      in_flight.erase(t.micro_batch);
    }
  }
  for (int mb = 0; mb < M; ++mb) {
    EXPECT_NE(fwd_at[mb], -1) << "mb " << mb;
    EXPECT_NE(bwd_at[mb], -1) << "mb " << mb;
  }
  EXPECT_TRUE(in_flight.empty());
  EXPECT_EQ(max_in_flight, slots);  // slots = micro-batches in flight
  if (schedule == "1f1b") EXPECT_LE(max_in_flight, S - s);
}

std::string order_str(const std::vector<PipelineTask> &tasks) {
  std::string r;
  for (const auto &t : tasks) r += (r.empty() ? "" : " ") + std::string(t.phase == Phase::Forward ? "F" : "B") + std::to_string(t.micro_batch);
  return r;
}

} // namespace

TEST(Schedule, CheckName) {
  EXPECT_TRUE(check_schedule_name("gpipe").is_ok());
  EXPECT_TRUE(check_schedule_name("1f1b").is_ok());
  Status st = check_schedule_name("zb");
  ASSERT_FALSE(st.is_ok());
  EXPECT_EQ(st.message(), "unknown pipeline schedule 'zb' (choose gpipe, 1f1b, interleaved or zb-h1)");
  EXPECT_FALSE(check_schedule_name("none").is_ok());
  EXPECT_FALSE(check_schedule_name("").is_ok());
}

TEST(Schedule, OrdersS4M8) {
  for (const char *sched : kSchedules)
    for (int s = 0; s < 4; ++s) check_order(sched, 4, s, 8);
}

TEST(Schedule, OrdersManyShapes) {
  for (const char *sched : kSchedules)
    for (int S = 1; S <= 6; ++S)
      for (int M = 1; M <= 10; ++M)
        for (int s = 0; s < S; ++s) check_order(sched, S, s, M);
}

TEST(Schedule, ExactOrders) {
  EXPECT_EQ(order_str(pipeline_tasks("gpipe", 4, 1, 3)), "F0 F1 F2 B0 B1 B2");
  // 1f1b, S=4, M=8: stage 0 warms up with 3, stage 3 with none.
  EXPECT_EQ(order_str(pipeline_tasks("1f1b", 4, 0, 8)), "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7");
  EXPECT_EQ(order_str(pipeline_tasks("1f1b", 4, 2, 8)), "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7");
  EXPECT_EQ(order_str(pipeline_tasks("1f1b", 4, 3, 8)), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7");
  // Fewer micro-batches than warm-up: all forwards, then all backwards.
  EXPECT_EQ(order_str(pipeline_tasks("1f1b", 4, 0, 2)), "F0 F1 B0 B1");
  EXPECT_TRUE(pipeline_tasks("bogus", 4, 0, 8).empty());
  EXPECT_TRUE(pipeline_tasks("gpipe", 4, 0, 0).empty());
}

TEST(Schedule, Slots) {
  for (int s = 0; s < 4; ++s) {
    EXPECT_EQ(pipeline_slots("gpipe", 4, s, 8), 8);
    EXPECT_EQ(pipeline_slots("1f1b", 4, s, 8), 4 - s);
    EXPECT_LT(pipeline_slots("1f1b", 4, s, 8), pipeline_slots("gpipe", 4, s, 8));  // 1f1b needs fewer
  }
  EXPECT_EQ(pipeline_slots("1f1b", 4, 0, 2), 2);
  EXPECT_EQ(pipeline_slots("1f1b", 1, 0, 5), 1);
  EXPECT_EQ(pipeline_slots("gpipe", 1, 0, 5), 5);
}

TEST(Schedule, UniformBubbleIsClassic) {
  for (const char *sched : kSchedules)
    for (int S : {1, 2, 3, 4, 8})
      for (int M : {1, 2, 4, 8, 16})
        for (double ratio : {1.0, 2.0}) {
          SCOPED_TRACE(std::string(sched) + " S=" + std::to_string(S) + " M=" + std::to_string(M));
          Timeline tl = simulate_pipeline(sched, M, std::vector<double>(S, 1.0), std::vector<double>(S, ratio));
          const double expect = double(S - 1) / double(M + S - 1);
          EXPECT_NEAR(tl.bubble_fraction, expect, 1e-9);
          EXPECT_NEAR(tl.makespan, (M + S - 1) * (1.0 + ratio), 1e-9);
          ASSERT_EQ(tl.bubble.size(), static_cast<size_t>(S));
          for (int s = 0; s < S; ++s) {
            EXPECT_NEAR(tl.busy[s], M * (1.0 + ratio), 1e-9);
            EXPECT_NEAR(tl.bubble[s], expect, 1e-9);
          }
          EXPECT_EQ(tl.entries.size(), static_cast<size_t>(2 * S * M));
        }
}

TEST(Schedule, SingleStageHasNoBubble) {
  for (const char *sched : kSchedules) {
    Timeline tl = simulate_pipeline(sched, 5, {3.0}, {7.0});
    EXPECT_DOUBLE_EQ(tl.bubble_fraction, 0.0);
    EXPECT_DOUBLE_EQ(tl.makespan, 50.0);
  }
}

TEST(Schedule, DependenciesHonoured) {
  const std::vector<double> f = {1.0, 3.0, 0.5, 2.0}, b = {2.5, 1.0, 4.0, 1.5};
  const double p2p = 0.25;
  for (const char *sched : kSchedules) {
    SCOPED_TRACE(sched);
    const int S = 4, M = 6;
    Timeline tl = simulate_pipeline(sched, M, f, b, p2p);
    ASSERT_EQ(tl.entries.size(), static_cast<size_t>(2 * S * M));
    std::map<std::tuple<int, int, int>, TimelineEntry> at;
    auto key = [](int st, Phase ph, int mb) { return std::make_tuple(st, int(ph), mb); };
    for (const auto &e : tl.entries) at[key(e.stage, e.phase, e.micro_batch)] = e;
    ASSERT_EQ(at.size(), tl.entries.size());
    for (int s = 0; s < S; ++s) {
      // The stage's own entries follow pipeline_tasks order and never overlap.
      auto order = pipeline_tasks(sched, S, s, M);
      double prev_end = 0;
      for (const auto &t : order) {
        const auto &e = at[key(s, t.phase, t.micro_batch)];
        EXPECT_GE(e.start, prev_end - 1e-12);
        EXPECT_NEAR(e.end - e.start, t.phase == Phase::Forward ? f[s] : b[s], 1e-12);
        prev_end = e.end;
      }
      for (int mb = 0; mb < M; ++mb) {
        const auto &fe = at[key(s, Phase::Forward, mb)];
        const auto &be = at[key(s, Phase::Backward, mb)];
        EXPECT_GE(be.start, fe.end - 1e-12);
        if (s > 0) EXPECT_GE(fe.start, at[key(s - 1, Phase::Forward, mb)].end + p2p - 1e-12);
        if (s + 1 < S) EXPECT_GE(be.start, at[key(s + 1, Phase::Backward, mb)].end + p2p - 1e-12);
        EXPECT_LE(be.end, tl.makespan + 1e-12);
      }
    }
    // Busy per stage and bubble are consistent.
    double mean = 0;
    for (int s = 0; s < S; ++s) {
      EXPECT_NEAR(tl.busy[s], M * (f[s] + b[s]), 1e-9);
      EXPECT_NEAR(tl.bubble[s], 1 - tl.busy[s] / tl.makespan, 1e-12);
      mean += tl.bubble[s];
    }
    EXPECT_NEAR(tl.bubble_fraction, mean / S, 1e-12);
  }
}

TEST(Schedule, NonUniformCostsBoundedBySlowestStage) {
  const std::vector<std::pair<std::vector<double>, std::vector<double>>> cases = {
      {{1, 4, 1}, {2, 8, 2}}, {{5, 1, 1, 1}, {1, 1, 1, 9}}, {{2, 2}, {1, 6}}};
  for (const char *sched : kSchedules)
    for (const auto &[f, b] : cases)
      for (int M : {1, 3, 8}) {
        Timeline tl = simulate_pipeline(sched, M, f, b);
        double slowest = 0, sum_first = 0;
        for (size_t s = 0; s < f.size(); ++s) {
          slowest = std::max(slowest, f[s] + b[s]);
          sum_first += f[s] + b[s];
        }
        // Every micro-batch passes the slowest stage; and micro-batch 0 passes every stage.
        EXPECT_GE(tl.makespan, M * slowest - 1e-9);
        EXPECT_GE(tl.makespan, sum_first - 1e-9);
        EXPECT_GT(tl.bubble_fraction, 0.0);
        EXPECT_LT(tl.bubble_fraction, 1.0);
      }
}

TEST(Schedule, OneFOneBNotSlowerThanGpipeUniform) {
  Timeline g = simulate_pipeline("gpipe", 8, {1, 1, 1, 1}, {2, 2, 2, 2});
  Timeline o = simulate_pipeline("1f1b", 8, {1, 1, 1, 1}, {2, 2, 2, 2});
  EXPECT_NEAR(g.makespan, o.makespan, 1e-9);
}

TEST(Schedule, EmptyInputs) {
  Timeline tl = simulate_pipeline("gpipe", 0, {1, 1}, {1, 1});
  EXPECT_TRUE(tl.entries.empty());
  EXPECT_EQ(tl.makespan, 0.0);
  Timeline none = simulate_pipeline("1f1b", 4, {}, {});
  EXPECT_TRUE(none.entries.empty());
  EXPECT_EQ(none.bubble_fraction, 0.0);
}
