//===- checkpoint_store.h - a session's checkpoints: save, find, load, prune ===//
//
// Every checkpoint has the layout of runtime/io/checkpoint.h (a PEFT adapter,
// optimizer.safetensors with the AdamW moments, trainer_state.json), all tensors whole under their
// PEFT names, whatever mesh wrote it: plans of several ranks assemble the adapter and the moments
// on rank 0 (tensor-parallel slices pasted, pipeline stages joined, ZeRO-1 moments taken from
// their owner replicas) and rank 0 writes the checkpoint. A resume reads the whole tensors on
// every rank and keeps this rank's slices, so any plan with the same training fingerprint
// (plan_io.h training_config: model, LoRA config, global batch, seq_len, hyperparameters)
// resumes it, under any mesh, pipeline schedule, micro-batch count or precision.
//
// Per-rank shards are no longer written: the gathered copy is bit-exact (F32), so a fast path
// for the same plan would save only the gather of tensors twice the adapter's size. Older
// checkpoints of several ranks (rank-R.safetensors, no optimizer.safetensors) still resume with
// the plan that wrote them.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <map>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/core/executor.h"
#include "runtime/io/checkpoint.h"
#include "runtime/plan/plan.h"
#include "runtime/train/world.h"

namespace parallora::rt {

/// What a resume restores on this rank.
struct ResumePoint {
  TrainerState state;
  std::map<std::string, std::vector<float>> trainables, optimizer_state;  // this rank's buffers
  std::string path;                                                      // the checkpoint-N directory
};

/// The step of a "checkpoint-N" directory name; -1 for any other name.
int64_t checkpoint_dir_step(const std::string &name);

class CheckpointStore {
public:
  /// `out_dir`: the session's --out; `fingerprint`: the plan's; `base_model`: recorded in the
  /// adapters' adapter_config.json; keep_last > 0 prunes all but the newest keep_last.
  CheckpointStore(std::string out_dir, const plan::Plan &plan, std::string fingerprint, std::string base_model,
                  int keep_last);

  /// `path`: a checkpoint-N directory, or an out dir (its `latest`, else the newest complete one).
  /// Refuses (check_resumable) a checkpoint of another training; `plan_path` names the plan in
  /// messages.
  StatusOr<ResumePoint> load(const std::string &path, const Executor &ex, int rank,
                             const std::string &plan_path = "the plan") const;
  /// Whether the checkpoint's state (of `cpath`) may resume this plan (read from `plan_path`): its
  /// training fingerprint must equal the plan's; the error names every item that differs.
  Status check_resumable(const TrainerState &state, const std::string &cpath, const std::string &plan_path) const;
  /// Writes checkpoint-<state.step> (collective over the world for plans of several ranks).
  Status save(const TrainerState &state, Communicator &comm, const Executor &ex) const;

private:
  std::string out_;
  const plan::Plan &plan_;
  std::string fingerprint_, base_model_;
  int keep_last_;
};

} // namespace parallora::rt
