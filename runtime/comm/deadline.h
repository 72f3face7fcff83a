//===- deadline.h - polling against a deadline (shared by the communicators) -===//
//
// Plain C++ (no MPI, no CUDA): the MPI communicator (mpi_comm.cpp, mpi_control.cpp) and the NCCL
// communicator (runtime/cuda/nccl_comm.cu) poll their non-blocking operations with these.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <chrono>
#include <cstdint>
#include <thread>

namespace parallora::rt::comm_detail {

using Clock = std::chrono::steady_clock;

/// Backoff between polls: yield first (low latency), then sleep longer and longer (an
/// oversubscribed machine gets its cores back).
inline void backoff(int64_t iter) {
  if (iter < 200)
    std::this_thread::yield();
  else if (iter < 2000)
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  else if (iter < 10000)
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  else
    std::this_thread::sleep_for(std::chrono::microseconds(500));
}

/// Now + `seconds`, clamped to [0, 1e9] s (NaN counts as 1e9: no overflow of the clock).
inline Clock::time_point deadline_after(double seconds) {
  if (!(seconds < 1e9)) seconds = 1e9;  // also NaN
  if (seconds < 0) seconds = 0;
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

} // namespace parallora::rt::comm_detail
