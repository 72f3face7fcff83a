//===- example_data.h - label-mask files and the example loader ------------===//
//
// Fine-tuning data (scripts/prepare_data.py) is a token file (token_data.h) plus a label-mask
// file OUT.mask next to it that says which tokens are trained and where each example starts.
// Format (little-endian; documented in docs/training.md, "Label-mask files"):
//   header  256 x uint32 (1024 bytes):
//     [0] magic 20261206   [1] version 1
//     [2],[3] num_tokens (uint64 lo, hi): must equal the token file's count
//     [4],[5] num_examples (uint64 lo, hi)
//     [6] vocab_size of the tokenizer that wrote the tokens   [7] flags (bit 0: --train-on-inputs)
//     [8] pad_id (input id of padding)   [9],[10] trained tokens (uint64)   [11] longest example
//     the rest 0
//   mask    num_tokens x uint8: 1 = the token is a training target (predicted from the tokens
//           before it in its example), 0 = not; zero bytes up to a multiple of 8
//   starts  (num_examples + 1) x int64: example e is tokens [starts[e], starts[e+1]);
//           starts[0] = 0, strictly increasing, starts[num_examples] = num_tokens
// The file size is exactly 1024 + align8(num_tokens) + 8 * (num_examples + 1).
//
// ExampleLoader lays the examples out in rows of seq_len tokens, one global batch at a time:
//   padded  one example per row, the rest of the row padding
//   packed  next-fit in file order: examples follow each other in a row while they fit
// and yields per row input_ids, labels (the token where the mask is 1, else ignore_index; the
// first token of every example and all padding are ignore_index), position_ids (0, 1, ...
// restarting at each example; padding counts on from 0 as one more segment) and segment_ids
// (the example's index within its row; padding = the number of examples in the row). Rows are
// handed out in the order rule of SequenceLoader (identity, or a per-epoch Fisher-Yates
// permutation from mt19937_64(seed * 1000003 + epoch)), resumable with position() / restore().
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/io/token_data.h"

namespace parallora::rt {

constexpr uint32_t kLabelMaskMagic = 20261206;
constexpr uint32_t kLabelMaskVersion = 1;

struct LabelMaskFile {
  /// Opens `path` and checks it against `tokens` (count) and itself (sizes, boundaries, mask
  /// values, every example trains at least one token). Errors name the file and the example.
  static StatusOr<LabelMaskFile> open(const std::string &path, const TokenFile &tokens);

  int64_t num_examples() const { return num_examples_; }
  int64_t example_start(int64_t e) const { return starts_[e]; }
  int64_t example_length(int64_t e) const { return starts_[e + 1] - starts_[e]; }
  bool trained(int64_t i) const { return mask_[i] != 0; }

  std::string path;
  uint32_t vocab_size = 0, flags = 0, pad_id = 0;
  int64_t num_trained = 0, longest = 0;

private:
  std::shared_ptr<std::vector<uint8_t>> bytes_;  // the whole file (1 byte a token: read, not mapped)
  const uint8_t *mask_ = nullptr;
  const int64_t *starts_ = nullptr;
  int64_t num_examples_ = 0;
};

enum class RowLayout { Padded, Packed };

/// One global batch, each field row-major [rows, seq_len].
struct ExampleBatch {
  std::vector<int32_t> input_ids, labels, position_ids, segment_ids;
};

class ExampleLoader {
public:
  /// Builds the rows; errors when an example is longer than seq_len (naming it). `tokens` and
  /// `mask` must outlive the loader.
  static StatusOr<std::unique_ptr<ExampleLoader>> create(const TokenFile *tokens, const LabelMaskFile *mask,
                                                         int64_t seq_len, RowLayout layout, uint64_t seed,
                                                         bool shuffle, int32_t ignore_index);

  int64_t num_rows() const { return static_cast<int64_t>(rows_.size()); }
  int64_t seq_len() const { return seq_len_; }
  /// Real (non-padding) tokens of all rows.
  int64_t real_tokens() const { return real_tokens_; }

  /// Fills `out` with the next n rows (next epoch as needed).
  void next(int64_t n_rows, ExampleBatch *out);

  DataPosition position() const { return pos_; }
  void restore(DataPosition pos);

private:
  ExampleLoader() = default;
  int64_t row_at(uint64_t epoch, uint64_t k);
  void fill_row(int64_t row, int64_t r, ExampleBatch *out) const;

  const TokenFile *tokens_ = nullptr;
  const LabelMaskFile *mask_ = nullptr;
  int64_t seq_len_ = 0;
  int32_t ignore_ = -100;
  uint64_t seed_ = 0;
  bool shuffle_ = false;
  int64_t real_tokens_ = 0;
  std::vector<std::pair<int64_t, int64_t>> rows_;  // [first example, end example) per row
  DataPosition pos_;
  uint64_t order_epoch_ = UINT64_MAX;
  std::vector<int64_t> order_;
};

/// "X.mask" for "X.bin" (else the path + ".mask"): where prepare_data.py puts the mask file.
std::string label_mask_path(const std::string &token_path);

} // namespace parallora::rt
