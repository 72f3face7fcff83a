//===- backend.h - the CUDA backend, as the host code sees it --------------===//
//
// Plain C++ (no CUDA headers): lora-run and the tests include this. Built only when the CUDA
// toolkit is found (PARALLORA_HAVE_CUDA); it compiles everywhere and runs where a GPU exists.
//
// Memory: the executor's buffers come from memory() = CUDA managed memory (cudaMallocManaged),
// so host code (parameter init, feed, loss, adapter export) reads and writes the same pointers
// the kernels use; allocations of 1 MiB and more (the arena, the persistent block) are advised
// to prefer the device and prefetched there, so they live in device memory in steady state; kernels run asynchronously on the backend's stream and memory().sync waits
// for them (the executor calls it at the end of every program). Collectives (all_reduce, send,
// recv, and the vocabulary-parallel / clipping reductions) synchronize the stream and then go
// through the rank's Communicator on host-visible memory: the host-staged MPI path, which also
// lets several ranks share one GPU (NCCL refuses that).
//
// Kernels: every name of runtime/cpu/kernels.h with the same operands, attributes and
// semantics, f32 math on f32 or bf16 storage (--precision bf16: runtime/cuda/bf16.cuh; the CPU
// kernels are their twins; tests/unit/test_cuda_kernels.cpp compares each pair on seeded
// inputs). GEMMs use cuBLASLt (bf16 x bf16 natively, f32 compute).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>

#include "runtime/core/executor.h"
#include "runtime/kernel.h"

namespace parallora::rt::cuda {

/// True when a CUDA device can be used; else `why` (if given) says why. Never throws or
/// aborts: without a driver cudaGetDeviceCount fails (error 35), which counts as "no GPU".
bool available(std::string *why = nullptr);

/// A one-line description of device 0 ("NVIDIA H100 80GB HBM3, 132 SMs, 79.1 GiB, CUDA 13.0").
std::string device_description();

/// Registers every kernel of the contract for this backend.
void register_kernels(KernelRegistry &registry);

/// Allocation and synchronization hooks for Executor::create.
MemoryHooks memory();

/// Device memory of this process's device. used/total: cudaMemGetInfo (total - free; the whole
/// device, so other processes sharing the GPU count too). allocated/peak_allocated: the managed
/// bytes this process's memory().alloc handed out and not yet freed, and their maximum.
/// ok = false (with zeros for used/total) without a usable device or when cudaMemGetInfo fails.
struct DeviceMemory {
  bool ok = false;
  int64_t used_bytes = 0;
  int64_t total_bytes = 0;
  int64_t allocated_bytes = 0;
  int64_t peak_allocated_bytes = 0;
};
DeviceMemory device_memory();

/// PCI bus id of this process's device ("0000:3b:00.0"; what NVML's
/// nvmlDeviceGetHandleByPciBusId_v2 takes), "" without a usable device.
std::string device_pci_bus_id();

} // namespace parallora::rt::cuda
