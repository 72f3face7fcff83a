// runtime/train/checkpoint_store.h and runtime/io/checkpoint_manifest.h: checkpoint directory
// names, the manifest that refuses a corrupt file or an edited trainer state, and the global
// layout that lets a checkpoint resume under any mesh (moments assembled from ZeRO-1 owners and
// tp slices, each rank's slices taken back, the training fingerprint and its refusals).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/io/checkpoint.h"
#include "runtime/io/checkpoint_manifest.h"
#include "runtime/plan/plan_io.h"
#include "runtime/train/adapter_export.h"
#include "runtime/train/checkpoint_store.h"
#include "tests/unit/sharded_lora_plan.h"

using namespace parallora;
using namespace parallora::rt;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

TEST(CheckpointStore, DirectoryNames) {
  EXPECT_EQ(checkpoint_dir_step("checkpoint-12"), 12);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-0"), 0);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-"), -1);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-3.tmp-77"), -1);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-1x"), -1);
  EXPECT_EQ(checkpoint_dir_step("latest"), -1);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-1234567890123456789"), -1);  // too long for int64 safety
}

TEST(CheckpointManifest, RefusesAFlippedBitAndAnEditedState) {
  fs::path d = fs::temp_directory_path() / ("parallora_manifest_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  { std::ofstream(d / "a.bin", std::ios::binary) << std::string(1000, 'x'); }
  json state = {{"global_step", 7}, {"seed", 1}};
  ASSERT_TRUE(add_file_checksums(d.string(), {"a.bin"}, &state));
  seal_state(&state);
  EXPECT_EQ(state["files"]["a.bin"]["bytes"], 1000);
  EXPECT_EQ(state["files"]["a.bin"]["crc32"].get<std::string>().size(), 8u);
  EXPECT_TRUE(verify_manifest(d.string(), "ts.json", state, {"a.bin"}));

  json edited = state;
  edited["global_step"] = 6;  // an edited step counter
  Status s = verify_manifest(d.string(), "ts.json", edited, {"a.bin"});
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("ts.json: checksum mismatch"), std::string::npos) << s.message();

  {  // one flipped bit
    std::fstream f(d / "a.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(500);
    f.put('x' ^ 0x01);
  }
  s = verify_manifest(d.string(), "ts.json", state, {"a.bin"});
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("a.bin: checksum mismatch"), std::string::npos) << s.message();

  // A file the manifest does not list is refused when asked for; a manifest-less state (an old
  // checkpoint) is accepted.
  EXPECT_FALSE(verify_manifest(d.string(), "ts.json", state, {"b.bin"}));
  EXPECT_TRUE(verify_manifest(d.string(), "ts.json", json{{"global_step", 1}}, {"a.bin"}));
  fs::remove_all(d);
}

TEST(CheckpointManifest, Crc32IsZlibs) {
  // The standard check value of CRC-32 (IEEE 802.3): "123456789" -> cbf43926.
  EXPECT_EQ(crc32_hex("123456789", 9), "cbf43926");
}

// dp 2 x tp 2 with ZeRO-1: lora_A (replicated over tp) has its moments on dp rank 1 only,
// lora_B (output dim sharded over tp) on dp rank 0 only; moments carry no slice of their own.
plan::Plan zero1_plan() { return test_util::dp2_tp2_lora_plan(/*zero1_moments=*/true); }

TEST(GlobalLayout, MomentsComeFromTheirOwnersSlicedLikeTheirTrainable) {
  plan::Plan p = zero1_plan();
  std::vector<FullTrainable> m = full_optimizer_states(p);
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].name, "l0.q.lora_A.exp_avg");
  EXPECT_EQ(m[0].shape, (std::vector<int64_t>{4, 8}));
  ASSERT_EQ(m[0].pieces.size(), 1u);  // replicated over tp: one copy, from its owner (dp 1)
  EXPECT_EQ(m[0].pieces[0].rank, 2);
  EXPECT_TRUE(m[0].pieces[0].slice.empty());
  EXPECT_EQ(m[2].name, "l0.q.lora_B.exp_avg");
  EXPECT_EQ(m[2].shape, (std::vector<int64_t>{16, 4}));  // the trainable's whole shape
  ASSERT_EQ(m[2].pieces.size(), 2u);                       // both tp slices, from dp 0
  EXPECT_EQ(m[2].pieces[0].rank, 0);
  EXPECT_EQ(m[2].pieces[1].rank, 1);
  EXPECT_EQ(m[2].pieces[1].slice, (std::vector<std::pair<int64_t, int64_t>>{{8, 8}, {0, 4}}));
}

