//===- nccl_collective_kernels.cu - device-side collective kernels (nccl_comm.h, KERNELS) -===//
//
// "all_reduce", "broadcast", "all_reduce_start", "all_reduce_wait" on stream(): bucket packing,
// the scale attr and the copy x -> y done on the GPU, the reduction by the NCCL communicator;
// plain "send" / "recv" after a stream wait when the communicator is not the NCCL one. Operand
// checks and messages are the host collective kernels' (runtime/comm/comm.h, collective_*).
//
//===----------------------------------------------------------------------===//
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <variant>
#include <vector>

#include "runtime/cuda/backend.h"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/graph.cuh"
#include "runtime/cuda/nccl_comm.h"
#include "runtime/cuda/nccl_communicator.cuh"

namespace parallora::rt::cuda {

using nccl_detail::DeviceBuffer;
using nccl_detail::NcclCommunicator;

namespace {


__global__ void scale_copy_kernel(const float *x, float *y, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = s * x[i];
}

// bf16: y = round(s * x) in f32, one rounding (the host all_reduce kernel's formula).
__global__ void scale_copy_bf16_kernel(const __nv_bfloat16 *x, __nv_bfloat16 *y, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(s * __bfloat162float(x[i]));
}


/// dst = s * src, n elements of f32 or bf16 (s == 1: a copy; dst == src and s == 1: nothing),
/// on stream().
Status scale_copy(const void *src, void *dst, int64_t n, float s, plan::ElemType t = plan::ElemType::F32) {
  if (n <= 0 || (src == dst && s == 1.0f)) return Status::ok();
  if (s == 1.0f)
    return cuda_status(cudaMemcpyAsync(dst, src, size_t(n * plan::elem_size(t)), cudaMemcpyDefault, stream()),
                       "copy");
  if (t == plan::ElemType::BF16)
    scale_copy_bf16_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<const __nv_bfloat16 *>(src),
                                                                static_cast<__nv_bfloat16 *>(dst), n, s);
  else
    scale_copy_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<const float *>(src),
                                                           static_cast<float *>(dst), n, s);
  return check_launch("scale_copy_kernel");
}

/// Before a communicator that is not this one touches device data from the host.
Status host_ready(const Communicator *comm) {
  if (dynamic_cast<const NcclCommunicator *>(comm)) return Status::ok();
  return sync_stream();
}

DeviceBuffer &bucket_buffer() {
  thread_local DeviceBuffer b;
  return b;
}

// The host collective kernels' error format and attribute checks (runtime/comm/comm.h).
constexpr auto kfail = collective_error;

// Same contract as the host all_reduce (runtime/comm/collective_kernels.cpp), on stream().
Status device_all_reduce(KernelCall &c) {
  const char *K = "all_reduce";
  std::string group;
  int g = 1;
  // One element type for the whole list: f32, or bf16 (reduced as bf16, scaled in f32 with one
  // rounding), with the host kernel's checks and messages.
  plan::ElemType dtype = plan::ElemType::F32;
  int64_t total = 0;
  if (Status s = collective_all_reduce_operands(c, K, &group, &g, &dtype, &total); !s) return s;
  const int64_t es = plan::elem_size(dtype);
  const float sf = float(c.attr_f("scale", 1.0));
  const bool reduce = c.comm && g > 1;
  if (c.in.size() == 1 || !reduce) {
    // Per tensor: y = x, reduce y in place, y *= scale.
    for (size_t i = 0; i < c.in.size(); ++i) {
      const int64_t n = c.in[i].numel();
      void *y = c.out[i].data;
      if (Status s = scale_copy(c.in[i].data, y, n, 1.0f, dtype); !s) return kfail(c, K, s.message());
      if (reduce) {
        if (Status s = host_ready(c.comm); !s) return kfail(c, K, s.message());
        if (Status s = c.comm->all_reduce(group, y, n, dtype, ReduceOp::Sum); !s) return kfail(c, K, s.message());
      }
      if (Status s = scale_copy(y, y, n, sf, dtype); !s) return kfail(c, K, s.message());
    }
    return Status::ok();
  }
  // A bucket: pack on the device, one reduction, unpack (with the scale). The staging is device
  // memory, which only the NCCL communicator can reduce.
  if (!dynamic_cast<NcclCommunicator *>(c.comm))
    return kfail(c, K, "a bucket of " + std::to_string(c.in.size()) +
                           " tensors needs the NCCL communicator (lora-run --collectives nccl)");
  DeviceBuffer &buf = bucket_buffer();
  if (Status s = buf.reserve(size_t(std::max<int64_t>(total, 1) * es)); !s) return kfail(c, K, s.message());
  char *staging = static_cast<char *>(buf.p);
  int64_t off = 0;  // bytes
  for (const Tensor &x : c.in) {
    if (Status s = scale_copy(x.data, staging + off, x.numel(), 1.0f, dtype); !s) return kfail(c, K, s.message());
    off += x.nbytes();
  }
  if (total > 0) {
    if (Status s = host_ready(c.comm); !s) return kfail(c, K, s.message());
    if (Status s = c.comm->all_reduce(group, staging, total, dtype, ReduceOp::Sum); !s)
      return kfail(c, K, s.message());
  }
  off = 0;
  for (size_t i = 0; i < c.out.size(); ++i) {
    const int64_t n = c.out[i].numel();
    if (Status s = scale_copy(staging + off, c.out[i].data, n, sf, dtype); !s) return kfail(c, K, s.message());
    off += c.out[i].nbytes();
  }
  return Status::ok();
}

