//===- plugin.h - the CUDA backend as a run-time loaded module ---------------===//
//
// lora-run does not link CUDA: a CPU-only run never maps cudart / cuBLASLt / NCCL (hundreds of
// MiB of address space and RSS) and a lora-run binary starts on machines without the CUDA
// runtime. `--backend cuda` loads libparallora_cuda_backend.so (built from the same sources as
// parallora_cuda) and calls it through this table. The module resolves the runtime's own
// symbols (communicators, kernel attributes) from the executable, which exports them.
//
// Search order of load_cuda_backend: $PARALLORA_CUDA_BACKEND, the build's path, then
// libparallora_cuda_backend.so next to the executable.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>
#include <string>

#include "runtime/base/status.h"
#include "runtime/comm/comm.h"
#include "runtime/core/executor.h"
#include "runtime/kernel.h"
#include "runtime/plan/plan.h"

namespace parallora::rt::cuda {

struct DeviceMemoryInfo {
  bool ok = false;
  int64_t used_bytes = 0, total_bytes = 0, allocated_bytes = 0, peak_allocated_bytes = 0;
};

/// Bumped whenever the table changes; a module of another version is refused.
constexpr int kBackendApiVersion = 2;

struct BackendApi {
  int version = kBackendApiVersion;
  bool (*available)(std::string *why);
  std::string (*device_description)();
  std::string (*device_pci_bus_id)();
  void (*register_kernels)(KernelRegistry &registry);
  MemoryHooks (*memory)();
  DeviceMemoryInfo (*device_memory)();
  bool has_nccl;
  StatusOr<std::unique_ptr<Communicator>> (*make_nccl_communicator)(const plan::Mesh &mesh, double timeout_seconds);
  void (*register_nccl_collective_kernels)(KernelRegistry &registry);
  /// lora-run --trace: CUDA events on the compute stream (device_timer.h); Executor::set_trace.
  std::unique_ptr<DeviceTimer> (*make_device_timer)();
};

/// Loads the module (once) and returns its table, or nullptr with `why` (module not found or
/// not loadable, with dlerror's text, or of another version).
const BackendApi *load_cuda_backend(std::string *why);

} // namespace parallora::rt::cuda

/// The module's only exported entry point.
extern "C" const parallora::rt::cuda::BackendApi *parallora_cuda_backend_api();
