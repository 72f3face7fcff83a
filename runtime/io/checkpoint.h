//===- checkpoint.h - resumable training checkpoints ----------------------===//
//
// Layout of one checkpoint, `<out>/checkpoint-<step>/`:
//   adapter_model.safetensors + adapter_config.json   a PEFT adapter (peft_adapter.h), so any
//                                                     checkpoint loads in PeftModel directly
//   optimizer.safetensors                             AdamW moments, F32, "<param>.exp_avg" /
//                                                     "<param>.exp_avg_sq"
//   trainer_state.json                                {"format": "parallora-trainer-state",
//                                                      "version": 1, "global_step": N,
//                                                      "data_position": {"epoch", "index"},
//                                                      "seed", "plan_fingerprint",
//                                                      "training_fingerprint", "training": {..},
//                                                      "mesh": {..}, "extra": {..}}
// Every tensor is stored whole under its PEFT name (the global layout), whatever mesh wrote it:
// plans of several ranks gather the adapter and moments on rank 0 (checkpoint_store.h), and a
// resume under any other mesh takes its slices. Only the training fingerprint must match.
// and `<out>/latest`, a text file holding "checkpoint-<step>\n".
//
// Crash safety: a checkpoint is written into `checkpoint-<step>.tmp-<pid>/`, each file and the
// directory fsync'd, then renamed to `checkpoint-<step>`; only then is `latest` replaced (tmp
// file + fsync + rename + parent fsync). A kill at any moment leaves the previous checkpoint
// and `latest` intact; leftover `*.tmp-*` directories are ignored (and removed by the next
// successful save). Tensors are stored as raw F32 bits and seeds as JSON integers, so resuming
// is bit-for-bit.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/base/status.h"
#include "runtime/io/peft_adapter.h"
#include "runtime/io/token_data.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

struct TrainerState {
  int64_t step = 0;              // optimizer steps completed
  DataPosition data;             // the training loader's position after `step`
  uint64_t seed = 0;
  std::string plan_fingerprint;  // the plan that wrote it (informative since training fingerprints)
  // plan_io.h training_config()/training_fingerprint(): what a resume must match (the caller
  // checks); empty in checkpoints written before them (then the plan fingerprint must match).
  std::string training_fingerprint;
  nlohmann::json training = nlohmann::json::object();          // {"<label>": "<value>", ...}
  // How it was run (informative): {"world_size", "dp", "tp", "pp", "strategy", "pipeline_schedule",
  // "precision"}.
  nlohmann::json mesh = nlohmann::json::object();
  nlohmann::json extra = nlohmann::json::object();  // free-form (loss, lr, tokens seen, ...)
};

struct LoadedCheckpoint {
  TrainerState state;
  std::map<std::string, std::vector<float>> adapters;         // our names (no PEFT prefix)
  std::map<std::string, std::vector<float>> optimizer_state;  // "<param>.exp_avg[_sq]"
  plan::LoraInfo lora;                                        // from adapter_config.json
  std::string path;                                           // the checkpoint-N directory
};

/// Writes `<out_dir>/checkpoint-<state.step>` (replacing one of the same step) and points
/// `<out_dir>/latest` at it. `saved_path` (may be null) receives the directory written.
/// keep_last > 0: afterwards removes all but the newest keep_last `checkpoint-<N>` dirs.
Status save_checkpoint(const std::string &out_dir, const TrainerState &state,
                       const plan::LoraInfo &lora, const std::string &base_model,
                       const std::vector<NamedTensor> &adapters,
                       const std::vector<NamedTensor> &optimizer_state, std::string *saved_path,
                       int keep_last = 0);

/// `path` is a checkpoint-N directory (holding trainer_state.json), or an out dir whose
/// `latest` file names one.
StatusOr<LoadedCheckpoint> load_checkpoint(const std::string &path);

} // namespace parallora::rt