TEST(GlobalLayout, EachRankTakesItsSlicesOfTheWholeTensors) {
  plan::Plan p = zero1_plan();
  std::map<std::string, std::vector<float>> whole;
  for (const char *n : {"l0.q.lora_A", "l0.q.lora_A.exp_avg", "l0.q.lora_A.exp_avg_sq"}) whole[n].resize(32);
  for (const char *n : {"l0.q.lora_B", "l0.q.lora_B.exp_avg", "l0.q.lora_B.exp_avg_sq"}) whole[n].resize(64);
  for (auto &[n, v] : whole)
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  // Rank 1 (dp 0, tp 1): lora_B rows 8..15 and their moments; lora_A whole, no moments of A.
  auto tr = take_rank_slices(p, 1, plan::BufferKind::Trainable, whole);
  ASSERT_TRUE(tr) << tr.message();
  EXPECT_EQ(tr->at("l0.q.lora_A").size(), 32u);
  ASSERT_EQ(tr->at("l0.q.lora_B").size(), 32u);
  EXPECT_EQ(tr->at("l0.q.lora_B")[0], 32.f);  // row 8, col 0 of a 16 x 4 tensor
  auto os = take_rank_slices(p, 1, plan::BufferKind::OptState, whole);
  ASSERT_TRUE(os) << os.message();
  EXPECT_EQ(os->size(), 2u);
  EXPECT_EQ(os->at("l0.q.lora_B.exp_avg_sq")[31], 63.f);
  // Rank 2 (dp 1, tp 0) owns A's moments.
  auto os2 = take_rank_slices(p, 2, plan::BufferKind::OptState, whole);
  ASSERT_TRUE(os2);
  EXPECT_EQ(os2->count("l0.q.lora_A.exp_avg"), 1u);
  EXPECT_EQ(os2->count("l0.q.lora_B.exp_avg"), 0u);
  // A whole tensor of the wrong size is refused, naming it.
  whole["l0.q.lora_B.exp_avg"].resize(60);
  auto bad = take_rank_slices(p, 0, plan::BufferKind::OptState, whole);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.message().find("l0.q.lora_B.exp_avg has 60 values, the plan needs 64 (16x4)"), std::string::npos)
      << bad.message();
}

plan::Plan small_plan() {
  plan::Plan p;
  p.model_config_json = "{\"hidden_size\": 64}";
  p.lora.rank = 4;
  p.lora.alpha = 8;
  p.lora.target_modules = {"q_proj", "v_proj"};
  p.global_batch = 4;
  p.seq_len = 16;
  p.hparams.lr = 3e-4;
  p.ranks.resize(1);
  return p;
}

TEST(GlobalLayout, TrainingFingerprintIgnoresHowItRuns) {
  plan::Plan a = small_plan(), b = small_plan();
  b.mesh.dp = 2;
  b.mesh.tp = 2;
  b.world_size = 4;
  b.micro_batches = 1;
  b.precision = "bf16";
  b.strategy = "hybrid";
  b.pipeline_schedule = "1f1b";
  b.lora.target_modules = {"v_proj", "q_proj"};  // the order of the targets does not matter
  EXPECT_EQ(plan::training_fingerprint(a), plan::training_fingerprint(b));
  EXPECT_NE(plan::plan_fingerprint(a), plan::plan_fingerprint(b));
  for (int i = 0; i < 5; ++i) {
    plan::Plan c = small_plan();
    if (i == 0) c.global_batch = 8;
    if (i == 1) c.lora.rank = 8;
    if (i == 2) c.seq_len = 32;
    if (i == 3) c.hparams.lr = 1e-4;
    if (i == 4) c.model_config_json = "{\"hidden_size\": 128}";
    EXPECT_NE(plan::training_fingerprint(a), plan::training_fingerprint(c)) << i;
  }
  // Values print exactly but shortest: 3e-4 reads "0.0003".
  bool found = false;
  for (auto &[k, v] : plan::training_config(a))
    if (k == "lr") found = v == "0.0003";
  EXPECT_TRUE(found);
}

