//===- batch_source.h - global batches for a session, fed to the plan's inputs ===//
//
// The session's data: either a plain token stream (a token file alone: fixed windows of seq_len,
// labels = input_ids, every position but the first trained) or fine-tuning examples (a token
// file plus its label-mask file, runtime/io/example_data.h, found next to it by name:
// X.bin -> X.mask). One global batch at a time, row-major [global_batch, seq_len]; each rank
// feeds its rows to the plan's Input buffers by name, where the rank has them:
//   input_ids     i32 [B, T]   token ids (padding: the mask file's pad_id)
//   labels        i32 [B, T]   the target at each position or the plan's ignore_index
//   position_ids  i32 [B, T]   0.. restarting at every example (plans compiled with --packing)
//   segment_ids   i32 [B, T]   the example's index within its row, padding its own segment
// and label_count() = the labels of the whole global batch the loss counts (the cross-entropy's
// shift and ignore_index, read from the plan): the loss denominator (Executor::
// set_loss_denominator), the same under every mesh and micro-batch count.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/io/example_data.h"
#include "runtime/io/token_data.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

class Executor;

struct BatchSourceOptions {
  std::string flag;  // "--data" / "--val-data": the start of every error message
  std::string path, format = "auto";
  std::string layout = "auto";  // "auto" | "packed" | "padded" (examples only)
  uint64_t seed = 0;
  bool shuffle = false;
};

class BatchSource {
public:
  /// Opens the token file (and its label-mask file when one lies next to it) and checks both
  /// against the plan (vocabulary, seq_len, the inputs packing needs). Errors start with the flag
  /// ("--data PATH: ..." about the token file itself, else "--data: ..." naming the file).
  static StatusOr<std::unique_ptr<BatchSource>> open(const BatchSourceOptions &options, const plan::Plan &plan);

  /// Loads the next global batch (`rows` rows); errors when it has no counted label.
  Status next(int64_t rows);
  /// Feeds rows [first, first + rows) of the loaded batch to `ex`'s inputs of slot `slot`.
  Status feed(Executor &ex, int64_t first, int64_t rows, int slot) const;

  int64_t label_count() const { return label_count_; }  // counted labels of the loaded batch
  int64_t rows() const;                                  // rows of one epoch
  bool examples() const { return examples_ != nullptr; }
  bool packed() const { return layout_ == RowLayout::Packed; }
  /// "12549 tokens, 149 examples (81.1% masked) in 149 padded rows" / "N tokens, M sequences".
  std::string describe() const;

  DataPosition position() const;
  void restore(DataPosition pos);

private:
  BatchSource() = default;
  static StatusOr<std::unique_ptr<BatchSource>> open_impl(const BatchSourceOptions &options, const plan::Plan &plan);
  std::string path_;
  int64_t seq_len_ = 0;
  int64_t shift_ = 1, ignore_ = -100;
  RowLayout layout_ = RowLayout::Padded;
  std::unique_ptr<TokenFile> tokens_;
  std::unique_ptr<LabelMaskFile> mask_;
  std::unique_ptr<SequenceLoader> stream_;
  std::unique_ptr<ExampleLoader> examples_;
  ExampleBatch batch_;  // the stream fills only input_ids
  int64_t label_count_ = 0;
};

/// The plan's cross-entropy shift and ignore_index (1, -100 when it has none).
void plan_label_rule(const plan::Plan &plan, int64_t *shift, int64_t *ignore_index);
/// Whether any rank of the plan has an Input buffer `name`.
bool plan_has_input(const plan::Plan &plan, const std::string &name);

} // namespace parallora::rt
