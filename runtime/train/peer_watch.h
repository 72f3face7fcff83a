//===- peer_watch.h - say which rank was lost when the launcher ends the job ===//
//
// When a rank dies (kill -9, OOM killer, a crash), mpirun sends SIGTERM to the others and
// SIGKILLs them a moment later; before this the only message was mpirun's. The watch gives each
// surviving rank its own line: it knows every rank's pid and host (exchanged at start); when a
// stop signal arrives and the step in progress does not finish within a short grace period, it
// looks for the peers on this host that are gone and prints, e.g.
//   rank 0: rank 1 (pid 4242 on this host) is gone; this rank was in step 152
// Peers on other hosts cannot be checked from here; then the line says the step and that the
// launcher ended the job.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/comm/comm.h"

namespace parallora::rt {

class PeerWatch {
public:
  /// Exchanges pids and host ids over the world (collective). `stop_flag` is the session's
  /// signal flag (non-zero once SIGINT/SIGTERM arrived).
  static StatusOr<std::unique_ptr<PeerWatch>> start(Communicator &comm, const volatile int *stop_flag);
  ~PeerWatch();

  /// The step this rank is in (the watch reports it).
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  /// Every rank agreed to stop (or training is over): peers that exit from now on are not lost.
  void quiet() { quiet_.store(true); }

  /// Peers of this host that no longer exist (for tests): world ranks.
  std::vector<int> gone_local_peers() const;

private:
  PeerWatch() = default;
  void run();

  int rank_ = 0;
  std::vector<long long> pids_;
  std::vector<long long> hosts_;  // a hash of each rank's host name
  const volatile int *stop_flag_ = nullptr;
  std::atomic<int64_t> step_{0};
  std::atomic<bool> quit_{false};
  std::atomic<bool> quiet_{false};
  std::thread thread_;
};

} // namespace parallora::rt
