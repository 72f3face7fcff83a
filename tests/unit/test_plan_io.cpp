// Tests for runtime/plan/plan_io: byte-exact round trip of every field, the file framing
// errors (magic, version, truncation, CRC), structural validation, describe and fingerprint.
#include "runtime/plan/plan_io.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

#include <gtest/gtest.h>

using namespace parallora;
using namespace parallora::plan;

namespace {

Buffer buf(int32_t id, const std::string &name, BufferKind kind, std::vector<int64_t> shape, int64_t offset = -1,
           ElemType dtype = ElemType::F32) {
  Buffer b;
  b.id = id;
  b.name = name;
  b.kind = kind;
  b.dtype = dtype;
  b.shape = std::move(shape);
  b.offset = offset;
  return b;
}

/// A small but complete plan: every field set to a non-default value.
Plan make_plan() {
  Plan p;
  p.producer = "lora-compile 0.1.0 (test)";
  p.model_config_json = R"({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
                           "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 32, "tie_word_embeddings": false})";
  p.base_weights = "/models/tiny";
  p.adapter_weights = "/plans/p.lp.weights.safetensors";
  p.lora.rank = 4;
  p.lora.alpha = 8;
  p.lora.dropout = 0.05;
  p.lora.use_rslora = true;
  p.lora.target_modules = {"q_proj", "v_proj"};
  p.hparams.lr = 3e-4;
  p.hparams.schedule = "cosine";
  p.hparams.warmup_steps = 5;
  p.hparams.min_lr_ratio = 0.1;
  p.hparams.total_steps = 100;
  p.hparams.weight_decay = 0.01;
  p.hparams.beta1 = 0.8;
  p.hparams.beta2 = 0.95;
  p.hparams.eps = 1e-6;
  p.hparams.max_grad_norm = 0.5;
  p.global_batch = 4;
  p.seq_len = 3;
  p.micro_batches = 2;
  p.vocab_size = 32;
  p.ignore_index = -7;
  p.world_size = 1;

  RankPlan r;
  r.rank = 0;
  r.buffers.push_back(buf(0, "input_ids", BufferKind::Input, {2, 3}, -1, ElemType::I32));
  r.buffers.push_back(buf(1, "model.embed_tokens.weight", BufferKind::Param, {32, 8}));
  r.buffers[1].init = "checkpoint";
  r.buffers[1].slice = {{0, 32}, {0, 8}};
  r.buffers[1].full_shape = {64, 8};
  r.buffers.push_back(buf(2, "lora_A.weight", BufferKind::Trainable, {4, 8}));
  r.buffers[2].init = "kaiming_uniform(a=2.23606797749979)";
  r.buffers.push_back(buf(3, "lora_A.weight.grad", BufferKind::Grad, {4, 8}));
  r.buffers[3].param = "lora_A.weight";
  r.buffers.push_back(buf(4, "lora_A.weight.exp_avg", BufferKind::OptState, {4, 8}));
  r.buffers[4].param = "lora_A.weight";
  r.buffers.push_back(buf(5, "%5 (model.embed_tokens)", BufferKind::Activation, {2, 3, 8}, 0));
  r.buffers.push_back(buf(6, "%6 (lm_head)", BufferKind::Activation, {2, 3, 8}, 192));
  r.buffers.push_back(buf(7, "loss", BufferKind::Output, {}));
  r.arena_bytes = 384;
  r.param_bytes = 1152;
  r.grad_bytes = 128;
  r.optimizer_bytes = 256;
  r.peak_bytes = 3 * 1024 * 1024;
  r.flops_per_step = 2.5e9;
  r.bytes_sent = {{"all_reduce", 96}};

  Program micro;
  micro.name = "micro_step";
  Instr e;
  e.op = "embedding_fwd";
  e.inputs = {0, 1};
  e.outputs = {5};
  e.loc = "model.embed_tokens";
  e.layer = -1;
  e.flops = 0;
  micro.instrs.push_back(e);
  Instr l;
  l.op = "linear_fwd";
  l.inputs = {5, 2, -1};
  l.outputs = {6};
  l.attrs["accumulate"] = int64_t{1};
  l.attrs["scaling"] = 2.5;
  l.attrs["rope_type"] = std::string("llama3");
  l.attrs["perm"] = std::vector<int64_t>{0, 2, 1, 3};
  l.loc = "model.layers.1.self_attn.q_proj";
  l.layer = 1;
  l.flops = 1536;
  micro.instrs.push_back(l);
  r.programs.push_back(micro);
  Program opt;
  opt.name = "optimizer_step";
  Instr a;
  a.op = "adamw_step";
  a.inputs = {2, 3, 4, 4};
  a.attrs["n"] = int64_t{1};
  opt.instrs.push_back(a);
  r.programs.push_back(opt);
  p.ranks.push_back(r);
  return p;
}

void expect_equal(const Plan &a, const Plan &b) {
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.producer, b.producer);
  EXPECT_EQ(a.model_config_json, b.model_config_json);
  EXPECT_EQ(a.base_weights, b.base_weights);
  EXPECT_EQ(a.adapter_weights, b.adapter_weights);
  EXPECT_EQ(a.lora.rank, b.lora.rank);
  EXPECT_EQ(a.lora.alpha, b.lora.alpha);
  EXPECT_EQ(a.lora.dropout, b.lora.dropout);
  EXPECT_EQ(a.lora.use_rslora, b.lora.use_rslora);
  EXPECT_EQ(a.lora.target_modules, b.lora.target_modules);
  EXPECT_EQ(a.hparams.lr, b.hparams.lr);
  EXPECT_EQ(a.hparams.schedule, b.hparams.schedule);
  EXPECT_EQ(a.hparams.warmup_steps, b.hparams.warmup_steps);
  EXPECT_EQ(a.hparams.min_lr_ratio, b.hparams.min_lr_ratio);
  EXPECT_EQ(a.hparams.total_steps, b.hparams.total_steps);
  EXPECT_EQ(a.hparams.weight_decay, b.hparams.weight_decay);
  EXPECT_EQ(a.hparams.beta1, b.hparams.beta1);
  EXPECT_EQ(a.hparams.beta2, b.hparams.beta2);
  EXPECT_EQ(a.hparams.eps, b.hparams.eps);
  EXPECT_EQ(a.hparams.max_grad_norm, b.hparams.max_grad_norm);
  EXPECT_EQ(a.global_batch, b.global_batch);
  EXPECT_EQ(a.seq_len, b.seq_len);
  EXPECT_EQ(a.micro_batches, b.micro_batches);
  EXPECT_EQ(a.virtual_stages, b.virtual_stages);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.ignore_index, b.ignore_index);
  EXPECT_EQ(a.world_size, b.world_size);
  EXPECT_EQ(a.mesh.dp, b.mesh.dp);
  EXPECT_EQ(a.mesh.tp, b.mesh.tp);
  EXPECT_EQ(a.mesh.pp, b.mesh.pp);
  EXPECT_EQ(a.strategy, b.strategy);
  EXPECT_EQ(a.pipeline_schedule, b.pipeline_schedule);
  ASSERT_EQ(a.ranks.size(), b.ranks.size());
  for (size_t r = 0; r < a.ranks.size(); ++r) {
    const RankPlan &x = a.ranks[r], &y = b.ranks[r];
    EXPECT_EQ(x.rank, y.rank);
    EXPECT_EQ(x.arena_bytes, y.arena_bytes);
    EXPECT_EQ(x.param_bytes, y.param_bytes);
    EXPECT_EQ(x.grad_bytes, y.grad_bytes);
    EXPECT_EQ(x.optimizer_bytes, y.optimizer_bytes);
    EXPECT_EQ(x.peak_bytes, y.peak_bytes);
    EXPECT_EQ(x.flops_per_step, y.flops_per_step);
    EXPECT_EQ(x.dp_rank, y.dp_rank);
    EXPECT_EQ(x.tp_rank, y.tp_rank);
    EXPECT_EQ(x.pp_stage, y.pp_stage);
    EXPECT_EQ(x.slots, y.slots);
    EXPECT_EQ(x.bytes_sent, y.bytes_sent);
    EXPECT_EQ(x.forward_flops, y.forward_flops);
    EXPECT_EQ(x.backward_flops, y.backward_flops);
    EXPECT_EQ(x.bubble_fraction, y.bubble_fraction);
    ASSERT_EQ(x.buffers.size(), y.buffers.size());
    for (size_t i = 0; i < x.buffers.size(); ++i) {
      const Buffer &u = x.buffers[i], &v = y.buffers[i];
      EXPECT_EQ(u.id, v.id);
      EXPECT_EQ(u.name, v.name);
      EXPECT_EQ(u.kind, v.kind);
      EXPECT_EQ(u.dtype, v.dtype);
      EXPECT_EQ(u.shape, v.shape);
      EXPECT_EQ(u.offset, v.offset);
      EXPECT_EQ(u.init, v.init);
      EXPECT_EQ(u.param, v.param);
      EXPECT_EQ(u.slice, v.slice);
      EXPECT_EQ(u.full_shape, v.full_shape);
    }
    ASSERT_EQ(x.programs.size(), y.programs.size());
    for (size_t p = 0; p < x.programs.size(); ++p) {
      EXPECT_EQ(x.programs[p].name, y.programs[p].name);
      ASSERT_EQ(x.programs[p].instrs.size(), y.programs[p].instrs.size());
      for (size_t k = 0; k < x.programs[p].instrs.size(); ++k) {
        const Instr &u = x.programs[p].instrs[k], &v = y.programs[p].instrs[k];
        EXPECT_EQ(u.op, v.op);
        EXPECT_EQ(u.inputs, v.inputs);
        EXPECT_EQ(u.outputs, v.outputs);
        EXPECT_EQ(u.attrs, v.attrs);
        EXPECT_EQ(u.loc, v.loc);
        EXPECT_EQ(u.layer, v.layer);
        EXPECT_EQ(u.flops, v.flops);
      }
    }
  }
}

