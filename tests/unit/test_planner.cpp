// The planner (passes/planner): device profile parsing, the cost of hand-checked small plans,
// the analytic candidate estimate's rejections, and the node topology of collective groups.
#include <gtest/gtest.h>

#include "passes/planner/analytic.h"
#include "passes/planner/cost_model.h"
#include "passes/planner/device_profile.h"

using namespace parallora;
using namespace parallora::planner;

namespace {

/// A profile with round numbers: 1 us per instruction, 1 GB/s memory, GEMMs at 1 GFLOP/s when
/// the smallest side is < 8 and 2 GFLOP/s from 8, all-reduce alpha 10 us at 1 GB/s bus.
const char *kProfile = R"({
  "format": "parallora-device-profile", "version": 1, "name": "round", "backend": "cpu",
  "devices_per_node": 4, "memory_gib": 1,
  "peak_tflops": {"value": 0.002, "source": "test"},
  "instruction_overhead_s": 1e-6,
  "memory_bandwidth_gbps": 1,
  "gemm": {"fp32": [{"min_dim": 0, "tflops": 0.001}, {"min_dim": 8, "tflops": 0.002}]},
  "attention": {"fp32": {"tflops": 0.001}},
  "links": {"intra_node": {"all_reduce": {"alpha_s": 1e-5, "bus_gbps": 1}, "send": {"alpha_s": 1e-5, "bus_gbps": 1}}}
})";

/// Every plan of more than one rank ends its step with the runtime's control all-reduce of 3
/// doubles over the world (session.cpp): 10 us + 2 (2-1)/2 x 24 B / 1 GB/s = 10.024 us on 2 ranks.
constexpr double kControl2 = 10.024e-6;

DeviceProfile round_profile() {
  auto p = parse_device_profile(kProfile, "round.json");
  EXPECT_TRUE(p.is_ok()) << p.message();
  return *p;
}

plan::Buffer buf(int id, std::vector<int64_t> shape, plan::BufferKind kind = plan::BufferKind::Activation) {
  plan::Buffer b;
  b.id = id;
  b.name = "b" + std::to_string(id);
  b.kind = kind;
  b.shape = std::move(shape);
  return b;
}

plan::Instr instr(std::string op, std::vector<int32_t> in, std::vector<int32_t> out, std::map<std::string, plan::AttrValue> attrs = {}) {
  plan::Instr i;
  i.op = std::move(op);
  i.inputs = std::move(in);
  i.outputs = std::move(out);
  i.attrs = std::move(attrs);
  return i;
}

} // namespace

TEST(DeviceProfile, ParsesRatesAndClasses) {
  DeviceProfile p = round_profile();
  EXPECT_EQ(p.name, "round");
  // (4 x 8) x (8 x 16): smallest side 4 -> 1 GFLOP/s: 2*4*16*8 = 1024 FLOP = 1.024 us.
  EXPECT_DOUBLE_EQ(p.gemm_seconds(4, 16, 8, "fp32"), 1024 / 1e9);
  // Smallest side 8 -> 2 GFLOP/s; bf16 falls back to the fp32 table.
  EXPECT_DOUBLE_EQ(p.gemm_seconds(8, 16, 8, "bf16"), 2.0 * 8 * 16 * 8 / 2e9);
  // No inter_node section: the intra-node costs apply.
  EXPECT_DOUBLE_EQ(p.inter_node.all_reduce.alpha_s, 1e-5);
}

