//===- backend.cu - the CUDA backend: device, stream, memory, registry -----===//
//
// Device choice: the first call of available() / stream() / memory().alloc picks the device
// once per process: (local rank % device count), the local rank read from
// OMPI_COMM_WORLD_LOCAL_RANK (else MPI_LOCALRANKID, SLURM_LOCALID, else 0), so the ranks of a
// multi-rank plan on one node spread over its GPUs, and share them round-robin when there are
// more ranks than GPUs (the host-staged collectives allow that). The executor and the kernels
// run on the thread that made that first call (cudaSetDevice is per thread).
//
// Collectives: all_reduce / send / recv are the host kernels of runtime/comm wrapped so that
// they (1) wait for the stream (their inputs are kernel outputs), (2) work on host staging
// copies, never on the managed buffers themselves (MPI is not CUDA-aware here; a staged copy
// keeps page migration out of MPI's progress engine), and (3) copy the results back.
// all_reduce, send and recv move f32 or bf16 tensors (bytes = nbytes(); a bf16 all_reduce is
// reduced as bf16 by the Communicator), broadcast f32 only (it carries trainables).
//
// Memory: memory().alloc hands out managed memory advised to live on the device
// (cudaMemAdviseSetPreferredLocation) and prefetched there, so the arena and the persistent
// buffers stay in device memory in steady state while host code can still touch them (a host
// access migrates the touched pages; the next kernel that uses them brings them back).
// Allocations under 1 MiB count as host-written (inputs, test operands): they stay where the host
// puts them and are advised cudaMemAdviseSetAccessedBy(device) (mapped for the device, read
// without migrating them back and forth). See backend.h for the executor hook a real
// asynchronous input copy needs.
//
// CUDA graphs: memory().run_program (graph.cu) with one graph cache per memory() call.
// memory().sync does nothing while this thread captures a program (the executor's end-of-run
// wait would break the capture; nothing captured has executed).
//
// NCCL (nccl_comm.h) replaces the collectives with device-side versions when lora-run uses
// --collectives nccl.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/graph.cuh"
#include "runtime/cuda/kernels_impl.h"
#include "runtime/kernel_list.h"

