//===- test_viz.cpp - plan pictures: rank DOT/SVG, timeline, mesh, index.html ===//
#include "tools/lora-compile/viz.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <unistd.h>

using namespace parallora;
namespace fs = std::filesystem;
using plan::BufferKind;

namespace {

struct Builder {
  plan::RankPlan &r;
  int32_t buf(const std::string &name, BufferKind kind, std::vector<int64_t> shape, plan::ElemType dt = plan::ElemType::F32) {
    plan::Buffer b;
    b.id = static_cast<int32_t>(r.buffers.size());
    b.name = name;
    b.kind = kind;
    b.shape = std::move(shape);
    b.dtype = dt;
    if (kind == BufferKind::Activation) b.offset = 0;
    r.buffers.push_back(b);
    return b.id;
  }
  plan::Instr &instr(const std::string &prog, const std::string &op, std::vector<int32_t> in, std::vector<int32_t> out,
                     const std::string &loc = "", double flops = 0) {
    plan::Program *p = nullptr;
    for (auto &q : r.programs)
      if (q.name == prog) p = &q;
    if (!p) {
      r.programs.push_back(plan::Program{prog, {}});
      p = &r.programs.back();
    }
    plan::Instr i;
    i.op = op;
    i.inputs = std::move(in);
    i.outputs = std::move(out);
    i.loc = loc;
    i.flops = flops;
    p->instrs.push_back(i);
    return p->instrs.back();
  }
};

constexpr int kM = 4;

// Two pipeline stages: stage 0 embeds + a LoRA linear and sends; stage 1 receives, projects,
// computes the loss and sends the gradient back.
plan::Plan pipeline_plan() {
  plan::Plan p;
  p.producer = "test";
  p.strategy = "pipeline";
  p.mesh = plan::Mesh{1, 1, 2};
  p.world_size = 2;
  p.pipeline_schedule = "1f1b";
  p.micro_batches = kM;
  p.global_batch = 8;
  p.seq_len = 4;
  p.vocab_size = 16;
  p.ranks.resize(2);
  {
    plan::RankPlan &r = p.ranks[0];
    r.rank = 0;
    r.pp_stage = 0;
    r.slots = 2;
    Builder b{r};
    int ids = b.buf("input_ids", BufferKind::Input, {2, 4}, plan::ElemType::I32);
    int table = b.buf("model.embed_tokens.weight", BufferKind::Param, {16, 8});
    int h = b.buf("%1 (model.embed_tokens)", BufferKind::Activation, {2, 4, 8});
    int w = b.buf("model.layers.0.q_proj.weight", BufferKind::Param, {8, 8});
    int la = b.buf("lora_A", BufferKind::Trainable, {2, 8});
    int lb = b.buf("lora_B", BufferKind::Trainable, {8, 2});
    int y = b.buf("%2 (q_proj)", BufferKind::Activation, {2, 4, 8});
    int dy = b.buf("%3", BufferKind::Activation, {2, 4, 8});
    int dx = b.buf("%4", BufferKind::Activation, {2, 4, 8});
    int ga = b.buf("lora_A.grad", BufferKind::Grad, {2, 8});
    int gb = b.buf("lora_B.grad", BufferKind::Grad, {8, 2});
    int ma = b.buf("lora_A.exp_avg", BufferKind::OptState, {2, 8});
    int mb = b.buf("lora_B.exp_avg", BufferKind::OptState, {8, 2});
    int va = b.buf("lora_A.exp_avg_sq", BufferKind::OptState, {2, 8});
    int vb = b.buf("lora_B.exp_avg_sq", BufferKind::OptState, {8, 2});
    b.instr("forward", "embedding_fwd", {ids, table}, {h}, "model.embed_tokens");
    b.instr("forward", "lora_linear_fwd", {h, w, la, lb, -1}, {y}, "model.layers.0.self_attn.q_proj").layer = 0;
    b.instr("forward", "send", {y}, {}, "model.layers.0").attrs = {{"peer", int64_t(1)}, {"tag", int64_t(0)}};
    b.instr("backward", "recv", {}, {dy}, "model.layers.0").attrs = {{"peer", int64_t(1)}, {"tag", int64_t(1)}};
    b.instr("backward", "lora_linear_bwd", {dy, h, w, la, lb}, {dx, ga, gb}, "model.layers.0.self_attn.q_proj").layer = 0;
    b.instr("optimizer_step", "adamw_step", {la, lb, ga, gb, ma, mb, va, vb}, {}).attrs = {{"n", int64_t(2)}};
    b.instr("eval_step", "embedding_fwd", {ids, table}, {h}, "evalonly");
    r.forward_flops = 1e9;
    r.backward_flops = 2e9;
    r.param_bytes = 3 << 20;
    r.peak_bytes = 5 << 20;
    r.flops_per_step = 12e9;
    r.bytes_sent = {{"send", 4096}};
  }
  {
    plan::RankPlan &r = p.ranks[1];
    r.rank = 1;
    r.pp_stage = 1;
    r.slots = 1;
    Builder b{r};
    int labels = b.buf("labels", BufferKind::Input, {2, 4}, plan::ElemType::I32);
    int h = b.buf("%1", BufferKind::Activation, {2, 4, 8});
    int w = b.buf("lm_head.weight", BufferKind::Param, {16, 8});
    int logits = b.buf("%2 (lm_head)", BufferKind::Activation, {2, 4, 16});
    int loss = b.buf("loss", BufferKind::Output, {});
    int dlogits = b.buf("%3", BufferKind::Activation, {2, 4, 16});
    int dh = b.buf("%4", BufferKind::Activation, {2, 4, 8});
    b.instr("forward", "recv", {}, {h}, "model.layers.0").attrs = {{"peer", int64_t(0)}, {"tag", int64_t(0)}};
    b.instr("forward", "linear_fwd", {h, w, -1}, {logits}, "lm_head");
    b.instr("forward", "cross_entropy_fwd", {logits, labels}, {loss}, "loss");
    b.instr("backward", "cross_entropy_bwd", {logits, labels}, {dlogits}, "loss");
    b.instr("backward", "linear_bwd_input", {dlogits, w}, {dh}, "lm_head");
    b.instr("backward", "send", {dh}, {}, "model.layers.0").attrs = {{"peer", int64_t(0)}, {"tag", int64_t(1)}};
    b.instr("optimizer_step", "adamw_step", {}, {}).attrs = {{"n", int64_t(0)}};
    r.forward_flops = 2e9;
    r.backward_flops = 3e9;
    r.bytes_sent = {{"send", 4096}};
  }
  return p;
}

// Two data-parallel ranks, one micro_step each with a gradient all-reduce.
plan::Plan data_plan() {
  plan::Plan p;
  p.strategy = "data";
  p.mesh = plan::Mesh{2, 1, 1};
  p.world_size = 2;
  p.micro_batches = kM;
  p.ranks.resize(2);
  for (int rank = 0; rank < 2; ++rank) {
    plan::RankPlan &r = p.ranks[rank];
    r.rank = rank;
    r.dp_rank = rank;
    Builder b{r};
    int ids = b.buf("input_ids", BufferKind::Input, {1, 4}, plan::ElemType::I32);
    int labels = b.buf("labels", BufferKind::Input, {1, 4}, plan::ElemType::I32);
    int table = b.buf("embed", BufferKind::Param, {16, 8});
    int h = b.buf("%1", BufferKind::Activation, {1, 4, 8});
    int w = b.buf("lm_head", BufferKind::Param, {16, 8});
    int la = b.buf("A", BufferKind::Trainable, {2, 8});
    int lb = b.buf("B", BufferKind::Trainable, {16, 2});
    int logits = b.buf("%2", BufferKind::Activation, {1, 4, 16});
    int loss = b.buf("loss", BufferKind::Output, {});
    int dl = b.buf("%3", BufferKind::Activation, {1, 4, 16});
    int dh = b.buf("%4", BufferKind::Activation, {1, 4, 8});
    int ga = b.buf("A.grad", BufferKind::Grad, {2, 8});
    int gb = b.buf("B.grad", BufferKind::Grad, {16, 2});
    b.instr("micro_step", "embedding_fwd", {ids, table}, {h}, "model.embed_tokens", 1e6);
    b.instr("micro_step", "lora_linear_fwd", {h, w, la, lb}, {logits}, "lm_head", 4e6);
    b.instr("micro_step", "cross_entropy_fwd", {logits, labels}, {loss}, "loss", 1e6);
    b.instr("micro_step", "cross_entropy_bwd", {logits, labels}, {dl}, "loss", 1e6);
    b.instr("micro_step", "lora_linear_bwd", {dl, h, w, la, lb}, {dh, ga, gb}, "lm_head", 8e6);
    b.instr("optimizer_step", "all_reduce", {ga, gb}, {ga, gb}).attrs = {{"group", std::string("dp")},
                                                                          {"scale", 0.5}};
    b.instr("optimizer_step", "adamw_step", {la, lb, ga, gb}, {}).attrs = {{"n", int64_t(2)}};
    r.bytes_sent = {{"all_reduce", 384}};
    r.flops_per_step = 4 * 15e6;
  }
  return p;
}

std::string read(const fs::path &p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

size_t count(const std::string &hay, const std::string &needle) {
  size_t n = 0;
  for (size_t pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + needle.size())) ++n;
  return n;
}

size_t count_regex(const std::string &hay, const std::string &re) {
  std::regex r(re);
  return std::distance(std::sregex_iterator(hay.begin(), hay.end(), r), std::sregex_iterator());
}

fs::path temp_dir(const std::string &name) {
  fs::path d = fs::temp_directory_path() / ("parallora_test_viz_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  return d;
}

bool have_dot() { return !viz::find_dot().empty(); }

void expect_dot_parses(const fs::path &dot_file) {
  if (!have_dot()) return;
  const std::string cmd = viz::find_dot() + " -Tsvg '" + dot_file.string() + "' -o /dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << dot_file;
}

size_t instr_count(const plan::RankPlan &r) {
  size_t n = 0;
  for (const auto &p : r.programs)
    if (p.name != "eval_step") n += p.instrs.size();
  return n;
}

void check_common(const plan::Plan &p, const fs::path &dir) {
  for (const char *f : {"timeline.svg", "mesh.svg", "index.html"}) EXPECT_TRUE(fs::exists(dir / f)) << f;
  const std::string html = read(dir / "index.html");
  EXPECT_NE(html.find("<!DOCTYPE html>"), std::string::npos);
  EXPECT_NE(html.find(p.strategy), std::string::npos);
  EXPECT_EQ(html.find("src=\"http"), std::string::npos);  // self-contained
  EXPECT_EQ(html.find("href=\"http"), std::string::npos);
  EXPECT_GE(count(html, "<svg"), 2u);  // mesh + timeline inline
  for (const auto &r : p.ranks) {
    const std::string base = "rank" + std::to_string(r.rank);
    SCOPED_TRACE(base);
    EXPECT_TRUE(fs::exists(dir / (base + ".dot")));
    const std::string dot = read(dir / (base + ".dot"));
    EXPECT_EQ(dot.rfind("digraph", 0), 0u);
    EXPECT_EQ(count_regex(dot, R"(\n *p\d+_\d+ \[label=)"), instr_count(r));
    EXPECT_EQ(dot.find("eval_step"), std::string::npos);
    EXPECT_EQ(dot.find("evalonly"), std::string::npos);
    expect_dot_parses(dir / (base + ".dot"));
    if (have_dot()) {
      EXPECT_TRUE(fs::exists(dir / (base + ".svg")));
      EXPECT_GT(fs::file_size(dir / (base + ".svg")), 100u);
      EXPECT_NE(html.find(base + ".svg"), std::string::npos);
    }
    EXPECT_NE(html.find("<tr id=\"rank-" + std::to_string(r.rank) + "\">"), std::string::npos);
  }
  // The mesh picture has every rank.
  const std::string mesh = read(dir / "mesh.svg");
  EXPECT_EQ(count(mesh, "class=\"mesh-rank\""), static_cast<size_t>(p.world_size));
}

} // namespace

TEST(Viz, PipelinePlan) {
  const plan::Plan p = pipeline_plan();
  const fs::path dir = temp_dir("pipe");
  std::ostringstream log;
  Status st = write_plan_viz(p, dir.string(), log);
  ASSERT_TRUE(st.is_ok()) << st.message();
  check_common(p, dir);

  const std::string dot0 = read(dir / "rank0.dot"), dot1 = read(dir / "rank1.dot");
  EXPECT_NE(dot0.find("cluster_p0"), std::string::npos);
  EXPECT_NE(dot0.find("label=\"forward"), std::string::npos);
  EXPECT_NE(dot0.find("label=\"backward"), std::string::npos);
  EXPECT_NE(dot0.find("label=\"optimizer_step"), std::string::npos);
  EXPECT_NE(dot0.find("peer=1"), std::string::npos);
  EXPECT_NE(dot1.find("peer=0"), std::string::npos);
  EXPECT_NE(dot0.find("#d7263d"), std::string::npos);  // collectives highlighted
  // Rank 1: recv -> linear_fwd through the received activation, labelled with its shape.
  EXPECT_NE(dot1.find("p0_0 -> p0_1 [label=\"2x4x8\"]"), std::string::npos) << dot1;
  // Forward activation saved for the backward: embedding (forward) -> lora_linear_bwd (backward).
  EXPECT_NE(dot0.find("p0_0 -> p1_1"), std::string::npos) << dot0;
  // Gradient into the optimizer (dashed).
  EXPECT_NE(dot0.find("p1_1 -> p2_0 [style=dashed"), std::string::npos) << dot0;

  const std::string tl = read(dir / "timeline.svg");
  EXPECT_EQ(tl.rfind("<svg", 0), 0u);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(count(tl, "class=\"task fwd\" data-row=\"" + std::to_string(s) + "\""), static_cast<size_t>(kM));
    EXPECT_EQ(count(tl, "class=\"task bwd\" data-row=\"" + std::to_string(s) + "\""), static_cast<size_t>(kM));
  }
  EXPECT_EQ(count(tl, "class=\"task "), static_cast<size_t>(2 * 2 * kM));
  EXPECT_NE(tl.find("1f1b"), std::string::npos);
  EXPECT_NE(tl.find("bubble"), std::string::npos);
  EXPECT_NE(tl.find("stage 1"), std::string::npos);

