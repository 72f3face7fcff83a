// runtime/train/adapter_export.h: which rank holds which slice of every full adapter tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/train/adapter_export.h"
#include "tests/unit/sharded_lora_plan.h"

using namespace parallora;
using namespace parallora::rt;

namespace {

TEST(AdapterExport, FullTrainablesTakeOneCopyOfEverySlice) {
  // tp 2 x dp 2: B's output dim sharded over tp, A replicated; dp replicas are skipped.
  plan::Plan p = test_util::dp2_tp2_lora_plan(/*zero1_moments=*/false);
  std::vector<FullTrainable> t = full_trainables(p);
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].name, "l0.q.lora_A");
  ASSERT_EQ(t[0].pieces.size(), 1u);  // replicated: rank 0's copy only
  EXPECT_EQ(t[0].pieces[0].rank, 0);
  EXPECT_EQ(t[1].shape, (std::vector<int64_t>{16, 4}));
  ASSERT_EQ(t[1].pieces.size(), 2u);  // both tp shards, from dp rank 0
  EXPECT_EQ(t[1].pieces[0].rank, 0);
  EXPECT_EQ(t[1].pieces[1].rank, 1);
}

TEST(AdapterExport, PipelineStagesContributeTheirOwnLayers) {
  // pp 2: each stage holds other layers; both are pieces of the export, from their own rank.
  plan::Plan p;
  p.world_size = 2;
  p.mesh.pp = 2;
  for (int r = 0; r < 2; ++r) {
    plan::RankPlan rp;
    rp.rank = r;
    rp.pp_stage = r;
    plan::Buffer a;
    a.name = "l" + std::to_string(r) + ".q.lora_A";
    a.kind = plan::BufferKind::Trainable;
    a.shape = {4, 8};
    plan::Buffer g = a;  // a gradient is not a trainable: never exported
    g.name = "grad." + a.name;
    g.kind = plan::BufferKind::Grad;
    rp.buffers = {a, g};
    p.ranks.push_back(rp);
  }
  std::vector<FullTrainable> t = full_trainables(p);
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].name, "l0.q.lora_A");
  EXPECT_EQ(t[0].pieces.at(0).rank, 0);
  EXPECT_EQ(t[1].name, "l1.q.lora_A");
  EXPECT_EQ(t[1].pieces.at(0).rank, 1);
}

} // namespace
