//===- metrics.h - JSONL metrics, progress bar, learning-rate schedules ---===//
//
// Learning-rate schedules match Hugging Face transformers (optimization.py). HF calls
// scheduler.step() after optimizer.step(), so optimizer step s (1-based) uses lambda(s - 1).
// With c = s - 1, W = warmup_steps, T = total_steps, r = min_lr_ratio:
//   warmup (all schedules), c < W:   factor = c / max(1, W)      (step 1 uses lr 0 when W > 0)
//   "constant" (constant_with_warmup), c >= W:  factor = 1
//   "cosine" (get_cosine_schedule_with_warmup, num_cycles = 0.5), c >= W:
//        p = (c - W) / max(1, T - W);  factor = max(0, 0.5 * (1 + cos(pi * p)))
//   "linear" (get_linear_schedule_with_warmup), c >= W:
//        factor = max(0, (T - c) / max(1, T - W))
//   cosine/linear after warmup are floored: lr = lr * max(r, factor). (This floor is ours, not
//   HF's; with r = 0 the values are exactly HF's. Warmup is not floored.)
// T = hp.total_steps when > 0, else the `total_steps` argument.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

/// One JSON object per line, flushed after every line (a crash loses at most the line being
/// written). Move-only.
class JsonlWriter {
public:
  static StatusOr<JsonlWriter> open(const std::string &path, bool append);
  Status write(const nlohmann::json &record);
  const std::string &path() const { return path_; }

  JsonlWriter(JsonlWriter &&) = default;
  JsonlWriter &operator=(JsonlWriter &&) = default;

private:
  JsonlWriter() = default;
  struct Closer {
    void operator()(std::FILE *f) const;
  };
  std::unique_ptr<std::FILE, Closer> file_;
  std::string path_;
};

/// Progress on stderr: one line rewritten in place ("\r") when stderr is a TTY, else a plain
/// line at step 1, every `print_every` steps and at the last step. Line:
///   [#####...............] step 25/100 | loss 2.3457 | lr 1.000e-04 | 1234 tok/s | 00:12 < 00:36
class ProgressBar {
public:
  ProgressBar(int64_t total_steps, int64_t print_every);
  void update(int64_t step, double loss, double tokens_per_s, double lr);
  /// Ends the in-place line with a newline (TTY); idempotent.
  void finish();
  /// Forces TTY / non-TTY behaviour (tests).
  void set_tty(bool tty) { tty_ = tty; }
  /// The text of the line update() would print (no "\r" / "\n").
  std::string format_line(int64_t step, double loss, double tokens_per_s, double lr) const;

private:
  int64_t total_;
  int64_t every_;
  bool tty_;
  bool open_line_ = false;
  std::chrono::steady_clock::time_point start_;
};

/// The learning rate for optimizer step `step` (1-based); see the formulas above. An unknown
/// schedule name behaves as "constant".
double lr_at_step(const plan::Hyperparams &hp, int64_t step, int64_t total_steps);

} // namespace parallora::rt