/// A 2 x 1 x 2 mesh (dp 2, pp 2), 1f1b: four ranks, each with forward/backward/optimizer_step,
/// send/recv between the stages and an all_reduce over dp.
Plan make_pipeline_plan() {
  Plan p = make_plan();
  p.mesh = {2, 1, 2};
  p.world_size = 4;
  p.strategy = "hybrid";
  p.pipeline_schedule = "1f1b";
  RankPlan base = p.ranks[0];
  p.ranks.clear();
  for (int32_t r = 0; r < 4; ++r) {
    RankPlan rp = base;
    MeshCoord c = coord_of(p.mesh, r);
    rp.rank = r;
    rp.dp_rank = c.dp;
    rp.tp_rank = c.tp;
    rp.pp_stage = c.pp;
    rp.slots = c.pp == 0 ? 2 : 1;
    rp.bytes_sent = {{"all_reduce", 64}, {"send", 48 + r}};
    rp.forward_flops = 1e6 + r;
    rp.backward_flops = 2e6 + r;
    rp.bubble_fraction = 0.25;
    Program fwd = rp.programs[0];
    fwd.name = "forward";
    Instr snd;
    snd.op = c.pp == 0 ? "send" : "recv";
    if (c.pp == 0) snd.inputs = {6};
    else snd.outputs = {6};
    snd.attrs["peer"] = int64_t{rank_of(p.mesh, c.dp, c.tp, 1 - c.pp)};
    snd.attrs["tag"] = int64_t{1};
    fwd.instrs.push_back(snd);
    Program bwd;
    bwd.name = "backward";
    Instr ar;
    ar.op = "all_reduce";
    ar.inputs = {3};
    ar.outputs = {3};
    ar.attrs["group"] = std::string("dp");
    bwd.instrs.push_back(ar);
    rp.programs = {fwd, bwd, rp.programs[1]};
    p.ranks.push_back(rp);
  }
  return p;
}

