//===- stop_signals.h - SIGINT / SIGTERM as a request to stop cleanly -------===//
//
// The first SIGINT or SIGTERM (Ctrl-C; mpirun forwards both to every rank) asks the session to
// finish the current step, save a checkpoint and the adapter, print how to resume and exit
// 128 + signal; the ranks agree on the step through the per-step control all-reduce. A second
// signal exits at once (the default action, re-raised).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <csignal>
#include <signal.h>

namespace parallora::rt {

/// Installs the handlers for its lifetime (after MPI_Init, so they are ours).
class StopSignals {
public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals &) = delete;
  /// The signal received (SIGINT, SIGTERM), 0 when none.
  static int pending();
  /// The flag itself, for a watcher thread (peer_watch.h).
  static const volatile int *flag();
  /// "SIGINT", "SIGTERM", or "a stop signal".
  static const char *name(int sig);

private:
  struct sigaction old_int_ = {}, old_term_ = {};
};

} // namespace parallora::rt