TEST(GlobalLayout, ResumeRefusesAnotherTrainingNamingWhatDiffers) {
  plan::Plan mine = small_plan(), theirs = small_plan();
  theirs.global_batch = 8;
  theirs.lora.rank = 8;
  CheckpointStore store("/nonexistent", mine, plan::plan_fingerprint(mine), "base", 0);
  TrainerState st;
  st.plan_fingerprint = plan::plan_fingerprint(theirs);
  st.training_fingerprint = plan::training_fingerprint(theirs);
  for (auto &[k, v] : plan::training_config(theirs)) st.training[k] = v;
  Status s = store.check_resumable(st, "ck", "mine.lp");
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("the checkpoint was trained with LoRA rank 8, the plan has 4; global batch 8, the plan has 4 (mine.lp)"),
            std::string::npos)
      << s.message();
  // The same training under another mesh resumes.
  plan::Plan other_mesh = small_plan();
  other_mesh.mesh.tp = 2;
  other_mesh.world_size = 2;
  st.plan_fingerprint = plan::plan_fingerprint(other_mesh);
  st.training_fingerprint = plan::training_fingerprint(other_mesh);
  for (auto &[k, v] : plan::training_config(other_mesh)) st.training[k] = v;
  EXPECT_TRUE(store.check_resumable(st, "ck", "mine.lp"));
  // A checkpoint from before training fingerprints: only the plan that wrote it.
  st.training_fingerprint.clear();
  s = store.check_resumable(st, "ck", "mine.lp");
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("the checkpoint was written for plan"), std::string::npos) << s.message();
  st.plan_fingerprint = plan::plan_fingerprint(mine);
  EXPECT_TRUE(store.check_resumable(st, "ck", "mine.lp"));
}

TEST(GlobalLayout, TrainerStateKeepsTheTrainingFingerprintAndMesh) {
  fs::path d = fs::temp_directory_path() / ("parallora_global_" + std::to_string(::getpid()));
  fs::remove_all(d);
  plan::Plan p = small_plan();
  TrainerState st;
  st.step = 3;
  st.seed = 5;
  st.data = {1, 12};
  st.training_fingerprint = plan::training_fingerprint(p);
  for (auto &[k, v] : plan::training_config(p)) st.training[k] = v;
  st.mesh = {{"dp", 2}, {"tp", 1}, {"pp", 1}, {"precision", "bf16"}};
  std::vector<float> a(8, 0.5f), m(8, 0.25f);
  std::vector<NamedTensor> adapters = {{"model.layers.0.self_attn.q_proj.lora_A.weight", {2, 4}, a.data()}};
  std::vector<NamedTensor> moments = {{"model.layers.0.self_attn.q_proj.lora_A.weight.exp_avg", {2, 4}, m.data()}};
  ASSERT_TRUE(save_checkpoint(d.string(), st, p.lora, "base", adapters, moments, nullptr));
  auto c = load_checkpoint(d.string());
  ASSERT_TRUE(c) << c.message();
  EXPECT_EQ(c->state.training_fingerprint, st.training_fingerprint);
  EXPECT_EQ(c->state.training, st.training);
  EXPECT_EQ(c->state.mesh["precision"], "bf16");
  EXPECT_EQ(c->state.data.index, 12u);
  EXPECT_EQ(c->optimizer_state.at("model.layers.0.self_attn.q_proj.lora_A.weight.exp_avg")[7], 0.25f);
  fs::remove_all(d);
}

} // namespace