TEST(DeviceProfile, ErrorsNameFileAndField) {
  auto bad = [](std::string text) { return parse_device_profile(text, "bad.json"); };
  std::string good = kProfile;
  auto missing = bad(std::string(good).replace(good.find("\"memory_bandwidth_gbps\": 1,"), 27, ""));
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.message(), "bad.json: memory_bandwidth_gbps: missing");
  std::string neg = good;
  neg.replace(neg.find("\"bus_gbps\": 1}, \"send\""), 13, "\"bus_gbps\": -1");
  auto n = bad(neg);
  ASSERT_FALSE(n.is_ok());
  EXPECT_NE(n.message().find("bad.json: links.intra_node.all_reduce.bus_gbps: must be positive, got -1"), std::string::npos)
      << n.message();
  std::string order = good;
  order.replace(order.find("{\"min_dim\": 8"), 13, "{\"min_dim\": 0");
  auto o = bad(order);
  ASSERT_FALSE(o.is_ok());
  EXPECT_NE(o.message().find("bad.json: gemm.fp32[1].min_dim: must increase"), std::string::npos) << o.message();
  auto v = bad(std::string(good).replace(good.find("\"version\": 1"), 12, "\"version\": 7"));
  ASSERT_FALSE(v.is_ok());
  EXPECT_EQ(v.message(), "bad.json: version: expected 1 to 2, got 7");
  EXPECT_EQ(bad("{").message(), "bad.json: not valid JSON");
  auto typed = bad(std::string(good).replace(good.find("\"name\": \"round\""), 15, "\"name\": 7"));
  ASSERT_FALSE(typed.is_ok());
  EXPECT_EQ(typed.message().rfind("bad.json: ", 0), 0u) << typed.message();
  auto file = load_device_profile("no-such-profile", "/nonexistent");
  ASSERT_FALSE(file.is_ok());
  EXPECT_NE(file.message().find("/nonexistent/no-such-profile.json"), std::string::npos);
}

TEST(DeviceProfile, WrittenProfileReadsBack) {
  DeviceProfile p = round_profile();
  auto back = parse_device_profile(device_profile_json(p, {{"peak_tflops", "a test"}}), "written.json");
  ASSERT_TRUE(back.is_ok()) << back.message();
  EXPECT_DOUBLE_EQ(back->gemm_seconds(4, 16, 8, "fp32"), p.gemm_seconds(4, 16, 8, "fp32"));
  EXPECT_DOUBLE_EQ(back->intra_node.send.bus_gbps, 1);
}

// One rank, micro_step = linear_fwd then add, 2 micro-batches, empty optimizer step.
plan::Plan linear_add_plan() {
  plan::Plan p;
  p.micro_batches = 2;
  plan::RankPlan r;
  r.buffers = {buf(0, {4, 8}), buf(1, {16, 8}, plan::BufferKind::Param), buf(2, {4, 16}), buf(3, {4, 16})};
  r.programs = {{"micro_step", {instr("linear_fwd", {0, 1}, {2}), instr("add", {2, 2}, {3})}}, {"optimizer_step", {}}};
  p.ranks = {r};
  return p;
}

// kProfile as a version-2 file with `extra` (", \"key\": ...") added to its top-level object.
std::string profile_v2(const std::string &extra) {
  std::string v2 = kProfile;
  v2.replace(v2.find("\"version\": 1"), 12, "\"version\": 2");
  v2.insert(v2.rfind('}'), extra);
  return v2;
}

// One rank, micro_step = linear_fwd then add, 2 micro-batches, empty optimizer step.
//   linear_fwd x (4,8) W (16,8): 1 us overhead + 2*4*16*8 FLOP / 1 GFLOP/s = 1 + 1.024 = 2.024 us
//   add y (4,16) + y -> z (4,16): 1 us + (256 B read once + 256 B written) / 1 GB/s = 1.512 us
//   step = 2 x (2.024 + 1.512) = 7.072 us
TEST(CostModel, HandCheckedSingleRank) {
  plan::Plan p = linear_add_plan();
  PlanCost c = cost_plan(p, round_profile());
  ASSERT_EQ(c.ranks.size(), 1u);
  EXPECT_NEAR(c.step_s, 7.072e-6, 1e-12);
  EXPECT_NEAR(c.ranks[0].compute_s, 7.072e-6, 1e-12);
  EXPECT_DOUBLE_EQ(c.ranks[0].comm_s, 0);
}