namespace parallora::rt::cuda {

namespace {

__global__ void probe_kernel(int *p) {
  if (p) *p = 1;
}

struct DeviceState {
  bool ok = false;
  std::string why;
  int device = -1;
  int count = 0;
};

int local_rank() {
  for (const char *name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char *v = std::getenv(name)) return std::max(0, std::atoi(v));
  return 0;
}

std::string err_text(cudaError_t e, const char *what) {
  return std::string(what) + ": " + cudaGetErrorString(e) + " (error " + std::to_string(int(e)) + ")";
}

// Probes the runtime once; never throws, never aborts. Any error counts as "no GPU" (without a
// driver cudaGetDeviceCount returns cudaErrorInsufficientDriver, 35).
const DeviceState &device_state() {
  static const DeviceState state = [] {
    DeviceState s;
    cudaError_t e = cudaGetDeviceCount(&s.count);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error
      s.why = err_text(e, "cudaGetDeviceCount");
      return s;
    }
    if (s.count <= 0) {
      s.why = "no CUDA device found";
      return s;
    }
    s.device = local_rank() % s.count;
    cudaDeviceProp prop{};
    if ((e = cudaGetDeviceProperties(&prop, s.device)) != cudaSuccess) {
      s.why = err_text(e, "cudaGetDeviceProperties");
      return s;
    }
    if (prop.major < 8) {
      s.why = "device " + std::to_string(s.device) + " (" + prop.name + ") has compute capability " +
              std::to_string(prop.major) + "." + std::to_string(prop.minor) +
              "; this build targets 8.0 and newer (CMAKE_CUDA_ARCHITECTURES 80;90a)";
      return s;
    }
    if ((e = cudaSetDevice(s.device)) != cudaSuccess) {
      s.why = err_text(e, "cudaSetDevice");
      return s;
    }
    // Does this binary hold code the device can run (SASS for it, or PTX it can JIT)?
    cudaFuncAttributes attr{};
    if ((e = cudaFuncGetAttributes(&attr, probe_kernel)) != cudaSuccess) {
      cudaGetLastError();
      s.why = err_text(e, "no kernel image for this device");
      return s;
    }
    s.ok = true;
    return s;
  }();
  return state;
}

/// Host staging for the wrapped collectives (one per thread: tests may drive ranks from threads).
std::vector<char> &staging(size_t i) {
  thread_local std::vector<std::vector<char>> bufs;
  if (bufs.size() <= i) bufs.resize(i + 1);
  return bufs[i];
}

// all_reduce on host copies: x_i -> staging_i, reduce in place, staging_i -> y_i.
// Zeroes every output on the stream (ZeRO-1: the gradients this rank does not update).
Status fill_zero(KernelCall &c) {
  if (!c.in.empty()) return Status::error("fill_zero: expected no inputs, got " + std::to_string(c.in.size()));
  for (size_t i = 0; i < c.out.size(); ++i) {
    const Tensor &y = c.out[i];
    if (!y.present() || y.dtype != plan::ElemType::F32)
      return Status::error("fill_zero: y_" + std::to_string(i) + " must be a present f32 tensor");
    if (Status s = cuda_status(cudaMemsetAsync(y.data, 0, size_t(y.numel()) * sizeof(float), stream()), "fill_zero");
        !s)
      return s;
  }
  return Status::ok();
}

// all_reduce (f32 or bf16: one type for the whole list, as the host kernel requires) and
// broadcast (f32 only) on host copies: x_i -> staging_i, the host kernel in place on the copies,
// staging_i -> y_i. Anything else goes to the host kernel as is, which reports the error.
Status staged_all_reduce(const KernelFn &host, KernelCall &c, bool allow_bf16) {
  if (Status s = sync_stream(); !s) return s;
  bool stageable = c.in.size() == c.out.size();
  const plan::ElemType dtype = c.in.empty() ? plan::ElemType::F32 : c.in[0].dtype;
  stageable = stageable && (dtype == plan::ElemType::F32 || (allow_bf16 && dtype == plan::ElemType::BF16));
  for (size_t i = 0; stageable && i < c.in.size(); ++i)
    stageable = c.in[i].present() && c.out[i].present() && c.in[i].dtype == dtype && c.out[i].dtype == dtype &&
                c.in[i].numel() == c.out[i].numel();
  if (!stageable) return host(c);  // the host kernel reports the operand error
  KernelCall h = c;
  for (size_t i = 0; i < c.in.size(); ++i) {
    std::vector<char> &buf = staging(i);
    buf.resize(size_t(c.in[i].nbytes()));
    if (!buf.empty()) std::memcpy(buf.data(), c.in[i].data, buf.size());
    h.in[i].data = buf.data();
    h.out[i].data = buf.data();  // in place (allowed by the contract)
  }
  if (Status s = host(h); !s) return s;
  for (size_t i = 0; i < c.out.size(); ++i) {
    const std::vector<char> &buf = staging(i);
    if (!buf.empty()) std::memcpy(c.out[i].data, buf.data(), buf.size());
  }
  return Status::ok();
}

// send / recv: the bytes of any element type (nbytes()).
Status staged_send(const KernelFn &host, KernelCall &c) {
  if (Status s = sync_stream(); !s) return s;
  if (c.in.size() != 1 || !c.in[0].present()) return host(c);
  std::vector<char> &buf = staging(0);
  buf.resize(size_t(c.in[0].nbytes()));
  if (!buf.empty()) std::memcpy(buf.data(), c.in[0].data, buf.size());
  KernelCall h = c;
  h.in[0].data = buf.data();
  return host(h);
}

Status staged_recv(const KernelFn &host, KernelCall &c) {
  if (Status s = sync_stream(); !s) return s;  // y may still be read by a queued kernel
  if (c.out.size() != 1 || !c.out[0].present()) return host(c);
  std::vector<char> &buf = staging(0);
  buf.resize(size_t(c.out[0].nbytes()));
  KernelCall h = c;
  h.out[0].data = buf.data();
  if (Status s = host(h); !s) return s;
  if (!buf.empty()) std::memcpy(c.out[0].data, buf.data(), buf.size());
  return Status::ok();
}

} // namespace

