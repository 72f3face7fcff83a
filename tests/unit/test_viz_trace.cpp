// The viewer's measured timeline (tools/lora-compile/viz_trace.h) on a hand-written trace: the
// step chosen (median on rank 0, first excluded), which events belong to a rank's step (those
// beginning inside its span, the end included), the step's shares and bubble, the whole run's
// from the summary, the textbook formula, and the errors (each names the file or the step).
#include "tools/lora-compile/viz_trace.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <unistd.h>

using namespace parallora;

namespace {

plan::Plan pp2_plan(int dp = 1) {
  plan::Plan p;
  p.mesh = plan::Mesh{dp, 1, 2};
  p.world_size = 2 * dp;
  p.pipeline_schedule = "1f1b";
  p.micro_batches = 2;
  p.ranks.resize(static_cast<size_t>(2 * dp));
  for (int r = 0; r < 2 * dp; ++r) {
    p.ranks[r].rank = r;
    p.ranks[r].pp_stage = r / dp;
  }
  return p;
}

// Steps 1..4 on both ranks; rank 0's durations 100, 300, 200, 250 us: the median of steps 2..4
// is step 4 (250). Events of step 4 around the span edges.
const char *kTrace = R"JSON({"otherData": {"mesh": {"dp": 1, "tp": 1, "pp": 2}, "clock_error_us_max": 1.5,
  "summary": {"ranks": [
    {"compute_fraction": 0.5, "hidden_comm_fraction": 0.0, "exposed_comm_fraction": 0.375, "idle_fraction": 0.125},
    {"compute_fraction": 0.25, "hidden_comm_fraction": 0.0, "exposed_comm_fraction": 0.5, "idle_fraction": 0.25}]}},
 "traceEvents": [
  {"ph":"M","pid":0,"tid":0,"name":"process_name","args":{"name":"rank 0 (dp 0, tp 0, pp 0)"}},
  {"ph":"M","pid":1,"tid":0,"name":"process_name","args":{"name":"rank 1 (dp 0, tp 0, pp 1)"}},
  {"ph":"X","pid":0,"tid":0,"cat":"step","ts":0,"dur":100,"name":"step 1","args":{"step":1}},
  {"ph":"X","pid":0,"tid":0,"cat":"step","ts":200,"dur":300,"name":"step 2","args":{"step":2}},
  {"ph":"X","pid":0,"tid":0,"cat":"step","ts":600,"dur":200,"name":"step 3","args":{"step":3}},
  {"ph":"X","pid":0,"tid":0,"cat":"step","ts":1000,"dur":250,"name":"step 4","args":{"step":4}},
  {"ph":"X","pid":0,"tid":0,"cat":"session","ts":1000,"dur":5,"name":"load batch","args":{"step":4}},
  {"ph":"X","pid":0,"tid":0,"cat":"program","ts":1005,"dur":50,"name":"forward","args":{"step":4,"micro_batch":0,"slot":0}},
  {"ph":"X","pid":0,"tid":1,"cat":"compute","ts":1010,"dur":30,"name":"lora_linear_fwd","args":{"program":"forward","step":4}},
  {"ph":"X","pid":0,"tid":3,"cat":"idle","ts":1060,"dur":40,"name":"idle","args":{}},
  {"ph":"X","pid":0,"tid":2,"cat":"comm","ts":1100,"dur":100,"name":"recv","args":{"program":"backward","step":4,"bytes":64}},
  {"ph":"X","pid":0,"tid":1,"cat":"compute","ts":1250,"dur":5,"name":"linear_bwd","args":{"program":"backward","step":4}},
  {"ph":"X","pid":0,"tid":1,"cat":"compute","ts":1250.5,"dur":5,"name":"after","args":{"program":"backward","step":4}},
  {"ph":"X","pid":0,"tid":1,"cat":"compute","ts":999,"dur":1,"name":"before","args":{"program":"forward","step":3}},
  {"ph":"b","pid":0,"tid":2,"cat":"bucket_in_flight","name":"bucket 0 in flight","id":"r0.0","ts":1020},
  {"ph":"e","pid":0,"tid":2,"cat":"bucket_in_flight","name":"bucket 0 in flight","id":"r0.0","ts":1030},
  {"ph":"X","pid":1,"tid":0,"cat":"step","ts":0,"dur":90,"name":"step 1","args":{"step":1}},
  {"ph":"X","pid":1,"tid":0,"cat":"step","ts":210,"dur":280,"name":"step 2","args":{"step":2}},
  {"ph":"X","pid":1,"tid":0,"cat":"step","ts":610,"dur":190,"name":"step 3","args":{"step":3}},
  {"ph":"X","pid":1,"tid":0,"cat":"step","ts":990,"dur":270,"name":"step 4","args":{"step":4}},
  {"ph":"X","pid":1,"tid":1,"cat":"compute","ts":1000,"dur":100,"name":"cross_entropy_bwd","args":{"program":"micro_step","step":4}}
 ]})JSON";

struct TempFile {
  std::string path;
  explicit TempFile(const std::string &text) {
    char tmpl[] = "/tmp/viz_trace_XXXXXX";
    int fd = mkstemp(tmpl);
    close(fd);
    path = tmpl;
    std::ofstream(path) << text;
  }
  ~TempFile() { std::remove(path.c_str()); }
};

} // namespace