// Same contract as the host broadcast (ZeRO-1: tensor i owned by group index roots[i]).
Status device_broadcast(KernelCall &c) {
  const char *K = "broadcast";
  std::string group;
  int g = 1;
  std::vector<int64_t> roots;
  if (Status s = collective_broadcast_operands(c, K, &group, &g, &roots); !s) return s;
  if (g > 1 && !dynamic_cast<NcclCommunicator *>(c.comm))  // device staging: NCCL only
    return kfail(c, K, "needs the NCCL communicator (lora-run --collectives nccl)");
  DeviceBuffer &buf = bucket_buffer();
  for (int r = 0; r < g; ++r) {
    int64_t n = 0;
    for (size_t i = 0; i < c.in.size(); ++i)
      if (roots[i] == r) n += c.in[i].numel();
    if (n == 0) continue;
    if (Status s = buf.reserve(size_t(n) * 4); !s) return kfail(c, K, s.message());
    float *staging = static_cast<float *>(buf.p);
    int64_t off = 0;
    for (size_t i = 0; i < c.in.size(); ++i)
      if (roots[i] == r) {
        if (Status s = scale_copy(c.in[i].f32(), staging + off, c.in[i].numel(), 1.0f); !s)
          return kfail(c, K, s.message());
        off += c.in[i].numel();
      }
    if (c.comm) {
      if (Status s = host_ready(c.comm); !s) return kfail(c, K, s.message());
      if (Status s = c.comm->broadcast(group, staging, n, r); !s) return kfail(c, K, s.message());
    }
    off = 0;
    for (size_t i = 0; i < c.in.size(); ++i)
      if (roots[i] == r) {
        if (Status s = scale_copy(staging + off, c.out[i].f32(), c.in[i].numel(), 1.0f); !s)
          return kfail(c, K, s.message());
        off += c.in[i].numel();
      }
  }
  return Status::ok();
}


// Overlapped gradient bucket, device side (the host kernel's contract: collective_kernels.cpp):
// on the optimizer step's last micro-batch (StepState::last_micro; no StepState: always) packs
// x_0..x_{n-1} into the communicator's device staging of `bucket` on stream() and starts the
// sum over `group` on the comm stream (NcclCommunicator::all_reduce_start: bytes counted here).
// With another communicator: the host kernel after a stream wait (host-staged).
Status device_all_reduce_start(const KernelFn &host, KernelCall &c) {
  const char *K = "all_reduce_start";
  if (graph::capturing()) return kfail(c, K, graph::refuse_capture("all_reduce_start (StepState::last_micro)").message());
  if (c.step && !c.step->last_micro) return Status::ok();
  auto *nc = dynamic_cast<NcclCommunicator *>(c.comm);
  if (!nc) {
    if (Status s = sync_stream(); !s) return s;
    return host(c);
  }
  int handle = -1;
  if (Status s = collective_bucket(c, K, &handle); !s) return s;
  if (!c.instr->attrs.count("group") || !std::holds_alternative<std::string>(c.instr->attrs.at("group")))
    return kfail(c, K, "missing string attr 'group'");
  if (!c.out.empty()) return kfail(c, K, "expected no outputs (the sum is written by all_reduce_wait)");
  plan::ElemType dtype = plan::ElemType::F32;
  int64_t total = 0, bytes = 0;
  if (Status s = collective_bucket_inputs(c, K, &dtype, &total, &bytes); !s) return s;
  const std::string group = c.attr_s("group", "");
  if (nc->started(handle))  // before packing: the staging may still be in flight
    return kfail(c, K, "rank " + std::to_string(nc->rank()) + ": all_reduce_start of bucket " +
                           std::to_string(handle) + " over group '" + group +
                           "': the previous start of this bucket was never waited for");
  StatusOr<char *> buf = nc->bucket_staging(handle, size_t(bytes));
  if (!buf) return kfail(c, K, buf.message());
  int64_t off = 0;
  for (const Tensor &x : c.in) {
    if (Status s = scale_copy(x.data, *buf + off, x.numel(), 1.0f, dtype); !s) return kfail(c, K, s.message());
    off += x.nbytes();
  }
  if (Status s = nc->all_reduce_start(handle, group, *buf, total, dtype, ReduceOp::Sum); !s)
    return kfail(c, K, s.message());
  nc->set_bucket_bytes(handle, bytes);
  return Status::ok();
}

