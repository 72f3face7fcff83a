//===- device_timer.h - kernel times from CUDA events (lora-run --trace) ----===//
//
// The DeviceTimer (runtime/core/trace.h) of the CUDA backend: mark() records a cudaEvent on the
// compute stream (cuda::stream(), where every kernel launches); resolve() records one more
// reference event, waits for it, reads the host steady clock, and places every marker at
// (host time of the reference - cudaEventElapsedTime(marker, reference)). The error is the
// wake-up latency of cudaEventSynchronize (microseconds) plus the events' ~0.5 us resolution.
// Events are created on first use and reused by later runs. While a CUDA graph is being
// captured, mark() returns -1 (the kernels are then host-timed; replayed graphs have no
// per-kernel slices).
//
// Communication: the executor synchronizes around every blocking communication kernel, so its
// host times are its device times. The overlapped gradient buckets (all_reduce_start .. _wait)
// reduce on the NCCL communicator's own stream: with a DeviceTimer the executor switches on
// Communicator::set_device_timing, the communicator brackets each ncclAllReduce with two CUDA
// events and places them on the host clock the same way at the wait (nccl_comm.cu,
// place_on_host_clock); the trace shows them as async slices "bucket K on the device".
// Not verified on a GPU yet: scripts/gpu_check.sh trace.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>

#include "runtime/core/trace.h"

namespace parallora::rt::cuda {

std::unique_ptr<DeviceTimer> make_device_timer();

} // namespace parallora::rt::cuda
