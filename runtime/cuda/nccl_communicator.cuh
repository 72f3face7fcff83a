//===- nccl_communicator.cuh - the NCCL communicator's class (private) -----===//
//
// Shared by nccl_comm.cu (setup, collectives, send / recv) and nccl_collective_kernels.cu (the
// device-side collective kernels, which pack buckets into the communicator's device staging).
// Users see only nccl_comm.h.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/comm/comm_impl.h"
#include "runtime/comm/deadline.h"
#include "runtime/cuda/backend.h"
#include "runtime/cuda/nccl_comm.h"

namespace parallora::rt::cuda::nccl_detail {

using comm_detail::Clock;

/// NCCL's error string of `r`, with ncclGetLastError(comm) when it says more.
std::string nccl_err(ncclComm_t comm, ncclResult_t r);
/// cudaGetErrorString and the code.
std::string cuda_err(cudaError_t e);
/// Polls a non-blocking communicator until its state leaves ncclInProgress or the deadline
/// passes (returns ncclInProgress then).
ncclResult_t settle(ncclComm_t comm, ncclResult_t r, Clock::time_point deadline);
/// Device-accessible without a copy: device or managed memory.
bool device_accessible(const void *p);

/// A grow-only device buffer, stream-ordered on stream() (cudaMallocAsync / cudaFreeAsync: no
/// device-wide synchronization, which could wait on a send stuck behind its receiver).
struct DeviceBuffer {
  void *p = nullptr;
  size_t bytes = 0;
  Status reserve(size_t n) {
    if (n <= bytes) return Status::ok();
    if (p) cudaFreeAsync(p, stream());
    p = nullptr;
    bytes = 0;
    if (cudaError_t e = cudaMallocAsync(&p, n, stream()); e != cudaSuccess) {
      cudaGetLastError();
      return Status::error("cudaMallocAsync of " + std::to_string(n) + " bytes: " + cuda_err(e));
    }
    bytes = n;
    return Status::ok();
  }
  void release() {
    if (p) cudaFreeAsync(p, stream());
    p = nullptr;
    bytes = 0;
  }
};

/// One NCCL communicator, possibly shared by groups with identical members.
struct NcclHandle {
  ncclComm_t comm = nullptr;
  std::string name;          // for messages: the first group that created it
  std::vector<int> members;  // world ranks, ascending (NCCL rank = index)
  std::string broken;        // why later operations fail at once
};

struct PendingSend {
  cudaEvent_t done = nullptr;
  int peer = -1, tag = -1;
  int64_t bytes = 0;
  NcclHandle *h = nullptr;
};

class NcclCommunicator final : public Communicator {
public:
  NcclCommunicator(const plan::Mesh &mesh, std::unique_ptr<Communicator> mpi)
      : Communicator(mesh), mpi_(std::move(mpi)), rank_(mpi_->rank()), size_(mpi_->world_size()) {}
  ~NcclCommunicator() override;

  Status init(bool single_rank_comms);

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  using Communicator::all_reduce;
  Status all_reduce(const std::string &group, void *data_, int64_t count, plan::ElemType dtype,
                    ReduceOp op) override;
  Status broadcast(const std::string &group, float *data, int64_t count, int root) override;
  Status send(int peer, int tag, const void *data, int64_t bytes) override;
  Status recv(int peer, int tag, void *data, int64_t bytes) override;
  Status flush() override;
  /// Overlapped buckets (file comment of nccl_comm.h, OVERLAP): the reduction runs on the comm
  /// stream after the work queued on stream() so far; all_reduce_wait waits for it (deadline)
  /// and orders stream() after it.
  Status all_reduce_start(int handle, const std::string &group, void *data, int64_t count, plan::ElemType dtype,
                          ReduceOp op) override;
  Status all_reduce_wait(int handle) override;
  void progress() override;
  void set_device_timing(bool on) override { device_timing_ = on; }
  bool device_span(int handle, int64_t *begin_ns, int64_t *end_ns) override;

  // Control plane (comm.h): the MPI communicator's timed host-side code, on the MPI
  // communicator this one was bootstrapped with (never NCCL, never counted in bytes_sent()).
  Status barrier(const std::string &group) override { return control()->barrier(group); }
  Status all_reduce_f64(const std::string &group, double *data, int64_t count, ReduceOp op) override {
    return control()->all_reduce_f64(group, data, count, op);
  }
  Status gather_f64(const std::string &group, const double *mine, int64_t count, double *all) override {
    return control()->gather_f64(group, mine, count, all);
  }
  Status broadcast_bytes(const std::string &group, void *data, int64_t bytes, int root) override {
    return control()->broadcast_bytes(group, data, bytes, root);
  }
  Status send_control(int peer, int tag, const void *data, int64_t bytes) override {
    return control()->send_control(peer, tag, data, bytes);
  }
  Status recv_control(int peer, int tag, void *data, int64_t bytes) override {
    return control()->recv_control(peer, tag, data, bytes);
  }