// The same plan on a version-2 profile with in-step corrections (lora-bench --calibrate
// --step-plan): GEMMs x 2, memory-class kernels x 3, 0.5 us dispatch per instruction:
//   linear (1 + 0.5) + 2 x 1.024 = 3.548 us; add (1 + 0.5) + 3 x 0.512 = 3.036 us; step 2 x 6.584.
// A version-1 profile has none (factor 1, no dispatch): the 7.072 us above; a factor in a
// version-1 file is an error naming it.
TEST(CostModel, InStepFactorsAndDispatch) {
  plan::Plan p = linear_add_plan();
  std::string v2 = profile_v2(R"(, "in_step": {"gemm": {"value": 2, "source": "test"}, "memory": 3,
                              "dispatch_overhead_s": {"value": 5e-7, "source": "test"}})");
  auto dev = parse_device_profile(v2, "v2.json");
  ASSERT_TRUE(dev.is_ok()) << dev.message();
  EXPECT_NEAR(cost_plan(p, *dev).step_s, 2 * 6.584e-6, 1e-12);
  EXPECT_DOUBLE_EQ(dev->factor("attention"), 1);
  // Written and read back, the corrections survive.
  auto back = parse_device_profile(device_profile_json(*dev, {}), "written.json");
  ASSERT_TRUE(back.is_ok()) << back.message();
  EXPECT_NEAR(cost_plan(p, *back).step_s, 2 * 6.584e-6, 1e-12);
  EXPECT_NEAR(cost_plan(p, round_profile()).step_s, 7.072e-6, 1e-12);
  std::string v1 = v2;
  v1.replace(v1.find("\"version\": 2"), 12, "\"version\": 1");
  auto bad = parse_device_profile(v1, "v1.json");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.message(), "v1.json: in_step: needs version 2 (got version 1)");
  v2.replace(v2.find("\"memory\": 3"), 11, "\"memroy\": 3");
  EXPECT_EQ(parse_device_profile(v2, "typo.json").message(),
            "typo.json: in_step.memroy: unknown (expected gemm, attention, memory, dispatch_overhead_s, bf16)");
}

// in_step.bf16 (lora-bench --step-plan-bf16): a bf16 plan is costed with the bf16 factors and
// dispatch, an fp32 plan with the fp32 ones. InStepFactorsAndDispatch's plan (linear_fwd 2.024
// us = 1 + 1.024 work, add 1.512 = 1 + 0.512, per micro-batch, 2 micro-batches): with bf16 gemm 3,
// memory 5 and dispatch 1 us: 2 x ((1 + 1 + 3 x 1.024) + (1 + 1 + 5 x 0.512)) = 2 x 9.632 us.
TEST(CostModel, Bf16InStepFactorsApplyToBf16Plans) {
  plan::Plan p = linear_add_plan();
  std::string v2 = profile_v2(R"(, "in_step": {"gemm": 2, "memory": 3, "dispatch_overhead_s": 5e-7,
                              "bf16": {"gemm": 3, "memory": 5, "dispatch_overhead_s": 1e-6}})");
  auto dev = parse_device_profile(v2, "v2.json");
  ASSERT_TRUE(dev.is_ok()) << dev.message();
  EXPECT_NEAR(cost_plan(p, *dev).step_s, 2 * 6.584e-6, 1e-12);  // fp32: InStepFactorsAndDispatch
  p.precision = "bf16";
  EXPECT_NEAR(cost_plan(p, *dev).step_s, 2 * 9.632e-6, 1e-12);
  auto back = parse_device_profile(device_profile_json(*dev, {}), "written.json");
  ASSERT_TRUE(back.is_ok()) << back.message();
  EXPECT_NEAR(cost_plan(p, *back).step_s, 2 * 9.632e-6, 1e-12);
  v2.replace(v2.find("\"memory\": 5"), 11, "\"memroy\": 5");
  EXPECT_EQ(parse_device_profile(v2, "typo.json").message(),
            "typo.json: in_step.bf16.memroy: unknown (expected gemm, attention, memory, dispatch_overhead_s)");
}

