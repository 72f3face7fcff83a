//===- comm_impl.h - helpers shared by the communicators (private) ---------===//
#pragma once

#include <list>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/comm/deadline.h"
#include "runtime/plan/plan.h"

namespace parallora::rt::comm_detail {

/// Axis bits of a group: dp = 1, tp = 2, pp = 4.
enum : unsigned { kDp = 1u, kTp = 2u, kPp = 4u };

/// Parses "dp,tp" (axes among dp, tp, pp; spaces ignored; "" = no axis) into axis bits. An
/// unknown or repeated axis is an error naming it.
StatusOr<unsigned> parse_group(const std::string &group);

/// "dp,tp" for the bits (dp,tp,pp order); "" for none.
std::string group_name(unsigned axes);

/// Product of the sizes of the axes in `axes`.
int group_size(const plan::Mesh &mesh, unsigned axes);

/// World ranks sharing `rank`'s coordinates on every axis not in `axes`, ascending.
std::vector<int> group_members(const plan::Mesh &mesh, int rank, unsigned axes);

/// "0,1,2" (at most 16 listed, then "...").
std::string rank_list(const std::vector<int> &ranks);

/// "%g" of a duration in seconds.
std::string seconds_str(double s);

/// "send to rank <peer> (tag <tag>) of <bytes> bytes": how the communicators name a send.
std::string send_desc(int peer, int tag, int64_t bytes);

// The outstanding sends of the MPI and NCCL communicators (`Pending` has peer, tag and bytes;
// what completes it, MPI requests or a CUDA event, is the communicator's): `reap` tests every
// pending send once, drops the completed ones and keeps the first failure in *send_error.

/// flush(): reaps until no send is left (ok), a send failed (its error, then cleared), or
/// timeout_seconds pass: then *timed_out is set and the error names the oldest send and how many
/// are outstanding.
template <class Pending, class Reap>
Status flush_sends(const std::string &prefix, double timeout_seconds, const std::list<Pending> &pending,
                   Status *send_error, Reap &&reap, bool *timed_out) {
  *timed_out = false;
  const Clock::time_point deadline = deadline_after(timeout_seconds);
  for (int64_t iter = 0;; ++iter) {
    reap();
    if (!send_error->is_ok()) {
      Status s = *send_error;
      *send_error = Status::ok();
      return s;
    }
    if (pending.empty()) return Status::ok();
    if (Clock::now() >= deadline) {
      const Pending &ps = pending.front();
      *timed_out = true;
      return Status::error(prefix + "flush: " + send_desc(ps.peer, ps.tag, ps.bytes) + " did not complete within " +
                           seconds_str(timeout_seconds) + " s (" + std::to_string(pending.size()) +
                           " send(s) outstanding; a peer died or never receives)");
    }
    backoff(iter);
  }
}

/// The destructors' bounded wait: reaps until no send is left or `deadline` passes.
template <class Pending, class Reap>
void drain_sends(const std::list<Pending> &pending, Reap &&reap, Clock::time_point deadline) {
  for (int64_t iter = 0; !pending.empty() && Clock::now() < deadline; ++iter) {
    reap();
    if (!pending.empty()) backoff(iter);
  }
}

} // namespace parallora::rt::comm_detail
