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
// Not covered yet (TODO): the communication stream of the NCCL communicator (all_reduce_start's
// reduction runs there; the trace shows its host-side start .. wait span, not the device time
// of the ncclAllReduce).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>

#include "runtime/core/trace.h"

namespace parallora::rt::cuda {

std::unique_ptr<DeviceTimer> make_device_timer();

} // namespace parallora::rt::cuda