// gemm_call_s (profile version 2) is charged once per GEMM library call of a linear kernel, on top
// of its work (runtime/cpu/matmul.cpp): linear_fwd 1, lora_linear_fwd 3, lora_linear_bwd 6, its
// zb-h1 parts 3 (input: dy B, dy W, (dy B) A) and 4 (weight: dy B again, x A^T, dA, dB). With 2
// micro-batches of those five instructions: 2 x (1 + 3 + 6 + 3 + 4) = 34 calls, 34 us at 1 us each.
TEST(CostModel, GemmCallCostPerLibraryCall) {
  plan::Plan p;
  p.micro_batches = 2;
  plan::RankPlan r;
  // x (4 x 8), W (16 x 8), A (2 x 8), B (16 x 2), y / dy (4 x 16), dx (4 x 8), dA, dB.
  r.buffers = {buf(0, {4, 8}), buf(1, {16, 8}, plan::BufferKind::Param), buf(2, {2, 8}, plan::BufferKind::Trainable),
               buf(3, {16, 2}, plan::BufferKind::Trainable), buf(4, {4, 16}), buf(5, {4, 8}), buf(6, {2, 8}, plan::BufferKind::Grad),
               buf(7, {16, 2}, plan::BufferKind::Grad)};
  plan::AttrValue in_part = std::string("input"), w_part = std::string("weight");
  const std::vector<plan::Instr> step = {
      instr("linear_fwd", {0, 1}, {4}), instr("lora_linear_fwd", {0, 1, 2, 3}, {4}),
      instr("lora_linear_bwd", {4, 0, 1, 2, 3}, {5, 6, 7}),
      instr("lora_linear_bwd", {4, 0, 1, 2, 3}, {5, 6, 7}, {{"part", in_part}}),
      instr("lora_linear_bwd", {4, 0, 1, 2, 3}, {5, 6, 7}, {{"part", w_part}})};
  r.programs = {{"micro_step", step}, {"optimizer_step", {}}};
  p.ranks = {r};
  int calls = 0;
  for (const plan::Instr &in : step) calls += gemm_calls(in);
  EXPECT_EQ(calls, 17);
  EXPECT_EQ(gemm_calls(instr("add", {4, 4}, {4})), 0);
  std::string v2 = profile_v2("");
  auto without = parse_device_profile(v2, "v2.json");
  ASSERT_TRUE(without.is_ok()) << without.message();
  v2.insert(v2.rfind('}'), R"(, "gemm_call_s": {"value": 1e-6, "source": "test"})");
  auto with = parse_device_profile(v2, "v2.json");
  ASSERT_TRUE(with.is_ok()) << with.message();
  EXPECT_DOUBLE_EQ(with->gemm_call_s, 1e-6);
  EXPECT_NEAR(cost_plan(p, *with).step_s - cost_plan(p, *without).step_s, 34e-6, 1e-12);
  // Written and read back; refused in a version-1 file.
  auto back = parse_device_profile(device_profile_json(*with, {}), "written.json");
  ASSERT_TRUE(back.is_ok()) << back.message();
  EXPECT_DOUBLE_EQ(back->gemm_call_s, 1e-6);
  std::string v1 = v2;
  v1.replace(v1.find("\"version\": 2"), 12, "\"version\": 1");
  EXPECT_EQ(parse_device_profile(v1, "v1.json").message(), "v1.json: gemm_call_s: needs version 2 (got version 1)");
}

// Two data-parallel ranks; the gradient bucket (1000 f32 = 4000 B) starts after the first linear
// and is waited for in the optimizer step.
//   all-reduce: 10 us alpha + 2 (2-1)/2 x 4000 B / 1 GB/s = 14 us on the channel
//   t: linear 2.024 -> start (bucket 2.024 .. 16.024) + 1 us overhead = 3.024 -> linear 5.048
//   wait: 16.024 - 5.048 = 10.976 exposed, + 1 us -> step 17.024 us; hidden = 14 - 11.976 = 2.024
TEST(CostModel, HandCheckedOverlappedBucket) {
  plan::Plan p;
  p.mesh = {2, 1, 1};
  p.world_size = 2;
  for (int rank = 0; rank < 2; ++rank) {
    plan::RankPlan r;
    r.rank = rank;
    r.dp_rank = rank;
    r.buffers = {buf(0, {4, 8}), buf(1, {16, 8}, plan::BufferKind::Param), buf(2, {4, 16}), buf(3, {1000}, plan::BufferKind::Grad)};
    plan::AttrValue dp = std::string("dp");
    r.programs = {{"micro_step",
                   {instr("linear_fwd", {0, 1}, {2}), instr("all_reduce_start", {3}, {}, {{"group", dp}, {"bucket", int64_t(0)}}),
                    instr("linear_fwd", {0, 1}, {2})}},
                  {"optimizer_step", {instr("all_reduce_wait", {3}, {3}, {{"group", dp}, {"bucket", int64_t(0)}})}}};
    p.ranks.push_back(r);
  }
  PlanCost c = cost_plan(p, round_profile());
  EXPECT_NEAR(c.step_s, 17.024e-6 + kControl2, 1e-12);
  EXPECT_NEAR(c.control_s, kControl2, 1e-12);
  EXPECT_NEAR(c.ranks[1].comm_s, 11.976e-6, 1e-12);
  EXPECT_NEAR(c.ranks[1].comm_hidden_s, 2.024e-6, 1e-12);
  // Without the split (a blocking all_reduce in the optimizer step) nothing is hidden: 2.024 x 2 + 1 + 15.
  for (plan::RankPlan &r : p.ranks) {
    r.programs[0].instrs.erase(r.programs[0].instrs.begin() + 1);
    r.programs[1].instrs[0].op = "all_reduce";
  }
  EXPECT_NEAR(cost_plan(p, round_profile()).step_s, (2 * 2.024 + 15) * 1e-6 + kControl2, 1e-12);
}