bool available(std::string *why) {
  const DeviceState &s = device_state();
  if (!s.ok && why) *why = s.why;
  return s.ok;
}

std::string device_description() {
  const DeviceState &s = device_state();
  if (!s.ok) return "no usable CUDA GPU (" + s.why + ")";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, s.device) != cudaSuccess) return "CUDA device " + std::to_string(s.device);
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d), %d SMs, %.1f GiB, CUDA %d.%d (driver %d.%d)%s", prop.name,
                prop.major, prop.minor, prop.multiProcessorCount,
                double(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0), rt / 1000, (rt % 1000) / 10,
                drv / 1000, (drv % 1000) / 10,
                s.count > 1 ? (", device " + std::to_string(s.device) + " of " + std::to_string(s.count)).c_str()
                            : "");
  return buf;
}

cudaStream_t stream() {
  static cudaStream_t st = [] {
    cudaStream_t x = nullptr;
    if (device_state().ok && cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking) != cudaSuccess) x = nullptr;
    return x;  // nullptr: the legacy default stream (only reached without a usable device)
  }();
  return st;
}

namespace {
// Bytes handed out by memory().alloc and not yet freed (device_memory()).
struct AllocTracker {
  std::mutex mu;
  std::unordered_map<void *, size_t> sizes;
  int64_t current = 0;
  int64_t peak = 0;
};
AllocTracker &alloc_tracker() {
  static AllocTracker t;
  return t;
}
} // namespace

namespace {
// Managed allocations of at least this size are advised to the device and prefetched there
// (the arena and the persistent block; tiny allocations are not worth a prefetch).
constexpr size_t kPrefetchMinBytes = size_t(1) << 20;

// Best effort (a hint: failures are cleared and ignored). Needs concurrent managed access
// (every Linux GPU of sm_80+ with a recent driver); without it, managed memory is migrated on
// kernel launch anyway.
void place_on_device(void *p, size_t bytes) {
  static const bool concurrent = [] {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrConcurrentManagedAccess, device_state().device) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return v != 0;
  }();
  if (!concurrent) return;
  cudaMemLocation loc{};
  loc.type = cudaMemLocationTypeDevice;
  loc.id = device_state().device;
  if (bytes < kPrefetchMinBytes) {
    // Host-written (inputs, operands): map them for the device, leave them where they are.
    if (cudaMemAdvise(p, bytes, cudaMemAdviseSetAccessedBy, loc) != cudaSuccess) cudaGetLastError();
    return;
  }
  bool ok = cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, loc) == cudaSuccess;
  // Prefetch on the backend's stream and wait: the caller (the executor) may write the block
  // from the host right after (parameter init), which must not race the migration.
  ok = ok && cudaMemPrefetchAsync(p, bytes, loc, 0, stream()) == cudaSuccess;
  ok = ok && cudaStreamSynchronize(stream()) == cudaSuccess;
  if (!ok) cudaGetLastError();
}
} // namespace

