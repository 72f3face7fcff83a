//===- adapter_export.h - whole adapters in and out of a sharded plan ------===//
//
// Adapters cross the session's edge whole, in PEFT's layout: --init-adapter reads a full
// adapter and every rank keeps its slices; the final adapter and each checkpoint's copy are
// assembled on rank 0 from the ranks holding the slices (tensor parallel shards B's output or
// A's input dim; pipeline stages hold different layers; data-parallel replicas are skipped).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/core/executor.h"
#include "runtime/io/peft_adapter.h"
#include "runtime/plan/plan.h"
#include "runtime/train/world.h"

namespace parallora::rt {

/// One piece of a full trainable: the rank that sends it and its slice (empty = whole).
struct TrainablePiece {
  int rank = 0;
  const plan::Buffer *buffer = nullptr;
  // The piece's place in the whole tensor (empty = whole): the buffer's slice, or for an AdamW
  // moment that of its trainable (moments are lowered with the trainable's local shape).
  std::vector<std::pair<int64_t, int64_t>> slice;
};
struct FullTrainable {
  std::string name;
  std::vector<int64_t> shape;          // the whole tensor
  std::vector<TrainablePiece> pieces;  // distinct slices, lowest holding rank with dp_rank == 0 each
};
/// A full trainable with its values (rank 0 after gather_full_trainables).
using FullTensor = std::pair<FullTrainable, std::vector<float>>;

/// Every trainable of the plan (sorted by name) and where its pieces live. Deterministic: every
/// rank computes the same list from the plan.
std::vector<FullTrainable> full_trainables(const plan::Plan &plan);

/// Every AdamW moment ("<param>.exp_avg[_sq]") of the plan (sorted by name) and where its pieces
/// live: like full_trainables, but from any data-parallel rank (ZeRO-1 keeps each moment on one
/// owner replica only); sliced like its trainable.
std::vector<FullTrainable> full_optimizer_states(const plan::Plan &plan);

/// The full (unsharded) trainables, assembled on rank 0 from the ranks holding their slices
/// (collective over the world: every rank must call it). On rank 0 `out` receives them;
/// elsewhere it stays empty.
Status gather_full_trainables(const plan::Plan &plan, Communicator &comm, const Executor &ex, std::vector<FullTensor> *out);

/// The full AdamW moments, assembled on rank 0 like gather_full_trainables (collective).
Status gather_full_optimizer_states(const plan::Plan &plan, Communicator &comm, const Executor &ex,
                                    std::vector<FullTensor> *out);

/// This rank's share of whole tensors: for each buffer of `kind` on `rank`, its slice of the
/// whole tensor of the same name in `whole` (OptState: sliced like its trainable). A missing name
/// is skipped (the executor's setters report it); a whole tensor of the wrong size is an error.
StatusOr<std::map<std::string, std::vector<float>>> take_rank_slices(const plan::Plan &plan, int rank,
                                                                     plan::BufferKind kind,
                                                                     const std::map<std::string, std::vector<float>> &whole);

/// Borrowed views of `full` for the PEFT writers.
std::vector<NamedTensor> as_named(const std::vector<FullTensor> &full);

/// This rank's trainables (or optimizer states) as borrowed tensors.
std::vector<NamedTensor> named_tensors(const Executor &ex, plan::BufferKind kind);

/// --init-adapter: reads the PEFT adapter in `dir` and sets this rank's trainables (their slices
/// of sharded tensors). `info` receives the adapter's r / lora_alpha.
Status load_init_adapter(const std::string &dir, const plan::Plan &plan, Executor &ex, plan::LoraInfo *info);

/// Writes the final adapter (PEFT layout) to `dir`, assembled on rank 0 (collective).
Status export_adapter(const std::string &dir, const plan::Plan &plan, Communicator &comm, const Executor &ex,
                      const std::string &base_model);

} // namespace parallora::rt