  const std::string html = read(dir / "index.html");
  EXPECT_NE(html.find("pipeline schedule 1f1b"), std::string::npos);
  EXPECT_NE(html.find("send 4.00 KiB"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Viz, DataPlan) {
  const plan::Plan p = data_plan();
  const fs::path dir = temp_dir("data");
  std::ostringstream log;
  Status st = write_plan_viz(p, dir.string(), log);
  ASSERT_TRUE(st.is_ok()) << st.message();
  check_common(p, dir);
  const std::string dot0 = read(dir / "rank0.dot");
  EXPECT_NE(dot0.find("group=dp"), std::string::npos);
  EXPECT_NE(dot0.find("label=\"micro_step"), std::string::npos);
  const std::string tl = read(dir / "timeline.svg");
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(count(tl, "class=\"task fwd\" data-row=\"" + std::to_string(r) + "\""), static_cast<size_t>(kM));
    EXPECT_EQ(count(tl, "class=\"task bwd\" data-row=\"" + std::to_string(r) + "\""), static_cast<size_t>(kM));
  }
  EXPECT_NE(tl.find("bubble 0.0%"), std::string::npos);
  EXPECT_NE(read(dir / "index.html").find("all_reduce 384 B"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Viz, WithoutGraphvizKeepsDot) {
  const plan::Plan p = data_plan();
  const fs::path dir = temp_dir("nodot");
  const fs::path empty_path = temp_dir("emptypath");
  fs::create_directories(empty_path);
  const char *old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  ::setenv("PATH", empty_path.c_str(), 1);
  std::ostringstream log;
  Status st = write_plan_viz(p, dir.string(), log);
  ::setenv("PATH", saved.c_str(), 1);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_NE(log.str().find("not found"), std::string::npos) << log.str();
  EXPECT_TRUE(fs::exists(dir / "rank0.dot"));
  EXPECT_FALSE(fs::exists(dir / "rank0.svg"));
  EXPECT_TRUE(fs::exists(dir / "index.html"));
  EXPECT_NE(read(dir / "index.html").find("rank0.dot"), std::string::npos);
  fs::remove_all(dir);
  fs::remove_all(empty_path);
}

TEST(Viz, UnwritableDirIsAnError) {
  const fs::path f = temp_dir("file");
  { std::ofstream(f) << "x"; }
  std::ostringstream log;
  Status st = write_plan_viz(data_plan(), (f / "sub").string(), log);
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find((f / "sub").string()), std::string::npos) << st.message();
  fs::remove_all(f);
}