class PlanIoTest : public testing::Test {
protected:
  void SetUp() override {
    std::string templ = testing::TempDir() + "plan_io_test_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::string path(const std::string &name) const { return dir_ + "/" + name; }
  void write_bytes(const std::string &p, const std::string &bytes) {
    std::ofstream(p, std::ios::binary) << bytes;
  }
  std::string read_bytes(const std::string &p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::string dir_;
};

TEST_F(PlanIoTest, RoundTripsEveryField) {
  Plan p = make_plan();
  ASSERT_TRUE(write_plan(path("a.lp"), p).is_ok());
  auto back = read_plan(path("a.lp"));
  ASSERT_TRUE(back.is_ok()) << back.message();
  expect_equal(p, *back);
  // Deterministic bytes: writing the read plan again gives the same file and fingerprint.
  ASSERT_TRUE(write_plan(path("b.lp"), *back).is_ok());
  EXPECT_EQ(read_bytes(path("a.lp")), read_bytes(path("b.lp")));
  EXPECT_EQ(plan_fingerprint(p), plan_fingerprint(*back));
  EXPECT_EQ(plan_fingerprint(p).size(), 16u);
  // No temporary files left behind.
  EXPECT_NE(system(("ls '" + dir_ + "' | grep -q tmp").c_str()), 0);
}

// The planner's predictions (fields 100-103) round-trip; a NaN or negative one is refused.
TEST_F(PlanIoTest, PredictionsRoundTripAndAreChecked) {
  Plan p = make_plan();
  p.predicted_step_s = 0.125;
  p.device_profile = "h100-sxm-nvlink";
  p.ranks[0].predicted_step_s = 0.125;
  p.ranks[0].predicted_compute_s = 0.1;
  p.ranks[0].predicted_comm_s = 0.025;
  p.ranks[0].predicted_alloc_bytes = 123456;
  auto back = decode_plan(encode_plan(p), "pred.lp");
  ASSERT_TRUE(back.is_ok()) << back.message();
  EXPECT_EQ(back->predicted_step_s, 0.125);
  EXPECT_EQ(back->device_profile, "h100-sxm-nvlink");
  EXPECT_EQ(back->ranks[0].predicted_comm_s, 0.025);
  EXPECT_EQ(back->ranks[0].predicted_alloc_bytes, 123456);
  p.ranks[0].predicted_step_s = std::nan("");
  auto bad = decode_plan(encode_plan(p), "pred.lp");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("rank 0: predicted step"), std::string::npos) << bad.message();
}

TEST_F(PlanIoTest, RoundTripsPipelinePlan) {
  Plan p = make_pipeline_plan();
  ASSERT_TRUE(validate_plan(p).is_ok()) << validate_plan(p).message();
  ASSERT_TRUE(write_plan(path("p.lp"), p).is_ok());
  auto back = read_plan(path("p.lp"));
  ASSERT_TRUE(back.is_ok()) << back.message();
  expect_equal(p, *back);
  EXPECT_EQ(back->ranks[3].bytes_sent.at("send"), 51);
  EXPECT_EQ(back->ranks[2].pp_stage, 1);
  EXPECT_EQ(back->ranks[1].dp_rank, 1);
  EXPECT_EQ(back->ranks[0].slots, 2);
  EXPECT_EQ(back->ranks[0].buffers[1].full_shape, (std::vector<int64_t>{64, 8}));
  EXPECT_EQ(plan_fingerprint(p), plan_fingerprint(*back));
  Plan q = p;
  q.ranks[2].bytes_sent["send"] = 7;
  EXPECT_NE(plan_fingerprint(p), plan_fingerprint(q));
}

TEST_F(PlanIoTest, MeshCoordinates) {
  Mesh m{2, 3, 2};
  for (int32_t r = 0; r < m.size(); ++r) {
    MeshCoord c = coord_of(m, r);
    EXPECT_EQ(rank_of(m, c.dp, c.tp, c.pp), r);
  }
  EXPECT_EQ(coord_of(m, 4).tp, 1);
  EXPECT_EQ(coord_of(m, 4).dp, 1);
  EXPECT_EQ(coord_of(m, 7).pp, 1);
}

TEST_F(PlanIoTest, FileLayout) {
  std::string bytes = encode_plan(make_plan());
  ASSERT_GT(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(0, 8), "PLORAPLN");
  EXPECT_EQ(static_cast<uint8_t>(bytes[8]), kPlanFormatVersion);
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[12 + i])) << (8 * i);
  EXPECT_EQ(len + 24, bytes.size());
  uint32_t crc = 0;
  for (int i = 0; i < 4; ++i) crc |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[20 + len + i])) << (8 * i);
  EXPECT_EQ(crc, crc32(bytes.data() + 20, len));
}

