//===- metrics_log.h - the session's metrics.jsonl ------------------------===//
//
// One JSON object per line (runtime/io/metrics.h's JsonlWriter), written by rank 0: a line per
// optimizer step and a {step, val_loss} line per validation. A resumed run first drops the
// lines of steps after the checkpoint (they will be trained again), then appends.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/base/status.h"
#include "runtime/io/metrics.h"

namespace parallora::rt {

/// Keeps the lines of an existing metrics file up to (and including) `step`.
void truncate_metrics(const std::string &path, int64_t step);

class MetricsLog {
public:
  /// Opens `<out_dir>/metrics.jsonl` on rank 0 (`writer`); other ranks write nothing.
  /// `resumed_at` >= 0: truncate to that step and append; < 0: start a new file.
  static StatusOr<MetricsLog> open(const std::string &out_dir, bool writer, int64_t resumed_at, int world_size);
  /// Adds "world_size" for plans of several ranks.
  Status write(nlohmann::json record);
  const std::string &path() const { return path_; }

private:
  std::optional<JsonlWriter> w_;
  std::string path_;
  int world_size_ = 1;
};

} // namespace parallora::rt