// Two pipeline stages, 2 micro-batches, gpipe: stage 0 runs linear + send forward and recv + add
// backward, stage 1 the mirror image (HandCheckedPipeline, WakeLatencyOnPipelineTransfersAndControl).
plan::Plan two_stage_gpipe_plan() {
  plan::Plan p;
  p.mesh = {1, 1, 2};
  p.world_size = 2;
  p.micro_batches = 2;
  p.pipeline_schedule = "gpipe";
  for (int rank = 0; rank < 2; ++rank) {
    plan::RankPlan r;
    r.rank = rank;
    r.pp_stage = rank;
    r.buffers = {buf(0, {4, 8}), buf(1, {16, 8}, plan::BufferKind::Param), buf(2, {4, 16}), buf(3, {4, 16})};
    plan::AttrValue peer = int64_t(1 - rank);
    plan::Instr linear = instr("linear_fwd", {0, 1}, {2}), add = instr("add", {2, 2}, {3});
    plan::Instr send = instr("send", {2}, {}, {{"peer", peer}}), recv = instr("recv", {}, {2}, {{"peer", peer}});
    if (rank == 0) r.programs = {{"forward", {linear, send}}, {"backward", {recv, add}}, {"optimizer_step", {}}};
    else r.programs = {{"forward", {recv, add}}, {"backward", {linear, send}}, {"optimizer_step", {}}};
    p.ranks.push_back(r);
  }
  return p;
}

// Two pipeline stages, GPipe, 2 micro-batches. Stage times (send/recv cost their overhead only;
// the transfer, 10 us + 256 B / 1 GB/s = 10.256 us, is the simulated stage-to-stage latency):
//   stage 0: forward = linear 2.024 + send 1 = 3.024; backward = recv 1 + add 1.512 = 2.512
//   stage 1: forward = recv 1 + add 1.512 = 2.512;    backward = linear 2.024 + send 1 = 3.024
// Simulation: F0 0-3.024, 3.024-6.048; F1 13.28-15.792, 16.304-18.816; B1 18.816-21.84,
// 21.84-24.864; B0 32.096-34.608, 35.12-37.632. Step = 37.632 us (stage 1 done at 24.864;
// its idle = 37.632 - 2 x (2.512 + 3.024) = 26.56 us).
TEST(CostModel, HandCheckedPipeline) {
  plan::Plan p = two_stage_gpipe_plan();
  PlanCost c = cost_plan(p, round_profile());
  EXPECT_NEAR(c.step_s, 37.632e-6 + kControl2, 1e-12);
  EXPECT_NEAR(c.ranks[0].step_s, 37.632e-6, 1e-12);
  EXPECT_NEAR(c.ranks[1].step_s, 24.864e-6, 1e-12);
  EXPECT_NEAR(c.ranks[1].bubble_s, 26.56e-6, 1e-12);
}

