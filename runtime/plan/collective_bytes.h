//===- collective_bytes.h - the byte-counting convention of collectives ----===//
//
// What one collective call "sends", as both the compiler's prediction (plan::RankPlan::
// bytes_sent, passes/lower) and the runtime's measurement (rt::Communicator::bytes_sent)
// count it. It lives in the plan layer so that the compiler needs nothing of the runtime.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>

namespace parallora::rt {

/// A ring all-reduce of `bytes` over `group_ranks` ranks: each rank sends 2 (n-1)/n of the
/// buffer (reduce-scatter + all-gather); a group of one sends nothing.
inline int64_t all_reduce_bytes_sent(int64_t bytes, int group_ranks) {
  return group_ranks <= 1 ? 0 : 2 * (group_ranks - 1) * bytes / group_ranks;
}

} // namespace parallora::rt
