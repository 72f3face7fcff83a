//===- checkpoint_store.h - a session's checkpoints: save, find, load, prune ===//
//
// One-rank plans use the layout of runtime/io/checkpoint.h (a PEFT adapter, optimizer.safetensors,
// trainer_state.json). Plans of several ranks write
//   <out>/checkpoint-N/{rank-R.safetensors (this rank's trainables and AdamW moments, as held),
//                       adapter_model.safetensors + adapter_config.json (the full adapter),
//                       trainer_state.json (last: its presence marks a complete checkpoint)}
// into checkpoint-N.tmp-PID (PID of rank 0), committed by rank 0 with a rename, then `latest`
// replaced atomically. A kill at any moment leaves the previous checkpoint and `latest` intact.
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
  StatusOr<ResumePoint> load(const std::string &path, const Executor &ex, int rank) const;
  /// Writes checkpoint-<state.step> (collective over the world for plans of several ranks).
  Status save(const TrainerState &state, Communicator &comm, const Executor &ex) const;

private:
  std::string out_;
  const plan::Plan &plan_;
  std::string fingerprint_, base_model_;
  int keep_last_;
};

} // namespace parallora::rt
