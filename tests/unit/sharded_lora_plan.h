//===- sharded_lora_plan.h - a dp 2 x tp 2 plan of one LoRA pair (shared) ---===//
//
// The smallest plan in which every rank holds another view of the adapters, for the tests of
// runtime/train/adapter_export.h and checkpoint_store.h: 4 ranks (rank = 2 * dp_rank + tp_rank),
// l0.q.lora_A (4 x 8) replicated over tp, l0.q.lora_B (16 x 4 whole) with its output dim sharded
// over tp (rows [8 * tp_rank, +8)). With ZeRO-1 moments, each trainable's exp_avg and
// exp_avg_sq live on one dp rank only: A's on dp rank 1, B's on dp rank 0; moments carry no
// slice of their own.
//
//===----------------------------------------------------------------------===//
#pragma once

#include "runtime/plan/plan.h"

namespace parallora::test_util {

inline plan::Plan dp2_tp2_lora_plan(bool zero1_moments) {
  plan::Plan p;
  p.world_size = 4;
  p.mesh.dp = 2;
  p.mesh.tp = 2;
  for (int r = 0; r < 4; ++r) {
    plan::RankPlan rp;
    rp.rank = r;
    rp.dp_rank = r / 2;
    rp.tp_rank = r % 2;
    plan::Buffer a, b;
    a.name = "l0.q.lora_A";
    a.kind = plan::BufferKind::Trainable;
    a.shape = {4, 8};
    b.name = "l0.q.lora_B";
    b.kind = plan::BufferKind::Trainable;
    b.shape = {8, 4};
    b.full_shape = {16, 4};
    b.slice = {{rp.tp_rank * 8, 8}, {0, 4}};
    rp.buffers = {a, b};
    if (zero1_moments) {
      const plan::Buffer &owned = rp.dp_rank == 1 ? a : b;
      for (const char *m : {".exp_avg", ".exp_avg_sq"}) {
        plan::Buffer o;
        o.name = owned.name + m;
        o.kind = plan::BufferKind::OptState;
        o.shape = owned.shape;
        o.param = owned.name;
        rp.buffers.push_back(o);
      }
    }
    p.ranks.push_back(rp);
  }
  return p;
}

} // namespace parallora::test_util
