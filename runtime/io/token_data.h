//===- token_data.h - llm.c token files and the sequence loader -----------===//
//
// Token files are memory-mapped read-only. Formats:
//   llm.c  256 x int32 little-endian header, then the tokens:
//            header[0] = 20240520, header[1] = 1  -> uint16 tokens (GPT-2 style)
//            header[0] = 20240801, header[1] = 7  -> uint32 tokens (llama-3 style)
//            header[2] = number of tokens; the file size must be exactly
//            1024 + header[2] * token_size bytes.
//   u16 / u32  raw little-endian tokens, no header; the size must be a multiple of 2 / 4.
//   auto   llm.c when the magic matches, else an error asking for --data-format u16|u32.
//
// SequenceLoader cuts the file into floor(num_tokens / seq_len) non-overlapping sequences of
// seq_len tokens (the tail is dropped) and hands them out in an order fixed per epoch:
// identity without shuffle, else a Fisher-Yates permutation drawn from
// std::mt19937_64(seed * 1000003 + epoch) with our own unbiased uniform-int mapping
// (rejection sampling on the raw 64-bit output), so the order is the same on every platform.
// position() / restore() make the stream resumable bit-for-bit.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "runtime/base/status.h"

namespace parallora::rt {

struct TokenFile {
  /// `format`: "auto" | "llmc" | "u16" | "u32".
  static StatusOr<TokenFile> open(const std::string &path, const std::string &format);

  int64_t num_tokens() const { return num_tokens_; }
  /// Token `i` (0 <= i < num_tokens()); no bounds check.
  uint32_t token(int64_t i) const;
  /// Largest token id in the file (computed at open; 0 for an empty file).
  uint32_t max_token() const { return max_token_; }
  /// Bytes per token: 2 or 4.
  int token_size() const { return token_size_; }
  /// "llmc-u16", "llmc-u32", "u16" or "u32".
  std::string format;
  std::string path;

private:
  struct Mapping;
  std::shared_ptr<Mapping> mapping_;  // keeps the mmap alive; TokenFile is cheap to copy
  const uint8_t *tokens_ = nullptr;   // first token
  int64_t num_tokens_ = 0;
  int token_size_ = 2;
  uint32_t max_token_ = 0;
};

struct DataPosition {
  uint64_t epoch = 0;
  uint64_t index = 0;  // sequences of `epoch` already handed out
};

class SequenceLoader {
public:
  /// `file` must outlive the loader.
  SequenceLoader(const TokenFile *file, int64_t seq_len, uint64_t seed, bool shuffle);

  int64_t num_sequences() const { return num_sequences_; }
  int64_t seq_len() const { return seq_len_; }

  /// Fills out[0 .. n*seq_len) with the next n sequences (row-major [n, seq_len]), moving on
  /// to the next epoch (new permutation) as needed. Errors when num_sequences() == 0.
  Status next(int64_t n_sequences, int32_t *out);
  /// Errors naming the file, token position and id when some token >= vocab.
  Status check_vocab(int64_t vocab) const;

  DataPosition position() const { return pos_; }
  /// Continue from `pos` (index may be >= num_sequences(): normalised into later epochs).
  void restore(DataPosition pos);

  /// Sequence index (into the file) of the `k`-th sequence of `epoch`.
  int64_t sequence_at(uint64_t epoch, uint64_t k);

private:
  void ensure_order(uint64_t epoch);

  const TokenFile *file_;
  int64_t seq_len_;
  uint64_t seed_;
  bool shuffle_;
  int64_t num_sequences_ = 0;
  DataPosition pos_;
  uint64_t order_epoch_ = UINT64_MAX;  // epoch whose permutation is in order_
  std::vector<int64_t> order_;
};

/// Our uniform-int mapping: a value in [0, n) (n >= 1) from g's raw 64-bit outputs by
/// rejection sampling (no modulo bias): draw x until x < 2^64 - (2^64 mod n), return x mod n.
uint64_t uniform_below(std::mt19937_64 &g, uint64_t n);

} // namespace parallora::rt