MemoryHooks memory() {
  MemoryHooks h;
  // This hooks instance's CUDA graphs (graph.cu): shared by the copies of the hooks (the
  // executor's and its caller's), released with the last one.
  std::shared_ptr<graph::Cache> graphs = graph::new_cache();
  h.alloc = [graphs](size_t bytes) -> void * {
    if (!device_state().ok) return nullptr;
    void *p = nullptr;
    const size_t n = bytes == 0 ? 1 : bytes;
    if (cudaMallocManaged(&p, n, cudaMemAttachGlobal) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    place_on_device(p, n);
    // Zeroed where it lives (MemoryHooks::zeroed): a host memset would pull the block back.
    if (cudaMemsetAsync(p, 0, n, stream()) != cudaSuccess || cudaStreamSynchronize(stream()) != cudaSuccess) {
      cudaGetLastError();
      cudaFree(p);
      return nullptr;
    }
    graph::note_alloc(*graphs, p);
    AllocTracker &t = alloc_tracker();
    std::lock_guard<std::mutex> lock(t.mu);
    t.sizes[p] = n;
    t.current += static_cast<int64_t>(n);
    t.peak = std::max(t.peak, t.current);
    return p;
  };
  h.zeroed = true;
  h.free = [graphs](void *p) {
    if (!p) return;
    graph::note_free(*graphs, p);  // drops the graphs that point into the executor's blocks
    {
      AllocTracker &t = alloc_tracker();
      std::lock_guard<std::mutex> lock(t.mu);
      auto it = t.sizes.find(p);
      if (it != t.sizes.end()) {
        t.current -= static_cast<int64_t>(it->second);
        t.sizes.erase(it);
      }
    }
    cudaFree(p);
  };
  h.sync = [] { return graph::capturing() ? Status::ok() : sync_stream(); };
  h.run_program = [graphs](const std::string &program, int slot, const std::function<Status()> &eager) {
    return graph::run_program(*graphs, program, slot, eager);
  };
  return h;
}

DeviceMemory device_memory() {
  DeviceMemory m;
  {
    AllocTracker &t = alloc_tracker();
    std::lock_guard<std::mutex> lock(t.mu);
    m.allocated_bytes = t.current;
    m.peak_allocated_bytes = t.peak;
  }
  if (!device_state().ok) return m;
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return m;
  }
  m.ok = true;
  m.total_bytes = static_cast<int64_t>(total_b);
  m.used_bytes = static_cast<int64_t>(total_b - free_b);
  return m;
}

std::string device_pci_bus_id() {
  const DeviceState &s = device_state();
  if (!s.ok) return "";
  char buf[64] = {0};
  if (cudaDeviceGetPCIBusId(buf, sizeof buf, s.device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return buf;
}

void register_kernels(KernelRegistry &registry) {
  // bf16 storage (runtime/cuda/bf16.cuh): every kernel below except adamw_step and fill_zero
  // takes f32 or bf16 operands natively (mixes it does not instantiate go through run_widened
  // inside the kernel). adamw_step and fill_zero work on the f32 master state only (trainables,
  // gradients, optimizer moments), as on the CPU backend; a kernel without a native bf16 path
  // would be registered as with_bf16_fallback(kernel).
#define PARALLORA_ADD(name) registry.add(#name, impl::name);
  PARALLORA_CONTRACT_KERNELS(PARALLORA_ADD)
#undef PARALLORA_ADD
  registry.add("fill_zero", fill_zero);

  // The collectives: the host kernels of runtime/comm, host-staged (see the file comment).
  KernelRegistry host;
  register_collective_kernels(host);
  if (const KernelFn *f = host.find("all_reduce"))
    registry.add("all_reduce", [fn = *f](KernelCall &c) { return staged_all_reduce(fn, c, true); });
  if (const KernelFn *f = host.find("broadcast"))  // same operand layout as all_reduce, f32 only
    registry.add("broadcast", [fn = *f](KernelCall &c) { return staged_all_reduce(fn, c, false); });
  // Overlapped gradient buckets: the host kernels pack from / unpack into managed memory once the
  // stream is idle (the communicator's staging is host memory). With NCCL the start completes the
  // reduction at once (Communicator's default); overlap on a second stream is future work.
  // Not capturable into a CUDA graph (StepState::last_micro and the communicator's host state
  // decide per call): refused at entry (graph.cu's audit).
  for (const char *name : {"all_reduce_start", "all_reduce_wait"})
    if (const KernelFn *f = host.find(name))
      registry.add(name, [fn = *f, name](KernelCall &c) -> Status {
        if (graph::capturing()) return graph::refuse_capture(std::string(name) + " (host-staged bucket)");
        if (Status s = sync_stream(); !s) return s;
        return fn(c);
      });
  if (const KernelFn *f = host.find("send"))
    registry.add("send", [fn = *f](KernelCall &c) { return staged_send(fn, c); });
  if (const KernelFn *f = host.find("recv"))
    registry.add("recv", [fn = *f](KernelCall &c) { return staged_recv(fn, c); });
}

} // namespace parallora::rt::cuda