TEST_F(PlanIoTest, Crc32KnownValue) {
  EXPECT_EQ(crc32("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(crc32("", 0), 0u);
}

TEST_F(PlanIoTest, FingerprintChangesWithContent) {
  Plan p = make_plan();
  Plan q = p;
  q.hparams.lr = 1e-3;
  EXPECT_NE(plan_fingerprint(p), plan_fingerprint(q));
}

TEST_F(PlanIoTest, MissingFile) {
  auto r = read_plan(path("nope.lp"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("nope.lp"), std::string::npos);
  EXPECT_NE(r.message().find("No such file"), std::string::npos) << r.message();
}

TEST_F(PlanIoTest, BadMagic) {
  write_bytes(path("x.txt"), "hello, this is not a plan at all");
  auto r = read_plan(path("x.txt"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.message(), path("x.txt") + " is not a Parallora plan (bad magic)");
  write_bytes(path("short"), "ab");
  r = read_plan(path("short"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("bad magic"), std::string::npos);
  write_bytes(path("empty"), "");
  r = read_plan(path("empty"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("bad magic"), std::string::npos);
}

TEST_F(PlanIoTest, WrongVersion) {
  std::string bytes = encode_plan(make_plan());
  bytes[8] = static_cast<char>(kPlanFormatVersion + 1);
  write_bytes(path("v.lp"), bytes);
  auto r = read_plan(path("v.lp"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.message(), path("v.lp") + " was written by plan format version " + std::to_string(kPlanFormatVersion + 1) +
                             "; this lora-run reads versions 2 to " + std::to_string(kPlanFormatVersion) +
                             ": recompile with lora-compile");
}

TEST_F(PlanIoTest, Version1IsRejected) {
  std::string bytes = encode_plan(make_plan());
  bytes[8] = 1;
  auto r = decode_plan(bytes, "old.lp");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.message(), "old.lp was written by plan format version 1; this lora-run reads versions 2 to " +
                             std::to_string(kPlanFormatVersion) + ": recompile with lora-compile");
  EXPECT_EQ(kPlanFormatVersion, 4u);
}

// Version 3 only added Plan::adapter_weights: a version-2 plan still loads, without it.
TEST_F(PlanIoTest, Version2IsStillRead) {
  Plan p = make_plan();
  p.adapter_weights.clear();  // a version-2 writer had no such field
  std::string bytes = encode_plan(p);
  bytes[8] = 2;
  auto r = decode_plan(bytes, "v2.lp");
  ASSERT_TRUE(r.is_ok()) << r.message();
  EXPECT_EQ(r->version, 2u);
  EXPECT_EQ(r->adapter_weights, "");
  EXPECT_EQ(r->base_weights, p.base_weights);
}

TEST_F(PlanIoTest, Truncated) {
  std::string bytes = encode_plan(make_plan());
  for (size_t keep : {size_t{10}, size_t{19}, size_t{40}, bytes.size() - 1}) {
    auto r = decode_plan(bytes.substr(0, keep), "t.lp");
    ASSERT_FALSE(r.is_ok()) << keep;
    EXPECT_NE(r.message().find("t.lp is truncated"), std::string::npos) << keep << ": " << r.message();
  }
  auto r = decode_plan(bytes + "xx", "t.lp");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("corrupt"), std::string::npos) << r.message();
}

TEST_F(PlanIoTest, FlippedPayloadByteIsCorrupt) {
  std::string bytes = encode_plan(make_plan());
  bytes[40] ^= 0x10;
  write_bytes(path("c.lp"), bytes);
  auto r = read_plan(path("c.lp"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find(path("c.lp") + " is corrupt: CRC32 mismatch"), std::string::npos) << r.message();
}

TEST_F(PlanIoTest, GarbagePayloadWithValidCrcIsCorrupt) {
  std::string payload(64, '\xff');
  std::string bytes = "PLORAPLN";
  auto put = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put(kPlanFormatVersion, 4);
  put(payload.size(), 8);
  bytes += payload;
  put(crc32(payload.data(), payload.size()), 4);
  auto r = decode_plan(bytes, "g.lp");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("g.lp is corrupt"), std::string::npos) << r.message();
}

// Structural errors: each found both by validate_plan and on load.
void expect_invalid(Plan p, const std::string &needle) {
  Status s = validate_plan(p);
  ASSERT_FALSE(s.is_ok()) << needle;
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  auto r = decode_plan(encode_plan(p), "s.lp");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("s.lp is not a valid plan: "), std::string::npos) << r.message();
  EXPECT_NE(r.message().find(needle), std::string::npos) << r.message();
}

TEST_F(PlanIoTest, StructuralErrors) {
  ASSERT_TRUE(validate_plan(make_plan()).is_ok()) << validate_plan(make_plan()).message();
  {
    Plan p = make_plan();
    p.ranks[0].buffers[3].id = 9;
    expect_invalid(p, "rank 0: buffer #3 ('lora_A.weight.grad') has id 9");
  }
  {
    Plan p = make_plan();
    p.ranks[0].programs[0].instrs[1].inputs[1] = 42;
    expect_invalid(p, "rank 0: program 'micro_step' instruction #1 (linear_fwd, model.layers.1.self_attn.q_proj): "
                      "input 1 refers to buffer 42 but the rank has 8 buffers");
  }
  {
    Plan p = make_plan();
    p.ranks[0].programs[0].instrs[0].outputs[0] = -1;
    expect_invalid(p, "output 0 refers to buffer -1");
  }
  {
    Plan p = make_plan();
    p.ranks[0].buffers[6].offset = 300;
    expect_invalid(p, "buffer #6 ('%6 (lm_head)') at arena offset 300 + 192 bytes ends beyond the arena (384 bytes)");
  }
  {
    Plan p = make_plan();
    p.ranks[0].rank = 3;
    expect_invalid(p, "ranks[0].rank is 3 (expected 0)");
  }
  {
    Plan p = make_plan();
    p.world_size = 2;
    expect_invalid(p, "world_size is 2 but the plan holds 1 rank programs");
  }
  {
    Plan p = make_plan();
    p.ranks[0].buffers[3].param = "nothing";
    expect_invalid(p, "belongs to 'nothing', which is not a trainable buffer");
  }
  {
    Plan p = make_plan();
    p.ranks[0].buffers[2].shape = {4, -8};
    expect_invalid(p, "negative dimension");
  }
  {
    Plan p = make_plan();
    p.ranks[0].programs[1].name = "micro_step";
    expect_invalid(p, "two programs are named 'micro_step'");
  }
  {
    Plan p = make_plan();
    p.micro_batches = 0;
    expect_invalid(p, "micro_batches must be >= 1");
  }
  {
    Plan p = make_plan();
    p.mesh.dp = 2;
    expect_invalid(p, "world_size is 1 but the mesh dp 2 x tp 1 x pp 1 has 2 ranks");
  }
  {
    Plan p = make_plan();
    p.mesh.tp = 0;
    expect_invalid(p, "every axis must be >= 1");
  }
  {
    Plan p = make_plan();
    p.ranks[0].slots = 0;
    expect_invalid(p, "rank 0: slots is 0 (must be >= 1)");
  }
  {
    Plan p = make_plan();
    p.ranks[0].programs[0].name = "forward";
    expect_invalid(p, "rank 0: has no program 'micro_step'");
  }
  {
    Plan p = make_plan();
    p.ranks[0].buffers[1].full_shape = {64};
    expect_invalid(p, "buffer #1 ('model.embed_tokens.weight') has full_shape 64 of another rank than its shape 32x8");
  }
  {
    Plan p = make_plan();
    p.ranks[0].buffers[1].slice = {{40, 32}, {0, 8}};
    expect_invalid(p, "slice dim 0 [40, 72) does not fit in full_shape 64x8");
  }
  {
    Plan p = make_plan();
    p.ranks[0].buffers[2].full_shape = {4, 4};  // unsliced: shape must fit too
    expect_invalid(p, "does not fit in full_shape 4x4");
  }
  // Multi-rank plans.
  {
    Plan p = make_pipeline_plan();
    std::swap(p.ranks[1].dp_rank, p.ranks[1].tp_rank);
    expect_invalid(p, "rank 1: coordinates (dp 0, tp 1, pp 0) differ from the mesh's (dp 1, tp 0, pp 0)");
  }
  {
    Plan p = make_pipeline_plan();
    p.pipeline_schedule = "zigzag";
    expect_invalid(p, "pipeline_schedule is 'zigzag' but a plan with 2 pipeline stages needs gpipe, 1f1b, interleaved or zb-h1");
  }
  {  // zb-h1 needs the weight-gradient program on every rank
    Plan p = make_pipeline_plan();
    p.pipeline_schedule = "zb-h1";
    expect_invalid(p, "rank 0: has no program 'backward_weight'");
  }
  {  // more than one chunk per rank only with interleaved, whose chunks need their programs
    Plan p = make_pipeline_plan();
    p.virtual_stages = 2;
    expect_invalid(p, "pipeline: virtual stages 2 need the interleaved schedule (not 1f1b)");
    p.pipeline_schedule = "interleaved";
    p.micro_batches = 4;
    expect_invalid(p, "rank 0: has no program 'forward.c1'");
    p.micro_batches = 3;
    expect_invalid(p, "pipeline: the interleaved schedule runs micro-batches in groups of pp: micro-batches 3 is not a multiple of pp 2");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[3].programs.pop_back();
    expect_invalid(p, "rank 3: has no program 'optimizer_step' (a pipelined plan needs forward, backward and optimizer_step)");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[0].programs[0].instrs.back().attrs["peer"] = int64_t{4};
    expect_invalid(p, "rank 0: program 'forward' instruction #2 (send): peer 4 is outside the world of 4 ranks");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[2].programs[0].instrs.back().attrs["peer"] = int64_t{2};
    expect_invalid(p, "rank 2: program 'forward' instruction #2 (recv): peer 2 is the rank itself");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[2].programs[0].instrs.back().attrs.erase("peer");
    expect_invalid(p, "instruction #2 (recv) has no integer 'peer' attribute");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[1].programs[1].instrs[0].attrs["group"] = std::string("tp,dp");
    expect_invalid(p, "rank 1: program 'backward' instruction #0 (all_reduce): group 'tp,dp' is not a list of mesh axes");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[1].programs[1].instrs[0].attrs["group"] = std::string("dp,xp");
    expect_invalid(p, "group 'dp,xp' is not a list of mesh axes");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[1].programs[1].instrs[0].attrs.erase("group");
    expect_invalid(p, "instruction #0 (all_reduce) has no string 'group' attribute");
  }
  {
    Plan p = make_pipeline_plan();
    p.ranks[1].programs[1].instrs[0].attrs["group"] = std::string("dp,tp,pp");
    EXPECT_TRUE(validate_plan(p).is_ok()) << validate_plan(p).message();
    p.ranks[1].programs[1].instrs[0].attrs["group"] = std::string("");
    EXPECT_TRUE(validate_plan(p).is_ok()) << validate_plan(p).message();
  }
  // write_plan refuses an invalid plan and leaves no file.
  Plan p = make_plan();
  p.ranks[0].buffers[3].id = 9;
  Status s = write_plan(path("bad.lp"), p);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("refusing to write an invalid plan"), std::string::npos);
  EXPECT_NE(access(path("bad.lp").c_str(), F_OK), 0);
}

TEST_F(PlanIoTest, Describe) {
  Plan p = make_plan();
  std::string d = describe_plan(p, false);
  EXPECT_NE(d.find("plan: lora-compile 0.1.0 (test), format version 4, fingerprint " + plan_fingerprint(p)), std::string::npos) << d;
  EXPECT_NE(d.find("ranks: 1 (mesh dp 1 x tp 1 x pp 1), strategy single, pipeline schedule none"), std::string::npos) << d;
  EXPECT_NE(d.find("model: llama, 2 layers, hidden 8, heads 2 (kv 1), intermediate 16, vocab 32"), std::string::npos) << d;
  EXPECT_NE(d.find("LoRA: r=4, alpha=8"), std::string::npos) << d;
  EXPECT_NE(d.find("targets q_proj,v_proj"), std::string::npos) << d;
  EXPECT_NE(d.find("schedule cosine (warmup 5 steps)"), std::string::npos) << d;
  EXPECT_NE(d.find("data: global batch 4 x seq_len 3 = 12 tokens per step, 2 micro-batches of 2 sequences"), std::string::npos) << d;
  EXPECT_NE(d.find("param 1 f32 (1.0 KiB)"), std::string::npos) << d;
  EXPECT_NE(d.find("precision fp32"), std::string::npos) << d;
  EXPECT_NE(d.find("predicted peak memory: 3.0 MiB"), std::string::npos) << d;
  EXPECT_NE(d.find("FLOPs per step: 2.500 GFLOP"), std::string::npos) << d;
  EXPECT_NE(d.find("program micro_step: 2 instructions (embedding_fwd 1, linear_fwd 1)"), std::string::npos) << d;
  EXPECT_EQ(d.find("#1"), std::string::npos) << d;
  EXPECT_NE(d.find("predicted bytes sent per step: all_reduce 96 B"), std::string::npos) << d;
  std::string v = describe_plan(p, true);
  EXPECT_NE(v.find("@model.embed_tokens.weight  param f32 32x8 init checkpoint slice [0:32, 0:8] of 64x8"), std::string::npos) << v;
  EXPECT_NE(v.find("#1  %6 = linear_fwd(%5, @lora_A.weight, _) {accumulate = 1, perm = [0, 2, 1, 3], rope_type = "
                   "\"llama3\", scaling = 2.5}  model.layers.1.self_attn.q_proj"),
            std::string::npos)
      << v;
  EXPECT_NE(v.find("#0  adamw_step(@lora_A.weight, @lora_A.weight.grad, @lora_A.weight.exp_avg, @lora_A.weight.exp_avg) {n = 1}"),
            std::string::npos)
      << v;
}

TEST_F(PlanIoTest, DescribePipelinePlan) {
  Plan p = make_pipeline_plan();
  std::string d = describe_plan(p, false);
  EXPECT_NE(d.find("ranks: 4 (mesh dp 2 x tp 1 x pp 2), strategy hybrid, pipeline schedule 1f1b"), std::string::npos) << d;
  EXPECT_NE(d.find("2 micro-batches of 1 sequences per data-parallel rank"), std::string::npos) << d;
  EXPECT_NE(d.find("rank table:"), std::string::npos) << d;
  // rank 3: dp 1, tp 0, pp 1, 1 slot, 3.0 MiB, 2.5 GFLOP, all_reduce 64, send 51, bubble 25%
  EXPECT_NE(d.find("     3    1    0    1     1          3.0          2.500               64               51   25.0%"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("rank 2: dp 0, tp 0, pp 1, slots 1"), std::string::npos) << d;
  EXPECT_NE(d.find("rank 0: dp 0, tp 0, pp 0, slots 2"), std::string::npos) << d;
  EXPECT_NE(d.find("predicted bytes sent per step: all_reduce 64 B, send 49 B"), std::string::npos) << d;
  EXPECT_NE(d.find("predicted pipeline bubble: 25.0%"), std::string::npos) << d;
  EXPECT_NE(d.find("program forward: 3 instructions (embedding_fwd 1, linear_fwd 1, send 1)"), std::string::npos) << d;
}

} // namespace
