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
// NEXT STEP: NCCL (ncclAllReduce / ncclSend / ncclRecv on stream(), one communicator per group
// built from the plan's mesh) to keep gradients on the device; it needs one GPU per rank.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/kernels_impl.h"

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
std::vector<float> &staging(size_t i) {
  thread_local std::vector<std::vector<float>> bufs;
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

Status staged_all_reduce(const KernelFn &host, KernelCall &c) {
  if (Status s = sync_stream(); !s) return s;
  bool stageable = c.in.size() == c.out.size();
  for (size_t i = 0; stageable && i < c.in.size(); ++i)
    stageable = c.in[i].present() && c.out[i].present() && c.in[i].dtype == plan::ElemType::F32 &&
                c.out[i].dtype == plan::ElemType::F32 && c.in[i].numel() == c.out[i].numel();
  if (!stageable) return host(c);  // the host kernel reports the operand error
  KernelCall h = c;
  for (size_t i = 0; i < c.in.size(); ++i) {
    std::vector<float> &buf = staging(i);
    buf.resize(size_t(c.in[i].numel()));
    if (!buf.empty()) std::memcpy(buf.data(), c.in[i].data, buf.size() * sizeof(float));
    h.in[i].data = buf.data();
    h.out[i].data = buf.data();  // in place (allowed by the contract)
  }
  if (Status s = host(h); !s) return s;
  for (size_t i = 0; i < c.out.size(); ++i) {
    const std::vector<float> &buf = staging(i);
    if (!buf.empty()) std::memcpy(c.out[i].data, buf.data(), buf.size() * sizeof(float));
  }
  return Status::ok();
}

Status staged_send(const KernelFn &host, KernelCall &c) {
  if (Status s = sync_stream(); !s) return s;
  if (c.in.size() != 1 || !c.in[0].present()) return host(c);
  std::vector<float> &buf = staging(0);
  buf.resize(size_t(c.in[0].numel()));
  if (!buf.empty()) std::memcpy(buf.data(), c.in[0].data, buf.size() * 4);
  KernelCall h = c;
  h.in[0].data = buf.data();
  return host(h);
}

Status staged_recv(const KernelFn &host, KernelCall &c) {
  if (Status s = sync_stream(); !s) return s;  // y may still be read by a queued kernel
  if (c.out.size() != 1 || !c.out[0].present()) return host(c);
  std::vector<float> &buf = staging(0);
  buf.resize(size_t(c.out[0].numel()));
  KernelCall h = c;
  h.out[0].data = buf.data();
  if (Status s = host(h); !s) return s;
  if (!buf.empty()) std::memcpy(c.out[0].data, buf.data(), buf.size() * 4);
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

MemoryHooks memory() {
  MemoryHooks h;
  h.alloc = [](size_t bytes) -> void * {
    if (!device_state().ok) return nullptr;
    void *p = nullptr;
    const size_t n = bytes == 0 ? 1 : bytes;
    if (cudaMallocManaged(&p, n, cudaMemAttachGlobal) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    AllocTracker &t = alloc_tracker();
    std::lock_guard<std::mutex> lock(t.mu);
    t.sizes[p] = n;
    t.current += static_cast<int64_t>(n);
    t.peak = std::max(t.peak, t.current);
    return p;
  };
  h.free = [](void *p) {
    if (!p) return;
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
  h.sync = [] { return sync_stream(); };
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
  registry.add("embedding_fwd", impl::embedding_fwd);
  registry.add("rms_norm_fwd", impl::rms_norm_fwd);
  registry.add("rms_norm_bwd", impl::rms_norm_bwd);
  registry.add("linear_fwd", impl::linear_fwd);
  registry.add("linear_bwd_input", impl::linear_bwd_input);
  registry.add("lora_linear_fwd", impl::lora_linear_fwd);
  registry.add("lora_linear_bwd", impl::lora_linear_bwd);
  registry.add("rope_fwd", impl::rope_fwd);
  registry.add("rope_bwd", impl::rope_bwd);
  registry.add("attention_fwd", impl::attention_fwd);
  registry.add("attention_bwd", impl::attention_bwd);
  registry.add("swiglu_fwd", impl::swiglu_fwd);
  registry.add("swiglu_bwd", impl::swiglu_bwd);
  registry.add("add", impl::add);
  registry.add("transpose", impl::transpose);
  registry.add("copy", impl::copy);
  registry.add("accumulate", impl::accumulate);
  registry.add("cross_entropy_fwd", impl::cross_entropy_fwd);
  registry.add("cross_entropy_bwd", impl::cross_entropy_bwd);
  registry.add("adamw_step", impl::adamw_step);
  registry.add("fill_zero", fill_zero);

  // The collectives: the host kernels of runtime/comm, host-staged (see the file comment).
  KernelRegistry host;
  register_collective_kernels(host);
  if (const KernelFn *f = host.find("all_reduce"))
    registry.add("all_reduce", [fn = *f](KernelCall &c) { return staged_all_reduce(fn, c); });
  if (const KernelFn *f = host.find("broadcast"))  // same operand layout as all_reduce
    registry.add("broadcast", [fn = *f](KernelCall &c) { return staged_all_reduce(fn, c); });
  if (const KernelFn *f = host.find("send"))
    registry.add("send", [fn = *f](KernelCall &c) { return staged_send(fn, c); });
  if (const KernelFn *f = host.find("recv"))
    registry.add("recv", [fn = *f](KernelCall &c) { return staged_recv(fn, c); });
}

} // namespace parallora::rt::cuda