// Interleaved, pp 2 x 2 virtual stages, 2 micro-batches: model chunk k = c x 2 + s (stage 0 holds
// chunks 0 and 2, stage 1 chunks 1 and 3), programs forward / backward (chunk 0) and forward.c1 /
// backward.c1 (chunk 1). Every forward is add 1.512 + send 1 = 2.512 us, every backward linear
// 2.024 + send 1 = 3.024 us; the stage-to-stage transfer P = 10 us + 256 B / 1 GB/s = 10.256 us.
// With M = pp Megatron's order runs every forward first: stage s runs F(s,0) F(s,1) F(s+2,0)
// F(s+2,1), then B(s+2,0) B(s+2,1) B(s,0) B(s,1). Following micro-batch 0 through the chunks:
//   F(0,0) 0-2.512; F(1,0) 12.768-15.28; F(2,0) 25.536-28.048; F(3,0) 38.304-40.816;
//   stage 1 runs F(3,1) 40.816-43.328 first, then B(3,0) 43.328-46.352, B(3,1) -49.376;
//   B(2,0) 56.608-59.632; B(1,0) 69.888-72.912, B(1,1) -75.936 (stage 1 done);
//   B(0,0) 83.168-86.192, B(0,1) -89.216 (= 5 F + 5 B + 6 P).
// Stage 1 is busy 4 x (2.512 + 3.024) = 22.144 us: idle 89.216 - 22.144 = 67.072 us.
TEST(CostModel, HandCheckedInterleavedPipeline) {
  plan::Plan p;
  p.mesh = {1, 1, 2};
  p.world_size = 2;
  p.micro_batches = 2;
  p.pipeline_schedule = "interleaved";
  p.virtual_stages = 2;
  for (int rank = 0; rank < 2; ++rank) {
    plan::RankPlan r;
    r.rank = rank;
    r.pp_stage = rank;
    r.buffers = {buf(0, {4, 8}), buf(1, {16, 8}, plan::BufferKind::Param), buf(2, {4, 16}), buf(3, {4, 16})};
    plan::AttrValue peer = int64_t(1 - rank);
    plan::Instr linear = instr("linear_fwd", {0, 1}, {2}), add = instr("add", {2, 2}, {3});
    plan::Instr send = instr("send", {2}, {}, {{"peer", peer}});
    r.programs = {{"forward", {add, send}}, {"backward", {linear, send}}, {"forward.c1", {add, send}},
                  {"backward.c1", {linear, send}}, {"optimizer_step", {}}};
    p.ranks.push_back(r);
  }
  PlanCost c = cost_plan(p, round_profile());
  EXPECT_NEAR(c.step_s, 89.216e-6 + kControl2, 1e-12);
  EXPECT_NEAR(c.ranks[0].step_s, 89.216e-6, 1e-12);
  EXPECT_NEAR(c.ranks[1].step_s, 75.936e-6, 1e-12);
  EXPECT_NEAR(c.ranks[1].bubble_s, 67.072e-6, 1e-12);
  // Every chunk program counts: 2 micro-batches x 2 chunks x (1.512 + 2.024) compute, sends as comm.
  EXPECT_NEAR(c.ranks[0].compute_s, 4 * 3.536e-6, 1e-12);
  EXPECT_NEAR(c.ranks[0].comm_s, 8 * 1e-6, 1e-12);
}

