//===- output_dir.h - one run per output directory ------------------------===//
//
// A session's --out is claimed before anything is written to it:
//   * created with its parents (mkdir -p);
//   * locked: an advisory flock on <out>/.lock, which holds the owner's pid. The kernel drops
//     the lock when the process dies, so a killed run never leaves the directory locked; a
//     second run into a locked directory is refused, naming the owner's pid;
//   * a directory that already holds a run's outputs (metrics.jsonl, summary.json, adapter/,
//     latest, checkpoint-N/) is refused unless the session resumes (--resume) or the user
//     asked to --overwrite (then those outputs are removed first);
//   * leftovers of killed saves (checkpoint-N.tmp-PID/, latest.tmp-PID, ...) are removed: no
//     live run can own them once the lock is held.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/comm/comm.h"

namespace parallora::rt {

class OutputDir {
public:
  /// Claims `dir` for this process. `resuming`: outputs of an earlier run are expected.
  /// `removed` (may be null) receives the names of the leftovers and old outputs removed.
  static StatusOr<OutputDir> claim(const std::string &dir, bool resuming, bool overwrite,
                                   std::vector<std::string> *removed = nullptr);
  OutputDir(OutputDir &&other) noexcept;
  OutputDir &operator=(OutputDir &&other) noexcept;
  OutputDir(const OutputDir &) = delete;
  ~OutputDir();  // releases the lock

  const std::string &path() const { return dir_; }

private:
  OutputDir() = default;
  std::string dir_;
  int lock_fd_ = -1;
};

/// Every rank resumes from the checkpoints rank 0 writes into --out, so --out must be the same
/// directory on every host: rank 0 leaves a token file there and
/// every rank must read it back (collective). The error names the ranks that cannot.
Status check_out_shared(Communicator &comm, const std::string &out);

/// True for the names of a run's outputs in its --out (metrics.jsonl, checkpoint-3, ...).
bool is_run_output(const std::string &name);
/// True for an interrupted save's leftover ("checkpoint-3.tmp-1234", "latest.tmp-99").
bool is_save_leftover(const std::string &name);

} // namespace parallora::rt
