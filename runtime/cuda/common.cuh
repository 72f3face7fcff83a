//===- common.cuh - shared helpers of the CUDA kernels ---------------------===//
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "runtime/base/status.h"
#include "runtime/cuda/graph.cuh"
#include "runtime/kernel.h"

namespace parallora::rt::cuda {

/// The stream every kernel of this process launches on (created on first use).
cudaStream_t stream();

/// Status from a CUDA error ("<what>: <cudaGetErrorString>").
inline Status cuda_status(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return Status::ok();
  return Status::error(std::string(what) + ": " + cudaGetErrorString(e));
}
/// Checks the last launch (cudaGetLastError) after a <<<...>>> call.
inline Status check_launch(const char *kernel) { return cuda_status(cudaGetLastError(), kernel); }

/// Waits for the stream (before host code or a host-staged collective reads kernel output).
/// While a program is being captured into a CUDA graph (graph.cuh) a wait means the kernel needs
/// host work per call: the capture is refused (the program runs eagerly) and the error returned.
inline Status sync_stream() {
  if (graph::capturing()) return graph::refuse_capture("the kernel waits for the stream (host work per call)");
  return cuda_status(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

inline int blocks_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 65535 * 16 ? b : 65535 * 16);
}

} // namespace parallora::rt::cuda