// zb-h1, pp 2, 2 micro-batches; the backward is split into B (lora_linear_bwd part "input", then a
// send) and W (part "weight", the program backward_weight). x (4x8), W (16x8), dy (4x16), A (2x8),
// B (16x2): m 4, n 16, k 8, r 2; every GEMM here has a side < 8, so 1 GFLOP/s:
//   B: u = dy B 2*4*2*16 = 256 flop, dy W 2*4*8*16 = 1024, u A 2*4*8*2 = 128: 1.408 us + 1 = 2.408,
//      + send 1 = 3.408 us;
//   W: u again 256, x A^T 2*4*2*8 = 128, dA 2*2*8*4 = 128, dB 2*16*2*4 = 256: 0.768 us + 1 = 1.768;
//   F: add 1.512 + send 1 = 2.512 us; P = 10.256 us.
// Orders (schedule.cpp): stage 0 F0 F1 B0 W0 B1 W1; stage 1 F0 B0 F1 B1 W0 W1.
//   stage 0: F0 0-2.512, F1 -5.024;
//   stage 1: F0 12.768-15.28, B0 -18.688, F1 -21.2, B1 -24.608, W0 -26.376, W1 -28.144;
//   stage 0: B0 28.944-32.352, W0 -34.12, B1 34.864-38.272, W1 -40.04.
// Stage 1 is busy 2 x (2.512 + 3.408 + 1.768) = 15.376 us: idle 40.04 - 15.376 = 24.664 us.
TEST(CostModel, HandCheckedZeroBubblePipeline) {
  plan::Plan p;
  p.mesh = {1, 1, 2};
  p.world_size = 2;
  p.micro_batches = 2;
  p.pipeline_schedule = "zb-h1";
  for (int rank = 0; rank < 2; ++rank) {
    plan::RankPlan r;
    r.rank = rank;
    r.pp_stage = rank;
    r.buffers = {buf(0, {4, 8}),  buf(1, {16, 8}, plan::BufferKind::Param), buf(2, {4, 16}),
                 buf(3, {4, 16}), buf(4, {2, 8}, plan::BufferKind::Trainable), buf(5, {16, 2}, plan::BufferKind::Trainable),
                 buf(6, {4, 8}),  buf(7, {2, 8}, plan::BufferKind::Grad),      buf(8, {16, 2}, plan::BufferKind::Grad)};
    plan::AttrValue peer = int64_t(1 - rank);
    plan::Instr add = instr("add", {2, 2}, {3}), send = instr("send", {2}, {}, {{"peer", peer}});
    plan::Instr bwd_in = instr("lora_linear_bwd", {2, 0, 1, 4, 5}, {6, 7, 8}, {{"part", plan::AttrValue(std::string("input"))}});
    plan::Instr bwd_w = instr("lora_linear_bwd", {2, 0, 1, 4, 5}, {6, 7, 8}, {{"part", plan::AttrValue(std::string("weight"))}});
    r.programs = {{"forward", {add, send}}, {"backward", {bwd_in, send}}, {"backward_weight", {bwd_w}}, {"optimizer_step", {}}};
    p.ranks.push_back(r);
  }
  PlanCost c = cost_plan(p, round_profile());
  EXPECT_NEAR(c.step_s, 40.04e-6 + kControl2, 1e-12);
  EXPECT_NEAR(c.ranks[1].step_s, 28.144e-6, 1e-12);
  EXPECT_NEAR(c.ranks[1].bubble_s, 24.664e-6, 1e-12);
  // The same split under 1f1b would ignore backward_weight; an unsplit lora_linear_bwd costs
  // B + W - the shared u = 2.408 + 0.768 - 0.256 = 2.92 us.
  plan::Instr whole = p.ranks[0].programs[1].instrs[0];
  whole.attrs.clear();
  EXPECT_NEAR(instruction_seconds(whole, p.ranks[0], p.mesh, round_profile()), 2.92e-6, 1e-12);
}

// Wake-up latency (LinkCost::wake_s, lora-bench's link measurement): the gpipe plan of
// HandCheckedPipeline with send wake 5 us and all-reduce wake 3 us. Its critical path crosses
// the stage boundary twice (F0 -> F1 of micro-batch 0, B1 -> B0 of micro-batch 1), each
// transfer 5 us later: 37.632 + 2 x 5 = 47.632 us. Stage 1 ends long before (its last backward
// at 24.864 + 5 = 29.864 us), so at the control all-reduce it has waited ~18 us > 3 us: asleep,
// it pays the wake-up: 10.024 + 3 us.
TEST(CostModel, WakeLatencyOnPipelineTransfersAndControl) {
  plan::Plan p = two_stage_gpipe_plan();
  DeviceProfile dev = round_profile();
  dev.intra_node.send.wake_s = 5e-6;
  dev.intra_node.all_reduce.wake_s = 3e-6;
  PlanCost c = cost_plan(p, dev);
  EXPECT_NEAR(c.ranks[0].step_s, 47.632e-6, 1e-12);
  EXPECT_NEAR(c.ranks[1].step_s, 29.864e-6, 1e-12);
  EXPECT_NEAR(c.control_s, kControl2 + 3e-6, 1e-12);
  EXPECT_NEAR(c.step_s, 47.632e-6 + kControl2 + 3e-6, 1e-12);
  auto back = parse_device_profile(device_profile_json(dev, {}), "written.json");
  ASSERT_TRUE(back.is_ok()) << back.message();
  EXPECT_DOUBLE_EQ(back->intra_node.send.wake_s, 5e-6);
  // Two data-parallel ranks with the same work (linear 2.024 us each) end together: nobody waited
  // long enough to fall asleep, the control all-reduce pays no wake-up.
  plan::Plan d;
  d.mesh = {2, 1, 1};
  d.world_size = 2;
  for (int rank = 0; rank < 2; ++rank) {
    plan::RankPlan r;
    r.rank = rank;
    r.dp_rank = rank;
    r.buffers = {buf(0, {4, 8}), buf(1, {16, 8}, plan::BufferKind::Param), buf(2, {4, 16})};
    r.programs = {{"micro_step", {instr("linear_fwd", {0, 1}, {2})}}, {"optimizer_step", {}}};
    d.ranks.push_back(r);
  }
  PlanCost dc = cost_plan(d, dev);
  EXPECT_NEAR(dc.control_s, kControl2, 1e-12);
  EXPECT_NEAR(dc.step_s, 2.024e-6 + kControl2, 1e-12);
}