  /// The device staging of bucket `handle` (the device-side all_reduce_start packs into it and
  /// reduces it in place): at least `bytes`, grow-only, stream-ordered on stream(). Only grown
  /// while the bucket is not in flight (a start after its wait).
  StatusOr<char *> bucket_staging(int handle, size_t bytes) {
    DeviceBuffer &b = bucket_staging_[handle];
    if (Status s = b.reserve(std::max<size_t>(bytes, 1)); !s) return s;
    return static_cast<char *>(b.p);
  }
  /// Bytes the device-side start of `handle` packed (-1: none).
  int64_t bucket_bytes(int handle) const {
    auto it = bucket_bytes_.find(handle);
    return it == bucket_bytes_.end() ? -1 : it->second;
  }
  void set_bucket_bytes(int handle, int64_t bytes) { bucket_bytes_[handle] = bytes; }

private:
  std::string prefix() const { return "rank " + std::to_string(rank_) + ": "; }
  /// The MPI communicator, with this communicator's current timeout.
  Communicator *control() {
    mpi_->timeout_seconds = timeout_seconds;
    return mpi_.get();
  }
  /// Creates (ncclCommInitRankConfig, non-blocking, polled) the communicator of `members`.
  Status create(NcclHandle &h, const ncclUniqueId &id, Clock::time_point deadline);
  /// Waits for `s` (cudaStreamQuery) while watching `h`'s async error. On timeout or error
  /// aborts h (marks it broken with `broken_why`) and returns the error; `what` names the op.
  /// Polls `query` (cudaStreamQuery / cudaEventQuery) until done, watching `h`'s async error,
  /// within timeout_seconds; on error or timeout aborts h and names `what`.
  Status wait_until(const std::function<cudaError_t()> &query, NcclHandle *h, const std::string &what,
                    const char *hang_hint);
  Status wait_stream(cudaStream_t s, NcclHandle *h, const std::string &what, const char *hang_hint);
  /// Same for an event (cudaEventQuery): the comm stream's "done" event of a bucket.
  Status wait_event(cudaEvent_t ev, NcclHandle *h, const std::string &what, const char *hang_hint);
  void abort(NcclHandle &h, const std::string &why);
  /// One group collective (all_reduce or broadcast) on `data`, staged when on the host.
  Status collective(NcclHandle *h, const std::string &what, void *data, size_t bytes,
                    const std::function<ncclResult_t(void *, ncclComm_t)> &enqueue);
  /// Device staging -> host after the wait (synchronous, the stream is idle by then).
  Status copy_back(void *dst, const void *src, size_t bytes, const std::string &what);
  void reap_sends();
  std::string send_desc(const PendingSend &ps) const { return comm_detail::send_desc(ps.peer, ps.tag, ps.bytes); }
  Status check_peer(const char *op, int peer, int tag, int64_t bytes, const void *data) const;
  /// "up" carries messages from a lower to a higher world rank, "down" the others.
  NcclHandle *send_comm(int peer) { return peer > rank_ ? up_ : down_; }
  NcclHandle *recv_comm(int peer) { return peer < rank_ ? up_ : down_; }

  std::unique_ptr<Communicator> mpi_;  // world-size check, handshake, bootstrap
  int rank_, size_;
  std::list<NcclHandle> handles_;      // stable addresses
  NcclHandle *groups_[8] = {};         // by axis bits; null = one-rank group (identity)
  NcclHandle *up_ = nullptr, *down_ = nullptr;
  cudaStream_t send_stream_ = nullptr;
  DeviceBuffer staging_;               // host-pointer staging for collectives / recv
  std::list<PendingSend> pending_;
  Status send_error_;
  // Overlapped buckets.
  struct AsyncReduce {
    cudaEvent_t done = nullptr;  // recorded on comm_stream_ after the reduction; null: completed
    cudaEvent_t begin = nullptr; // --trace: recorded on comm_stream_ before the reduction
    NcclHandle *h = nullptr;
    std::string what;
    Status error;                // an asynchronous NCCL error seen by progress()
  };
  cudaStream_t comm_stream_ = nullptr;  // high priority, non-blocking
  std::map<int, AsyncReduce> async_;    // started, not yet waited for
  std::map<int, DeviceBuffer> bucket_staging_;
  std::map<int, int64_t> bucket_bytes_;
  // --trace (set_device_timing): each bucket's reduction timed by CUDA events on comm_stream_,
  // placed on the host clock against a reference event on timing_stream_ (always idle, so the
  // reference never waits for later buckets); device_span() hands them to the executor.
  bool device_timing_ = false;
  cudaStream_t timing_stream_ = nullptr;
  std::map<int, std::pair<int64_t, int64_t>> device_spans_;
  /// The [begin, done] events of a completed reduction on the host's steady clock (ns).
  bool place_on_host_clock(cudaEvent_t begin, cudaEvent_t done, int64_t *begin_ns, int64_t *end_ns);
};

} // namespace parallora::rt::cuda::nccl_detail
