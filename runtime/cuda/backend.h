//===- backend.h - the CUDA backend, as the host code sees it --------------===//
//
// Plain C++ (no CUDA headers): lora-run and the tests include this. Built only when the CUDA
// toolkit is found (PARALLORA_HAVE_CUDA); it compiles everywhere and runs where a GPU exists.
//
// Memory: the executor's buffers come from memory() = CUDA managed memory (cudaMallocManaged),
// so host code (parameter init, feed, loss, adapter export) reads and writes the same pointers
// the kernels use; allocations of 1 MiB and more (the arena, the persistent block) are advised
// to prefer the device and prefetched there, so they live in device memory in steady state;
// smaller ones are host-written (inputs) and only mapped for the device (AccessedBy). Kernels run
// asynchronously on the backend's stream and memory().sync waits for them (the executor calls it
// at the end of every program); memory().run_program replays programs as CUDA graphs (graph.cu). Collectives (all_reduce, send,
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

/// Allocation, synchronization and whole-program hooks for Executor::create. Call it once per
/// Executor: the hooks carry that executor's CUDA graphs.
///   alloc / free / sync: managed memory (file comment) and a wait for stream().
///   run_program: CUDA graph capture and replay (runtime/cuda/graph.cu; lora-run keeps it only
///     with --cuda-graphs): the first run of a (program, slot) is eager (warm-up), the second is
///     captured into a graph and launched, later runs replay it. A program with a kernel that
///     needs host work per call (adamw_step, overlapped gradient buckets, vocabulary-parallel
///     cross entropy: the audit in graph.cu) is not capturable and keeps running eagerly; a
///     capture problem never fails a run. Replays are bit-identical to eager runs.
///
/// Small allocations (< 1 MiB) are treated as host-written (inputs, tests' operands): they are
/// advised cudaMemAdviseSetAccessedBy(device), so the device maps them and reads them without
/// migrating the pages back and forth; large ones are advised to live on the device.
///
/// NOT DONE (small gain: a 1B micro-batch's ids and labels are 2 x 16 KiB): a true next-batch
/// copy overlap needs an executor hook, which these
/// hooks cannot provide: the executor keeps every Input buffer inside its one persistent block
/// (>= 1 MiB, preferred on the device), and feed() writes it from the host with std::memcpy, so
/// each step's first kernel faults the input pages back to the device. Proposed hook:
///   MemoryHooks::feed_async: std::function<Status(void *dst, const void *src, size_t bytes)>
///   Executor::feed calls it (when set) instead of memcpy, with src = the caller's host data
///   (lora-run's next batch, kept alive until the next run() returns). The CUDA backend copies
///   src into a pinned host ring buffer (one slot per executor slot) and issues
///   cudaMemcpyAsync(dst, pinned, bytes, cudaMemcpyHostToDevice, copy_stream) on a second stream
///   with an event; run() (or run_program, before capture/launch) makes stream() wait for the
///   event (cudaStreamWaitEvent). Gains: the input arrives by one DMA copy instead of page faults
///   inside the first kernel; and once run() of a micro_step no longer waits at its end (only
///   where the host needs results: loss, optimizer_step), lora-run feeds batch k+1 while batch
///   k's kernels run. That needs a second copy of every Input (double buffering per slot), since
///   the Input buffer of the running micro-batch must not be overwritten, and a graph replay must
///   then read the copy of its own run (e.g. alternate two graphs per slot, or copy into the one
///   the graph reads on stream() after the previous run). Int-to-float conversion of f32 inputs
///   would move to the device (a small kernel after the copy).
MemoryHooks memory();

/// What run_program did so far in this process (all hooks instances, all threads).
struct GraphCounters {
  int64_t warmups = 0;     // first runs of a (program, slot): eager
  int64_t captures = 0;    // graphs captured and instantiated
  int64_t replays = 0;     // graph launches (the capturing run's own launch included)
  int64_t fallbacks = 0;   // captures abandoned: that (program, slot) runs eagerly from then on
  int64_t eager_runs = 0;  // runs that called eager() for real (warm-ups and fallbacks included)
  std::string last_fallback;  // "program 'optimizer_step' slot 0: instruction #0 adamw_step ..."
};
GraphCounters graph_counters();

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
