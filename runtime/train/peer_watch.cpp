//===- peer_watch.cpp - say which rank was lost ----------------------------===//
#include "runtime/train/peer_watch.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <functional>
#include <string>
#include <unistd.h>

#include "runtime/train/world.h"

namespace parallora::rt {

StatusOr<std::unique_ptr<PeerWatch>> PeerWatch::start(Communicator &comm, const volatile int *stop_flag) {
  std::unique_ptr<PeerWatch> w(new PeerWatch());
  w->rank_ = comm.rank();
  w->stop_flag_ = stop_flag;
  const int n = comm.world_size();
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  // Doubles carry both exactly: pids < 2^22 on Linux, the host hash cut to 48 bits.
  const double mine[2] = {static_cast<double>(::getpid()),
                          static_cast<double>(std::hash<std::string>{}(host) & ((1ull << 48) - 1))};
  std::vector<double> all(2 * static_cast<size_t>(n));
  if (Status s = control_gather(comm, mine, 2, comm.rank() == 0 ? all.data() : nullptr); !s) return s;
  if (Status s = control_broadcast(comm, all.data(), static_cast<int64_t>(all.size() * sizeof(double))); !s) return s;
  for (int r = 0; r < n; ++r) {
    w->pids_.push_back(static_cast<long long>(all[2 * r]));
    w->hosts_.push_back(static_cast<long long>(all[2 * r + 1]));
  }
  w->thread_ = std::thread([p = w.get()] { p->run(); });
  return w;
}

PeerWatch::~PeerWatch() {
  quit_.store(true);
  if (thread_.joinable()) thread_.join();
}

std::vector<int> PeerWatch::gone_local_peers() const {
  std::vector<int> gone;
  for (int r = 0; r < static_cast<int>(pids_.size()); ++r) {
    if (r == rank_ || hosts_[r] != hosts_[rank_]) continue;
    if (::kill(static_cast<pid_t>(pids_[r]), 0) != 0 && errno == ESRCH) gone.push_back(r);
  }
  return gone;
}

void PeerWatch::run() {
  using namespace std::chrono_literals;
  while (!quit_.load()) {
    std::this_thread::sleep_for(20ms);
    if (*stop_flag_ == 0) continue;
    // A stop was requested. On the ordinary path every rank finishes its step and agrees to stop
    // (quiet()); a launcher ending the job after a peer died does not wait for that.
    const int64_t step = step_.load();
    for (int i = 0; i < 10 && !quit_.load() && !quiet_.load(); ++i) std::this_thread::sleep_for(10ms);
    if (quit_.load() || quiet_.load()) return;
    std::vector<int> gone = gone_local_peers();
    if (gone.empty()) continue;  // nothing known from this host yet: look again
    std::string line = "rank " + std::to_string(rank_) + ": ";
    for (size_t i = 0; i < gone.size(); ++i)
      line += (i ? ", " : "") + std::string("rank ") + std::to_string(gone[i]) + " (pid " + std::to_string(pids_[gone[i]]) +
              " on this host)";
    line += gone.size() == 1 ? " is gone" : " are gone";
    line += "; this rank was in step " + std::to_string(step) + " and is being ended by the launcher";
    line += "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    return;
  }
}

} // namespace parallora::rt
