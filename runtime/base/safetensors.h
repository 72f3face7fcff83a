//===- safetensors.h - safetensors reader/writer and sharded weight stores ===//
//
// The safetensors layout (https://github.com/huggingface/safetensors):
//
//   [8 bytes: N, little-endian u64]
//   [N bytes: JSON header, padded with spaces]
//       {"__metadata__": {"str": "str", ...},
//        "<name>": {"dtype": "F32", "shape": [d0, d1], "data_offsets": [begin, end]}, ...}
//   [byte buffer: offsets are relative to its start]
//
// Files are memory-mapped read-only and validated completely at open time, so a TensorView
// handed out afterwards always points at `nbytes` readable bytes. Tensor data is not aligned
// in general: read it with memcpy or to_f32().
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/base/status.h"

namespace parallora {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

/// The safetensors spelling: "F32", "BF16", "BOOL", ...
const char *dtype_name(DType dtype);
/// Bytes per element.
size_t dtype_size(DType dtype);
/// Inverse of dtype_name; false when `name` is not a supported dtype.
bool dtype_from_name(const std::string &name, DType &out);

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t *data = nullptr;  // (numel * dtype_size) bytes, not necessarily aligned
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
public:
  /// Maps `path` read-only and validates the header and every tensor entry.
  static StatusOr<std::unique_ptr<SafetensorsFile>> open(const std::string &path);
  /// Same validation over bytes in memory (copied); `origin` names the source in errors.
  /// open() and the fuzz target both go through this parser.
  static StatusOr<std::unique_ptr<SafetensorsFile>> from_memory(const uint8_t *bytes, size_t size,
                                                                const std::string &origin);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  /// nullptr when the file holds no tensor of that name.
  const TensorView *find(const std::string &name) const;
  /// Drops the pages of `v` (a tensor of this file) from this process's memory once its bytes
  /// have been copied out (madvise MADV_DONTNEED on the mapping; the page cache keeps them, a
  /// later read faults them back in). Without it a model's every page read stays resident until
  /// the file is closed, on top of the copy. No-op for files read from memory.
  void release(const TensorView &v) const;
  /// In header order.
  const std::vector<TensorView> &tensors() const { return tensors_; }
  const std::map<std::string, std::string> &metadata() const { return metadata_; }
  const std::string &path() const { return path_; }

private:
  SafetensorsFile() = default;
  Status parse();

  std::string path_;
  const uint8_t *bytes_ = nullptr;  // the whole file
  size_t size_ = 0;
  void *mapping_ = nullptr;          // mmap base when mapped
  std::vector<uint8_t> owned_;       // backing store for from_memory
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

/// All tensors of a checkpoint: one safetensors file, or an HF sharded checkpoint
/// (`model.safetensors.index.json`: {"metadata": {...}, "weight_map": {tensor: shard_file}}).
class WeightStore {
public:
  /// `path` is a directory holding model.safetensors.index.json or model.safetensors, a
  /// `.safetensors` file, or an index `.json` file.
  static StatusOr<WeightStore> open(const std::string &path);

  const TensorView *find(const std::string &name) const;
  /// SafetensorsFile::release on the file that holds `v`.
  void release(const TensorView &v) const;
  /// In file order (single file) or weight_map order (sharded).
  const std::vector<std::string> &names() const { return names_; }

private:
  Status add_file(std::unique_ptr<SafetensorsFile> file);

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView *> by_name_;
  std::vector<std::string> names_;
};

/// Converts F32/F16/BF16/F64 elements to float; `out` holds numel() floats.
Status to_f32(const TensorView &tensor, float *out);

/// IEEE binary16 and bfloat16 bit patterns to float (exact: every value is representable).
float f16_bits_to_f32(uint16_t bits);
float bf16_bits_to_f32(uint16_t bits);

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void *data = nullptr;  // numel * dtype_size bytes
};

/// Writes tensors in the given order, metadata first, header padded with spaces to a
/// multiple of 8 bytes as the reference writer does. Atomic: writes `path.tmp.<pid>`,
/// fsyncs, then renames over `path`.
Status write_safetensors(const std::string &path, const std::vector<TensorToWrite> &tensors,
                         const std::map<std::string, std::string> &metadata = {});

} // namespace parallora