// all_reduce_wait, device side: completes the bucket (NcclCommunicator::all_reduce_wait: a
// deadline, stream() ordered after the reduction) and writes y_i = scale * sum on stream(); with
// no start (not the last micro-batch's backward, or a plan without overlap) it is the device
// all_reduce of x_i into y_i, exactly as the host kernel falls back.
Status device_all_reduce_wait(const KernelFn &host, KernelCall &c) {
  const char *K = "all_reduce_wait";
  if (graph::capturing()) return kfail(c, K, graph::refuse_capture("all_reduce_wait (communicator state)").message());
  int handle = -1;
  if (Status s = collective_bucket(c, K, &handle); !s) return s;
  if (!c.comm->started(handle)) return device_all_reduce(c);  // never started: reduce here
  auto *nc = dynamic_cast<NcclCommunicator *>(c.comm);
  if (!nc) {
    if (Status s = sync_stream(); !s) return s;
    return host(c);
  }
  if (Status s = collective_pairs(c, K); !s) return s;
  int64_t bytes = 0;
  if (Status s = collective_bucket_outputs(c, K, &bytes); !s) return s;
  // Complete the reduction first (also on a size mismatch: the bucket must not stay in flight).
  Status waited = nc->all_reduce_wait(handle);
  if (bytes != nc->bucket_bytes(handle))
    return kfail(c, K, "the bucket has " + std::to_string(bytes) + " bytes but its start staged " +
                           std::to_string(nc->bucket_bytes(handle)));
  if (!waited) return kfail(c, K, waited.message());
  StatusOr<char *> buf = nc->bucket_staging(handle, size_t(bytes));  // no growth: the start's block
  if (!buf) return kfail(c, K, buf.message());
  const float sf = float(c.attr_f("scale", 1.0));
  int64_t off = 0;
  for (const Tensor &y : c.out) {
    if (Status s = scale_copy(*buf + off, y.data, y.numel(), sf, y.dtype); !s) return kfail(c, K, s.message());
    off += y.nbytes();
  }
  return Status::ok();
}

} // namespace

void register_nccl_collective_kernels(KernelRegistry &registry) {
  registry.add("all_reduce", device_all_reduce);
  registry.add("broadcast", device_broadcast);
  {
    KernelRegistry host;
    register_collective_kernels(host);
    if (const KernelFn *f = host.find("all_reduce_start"))
      registry.add("all_reduce_start", [fn = *f](KernelCall &c) { return device_all_reduce_start(fn, c); });
    if (const KernelFn *f = host.find("all_reduce_wait"))
      registry.add("all_reduce_wait", [fn = *f](KernelCall &c) { return device_all_reduce_wait(fn, c); });
  }
  // send / recv only hand the tensor's pointer to comm->send / comm->recv: the NCCL communicator
  // orders them on the GPU itself. With another communicator, wait for the stream first.
  KernelRegistry host;
  register_collective_kernels(host);
  for (const char *name : {"send", "recv"})
    if (const KernelFn *f = host.find(name))
      registry.add(name, [fn = *f](KernelCall &c) -> Status {
        if (Status s = host_ready(c.comm); !s) return s;
        return fn(c);
      });
}

} // namespace parallora::rt::cuda