TEST(VizTrace, MedianStepAndTheEventsOfEachRank) {
  TempFile f(kTrace);
  viz::MeasuredStep m;
  ASSERT_TRUE(viz::load_measured_step(f.path, -1, pp2_plan(), &m).is_ok());
  EXPECT_EQ(m.step, 4);
  EXPECT_EQ(m.steps, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_DOUBLE_EQ(m.lo, 990);
  EXPECT_DOUBLE_EQ(m.hi, 1260);
  EXPECT_DOUBLE_EQ(m.clock_error_us, 1.5);
  ASSERT_EQ(m.ranks.size(), 2u);
  const viz::MeasuredRank &r0 = m.ranks[0];
  EXPECT_EQ(r0.name, "rank 0 (dp 0, tp 0, pp 0)");
  int lanes[4] = {0, 0, 0, 0};
  for (const viz::MeasuredEvent &e : r0.events) ++lanes[static_cast<int>(e.lane)];
  EXPECT_EQ(lanes[0], 1);  // the forward program (not the session's "load batch", not the step)
  EXPECT_EQ(lanes[1], 2);  // 1010 and the one beginning exactly at the span's end (1250)
  EXPECT_EQ(lanes[2], 1);
  EXPECT_EQ(lanes[3], 1);
  EXPECT_DOUBLE_EQ(r0.compute_us, 35);
  EXPECT_DOUBLE_EQ(r0.comm_us, 100);
  EXPECT_DOUBLE_EQ(r0.idle_us, 115);  // the step minus compute minus communication
  EXPECT_DOUBLE_EQ(r0.step_bubble(), 215.0 / 250.0);
  ASSERT_TRUE(r0.has_run);
  EXPECT_DOUBLE_EQ(r0.run_bubble(), 0.5);
  const viz::MeasuredRank &r1 = m.ranks[1];
  ASSERT_EQ(r1.events.size(), 1u);
  EXPECT_TRUE(r1.events[0].backward);  // cross_entropy_bwd in micro_step: the backward colour
  EXPECT_DOUBLE_EQ(r1.step_bubble(), 170.0 / 270.0);
  EXPECT_DOUBLE_EQ(r1.run_bubble(), 0.75);

  // --viz-step picks another step; the picture and the table carry it.
  ASSERT_TRUE(viz::load_measured_step(f.path, 2, pp2_plan(), &m).is_ok());
  EXPECT_EQ(m.step, 2);
  EXPECT_TRUE(m.ranks[0].events.empty());
  EXPECT_DOUBLE_EQ(m.ranks[0].step_bubble(), 1.0);  // nothing but waiting
  const std::string html = viz::measured_html(pp2_plan(), m, nullptr);
  EXPECT_NE(html.find("data-step=\"2\""), std::string::npos);
  EXPECT_NE(html.find("data-formula=\"0.33333333333333331\""), std::string::npos);
  EXPECT_NE(html.find("<td class=\"run-bubble\">50.0%</td>"), std::string::npos) << html;
  EXPECT_NE(html.find("<td class=\"run-bubble\">75.0%</td>"), std::string::npos);
}

TEST(VizTrace, FormulaOfTheSchedules) {
  EXPECT_DOUBLE_EQ(*viz::formula_bubble("1f1b", 2, 2), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(*viz::formula_bubble("gpipe", 4, 8), 3.0 / 11.0);
  EXPECT_DOUBLE_EQ(*viz::formula_bubble("1f1b", 1, 8), 0.0);
  EXPECT_FALSE(viz::formula_bubble("some-new-schedule", 2, 4).has_value());
}

TEST(VizTrace, ErrorsNameTheFileOrTheStep) {
  viz::MeasuredStep m;
  TempFile f(kTrace);
  Status s = viz::load_measured_step(f.path, 9, pp2_plan(), &m);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "--viz-step 9: not in " + f.path + " (its steps: 1, 2, 3, 4)");
  s = viz::load_measured_step(f.path, -1, pp2_plan(2), &m);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "--viz-trace " + f.path + ": a trace of 2 ranks (dp 1 x tp 1 x pp 2), but the plan has 4 "
                         "(dp 2 x tp 1 x pp 2): give the trace of a run of this plan");
  TempFile broken(std::string(kTrace).substr(0, 400));
  s = viz::load_measured_step(broken.path, -1, pp2_plan(), &m);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("--viz-trace " + broken.path + ": not JSON"), std::string::npos) << s.message();
  TempFile no_steps(R"JSON({"traceEvents":[{"ph":"M","pid":0,"tid":0,"name":"process_name","args":{"name":"a"}},
                                        {"ph":"M","pid":1,"tid":0,"name":"process_name","args":{"name":"b"}}]})JSON");
  s = viz::load_measured_step(no_steps.path, -1, pp2_plan(), &m);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("no step spans"), std::string::npos) << s.message();
  s = viz::load_measured_step("/nonexistent/trace.json", -1, pp2_plan(), &m);
  EXPECT_EQ(s.message(), "--viz-trace /nonexistent/trace.json: cannot open the file");
}