TEST(CostModel, GroupsAcrossNodes) {
  plan::Mesh m{2, 4, 1};  // ranks 0-3 tp group of dp 0, 4-7 of dp 1
  EXPECT_FALSE(group_crosses_nodes(m, 0, "tp", 4));
  EXPECT_TRUE(group_crosses_nodes(m, 0, "dp", 4));
  EXPECT_FALSE(group_crosses_nodes(m, 0, "dp", 8));
  EXPECT_TRUE(group_crosses_nodes(m, 5, "dp,tp", 4));
}

TEST(Analytic, RejectsImpossibleMeshesWithReasons) {
  ModelDims m;
  m.vocab = 128, m.hidden = 64, m.intermediate = 128, m.layers = 2, m.heads = 4, m.kv_heads = 2, m.head_dim = 16;
  m.batch = 8, m.seq_len = 16, m.lora_targets = {"q_proj", "v_proj"};
  Candidate c;
  c.tp = 4;
  EXPECT_EQ(reject_reason(m, c, 4), "tp 4 does not divide num_key_value_heads = 2");
  c = Candidate{};
  c.pp = 8;
  EXPECT_EQ(reject_reason(m, c, 8), "pp 8 exceeds the 4 pipeline units (embedding, 2 layers, head)");
  c = Candidate{};
  c.dp = 4, c.micro_batches = 4;
  EXPECT_EQ(reject_reason(m, c, 4), "batch 8 is not divisible by dp 4 x micro-batches 4");
  c.micro_batches = 2;
  EXPECT_EQ(reject_reason(m, c, 4), "");
  EXPECT_EQ(reject_reason(m, c, 8), "dp x tp x pp = 4 is not the 8 devices");
  // Interleaved: whole layers per model chunk, micro-batches in groups of pp.
  c = Candidate{};
  c.pp = 2, c.micro_batches = 2, c.schedule = "interleaved", c.virtual_stages = 2;
  EXPECT_EQ(reject_reason(m, c, 2), "interleaved v2: pp 2 x 2 = 4 model chunks do not divide the 2 layers");
  m.layers = 4;
  EXPECT_EQ(reject_reason(m, c, 2), "");
  c.micro_batches = 1;
  EXPECT_EQ(reject_reason(m, c, 2), "interleaved v2: micro-batches 1 is not a multiple of pp 2");
  c.micro_batches = 2, c.virtual_stages = 1;
  EXPECT_EQ(reject_reason(m, c, 2), "interleaved v1: needs 2 or more virtual stages");
  EXPECT_EQ(c.flags(), "--strategy hybrid --dp 1 --tp 1 --pp 2 --micro-batches 2 --precision fp32 --pipeline-schedule interleaved "
                       "--virtual-stages 1");
}

TEST(Analytic, MemoryFallsWithRecomputeAndShardingAndTimeIsPositive) {
  ModelDims m;
  m.vocab = 1024, m.hidden = 256, m.intermediate = 512, m.layers = 4, m.heads = 8, m.kv_heads = 4, m.head_dim = 32;
  m.batch = 8, m.seq_len = 128, m.lora_targets = {"q_proj", "v_proj"};
  DeviceProfile dev = round_profile();
  Candidate c;
  Estimate base = estimate(m, c, dev);
  EXPECT_GT(base.step_s, 0);
  c.recompute = true;
  EXPECT_LT(estimate(m, c, dev).peak_bytes, base.peak_bytes);
  c = Candidate{};
  c.tp = 2;
  EXPECT_LT(estimate(m, c, dev).peak_bytes, base.peak_bytes);
  c = Candidate{};
  c.precision = "bf16";
  EXPECT_LT(estimate(m, c, dev).peak_bytes, base.peak_bytes);
}

TEST(Analytic, BalanceUnitsMinimisesTheLargestStage) {
  // 1 + 4 | 4 | 4 + 1: largest 5 (a split into 1 | 4+4 | 4+1 would give 8).
  EXPECT_EQ(balance_units({1, 4, 4, 4, 1}, 3), (std::vector<int>{0, 0, 1, 2, 2}));
}
