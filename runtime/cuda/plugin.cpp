//===- plugin.cpp - the entry point of libparallora_cuda_backend.so ----------===//
#include "runtime/cuda/plugin.h"

#include "runtime/cuda/backend.h"
#include "runtime/cuda/device_timer.h"
#if defined(PARALLORA_HAVE_NCCL)
#include "runtime/cuda/nccl_comm.h"
#endif

namespace parallora::rt::cuda {
namespace {

DeviceMemoryInfo memory_info() {
  DeviceMemory m = device_memory();
  return DeviceMemoryInfo{m.ok, m.used_bytes, m.total_bytes, m.allocated_bytes, m.peak_allocated_bytes};
}

#if defined(PARALLORA_HAVE_NCCL)
StatusOr<std::unique_ptr<Communicator>> nccl(const plan::Mesh &mesh, double timeout) {
  return make_nccl_communicator(mesh, timeout);
}
#endif

} // namespace
} // namespace parallora::rt::cuda

extern "C" __attribute__((visibility("default"))) const parallora::rt::cuda::BackendApi *parallora_cuda_backend_api() {
  using namespace parallora::rt::cuda;
  static const BackendApi api = [] {
    BackendApi a;
    a.available = [](std::string *why) { return available(why); };
    a.device_description = device_description;
    a.device_pci_bus_id = device_pci_bus_id;
    a.register_kernels = register_kernels;
    a.memory = memory;
    a.device_memory = memory_info;
    a.make_device_timer = make_device_timer;
#if defined(PARALLORA_HAVE_NCCL)
    a.has_nccl = true;
    a.make_nccl_communicator = nccl;
    a.register_nccl_collective_kernels = register_nccl_collective_kernels;
#else
    a.has_nccl = false;
    a.make_nccl_communicator = nullptr;
    a.register_nccl_collective_kernels = nullptr;
#endif
    return a;
  }();
  return &api;
}
