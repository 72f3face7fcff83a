//===- nccl_comm.cu - the NCCL communicator (contract: nccl_comm.h) --------===//
#include "runtime/cuda/nccl_comm.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <list>
#include <map>

#include "runtime/comm/comm_impl.h"
#include "runtime/cuda/backend.h"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/nccl_communicator.cuh"

namespace parallora::rt::cuda {

using namespace comm_detail;

// ------------------------------------------------------------------ pure device check

Status check_one_rank_per_gpu(const std::vector<RankDevice> &devices,
                              const std::vector<CommGroup> &groups) {
  const CommGroup *worst = nullptr;
  int worst_a = -1, worst_b = -1;
  for (const CommGroup &g : groups) {
    for (int r : g.ranks)
      if (r < 0 || r >= int(devices.size()))
        return Status::error("group '" + g.name + "' (ranks " + rank_list(g.ranks) + ") names rank " +
                             std::to_string(r) + ", outside this world of " +
                             std::to_string(devices.size()) + " ranks");
    if (g.ranks.size() < 2) continue;
    if (worst && g.ranks.size() >= worst->ranks.size()) continue;  // keep the smallest
    bool found = false;
    for (size_t i = 0; i < g.ranks.size() && !found; ++i)
      for (size_t j = i + 1; j < g.ranks.size() && !found; ++j) {
        const RankDevice &a = devices[size_t(g.ranks[i])], &b = devices[size_t(g.ranks[j])];
        if (g.ranks[i] != g.ranks[j] && a.host == b.host && a.device == b.device) {
          worst = &g;
          worst_a = std::min(g.ranks[i], g.ranks[j]);
          worst_b = std::max(g.ranks[i], g.ranks[j]);
          found = true;
        }
      }
  }
  if (!worst) return Status::ok();
  const RankDevice &d = devices[size_t(worst_a)];
  return Status::error("NCCL cannot put two ranks of one group on one GPU: ranks " + std::to_string(worst_a) +
                       " and " + std::to_string(worst_b) + " of group '" + worst->name + "' (ranks " +
                       rank_list(worst->ranks) + ") both use GPU " + d.device + " on host " + d.host +
                       " (NCCL: \"Duplicate GPU detected\"); run one rank per GPU, or use the host-staged "
                       "MPI collectives (--collectives mpi), which allow ranks to share a GPU");
}

std::string nccl_version_string() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "NCCL (unknown version)";
  // NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z for 2.9 and later.
  return "NCCL " + std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
}
namespace nccl_detail {

std::string nccl_err(ncclComm_t comm, ncclResult_t r) {
  std::string s = std::string(ncclGetErrorString(r));
  if (const char *last = ncclGetLastError(comm); last && *last) s += " (" + std::string(last) + ")";
  return s;
}

std::string cuda_err(cudaError_t e) { return std::string(cudaGetErrorString(e)) + " (error " + std::to_string(int(e)) + ")"; }

ncclResult_t settle(ncclComm_t comm, ncclResult_t r, Clock::time_point deadline) {
  for (int64_t iter = 0; r == ncclInProgress; ++iter) {
    if (Clock::now() >= deadline) return ncclInProgress;
    backoff(iter);
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm, &async) != ncclSuccess) return ncclInternalError;
    r = async;
  }
  return r;
}

bool device_accessible(const void *p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}


namespace {

/// What each rank contributes to the setup exchange.
struct SetupInfo {
  char host[128];
  char bus_id[32];
  ncclUniqueId ids[10];  // [axes 1..7] groups this rank leads, [8] p2p up, [9] p2p down
};

} // namespace

Status NcclCommunicator::create(NcclHandle &h, const ncclUniqueId &id, Clock::time_point deadline) {
  const int nranks = int(h.members.size());
  const int me = int(std::find(h.members.begin(), h.members.end(), rank_) - h.members.begin());
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  config.commName = h.name.c_str();
  ncclResult_t r = ncclCommInitRankConfig(&h.comm, nranks, id, me, &config);
  const std::string what = "creating the NCCL communicator of group '" + h.name + "' (ranks " +
                           rank_list(h.members) + ")";
  if (r != ncclSuccess && r != ncclInProgress) {
    std::string msg = std::string(ncclGetErrorString(r));
    if (h.comm) msg = nccl_err(h.comm, r);
    if (h.comm) ncclCommAbort(h.comm);
    h.comm = nullptr;
    return Status::error(prefix() + what + " failed: " + msg);
  }
  r = settle(h.comm, r, deadline);
  if (r == ncclInProgress) {
    ncclCommAbort(h.comm);
    h.comm = nullptr;
    return Status::error(prefix() + what + " did not complete within " + seconds_str(timeout_seconds) +
                         " s (a peer died or is stuck, or cannot reach this host)");
  }
  if (r != ncclSuccess) {
    const std::string msg = nccl_err(h.comm, r);
    ncclCommAbort(h.comm);
    h.comm = nullptr;
    return Status::error(prefix() + what + " failed: " + msg);
  }
  return Status::ok();
}

Status NcclCommunicator::init(bool single_rank_comms) {
  const Clock::time_point deadline = deadline_after(timeout_seconds);
  int dev = -1;
  if (cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess)
    return Status::error(prefix() + "cudaGetDevice: " + cuda_err(e));

  // Which communicators exist (same list, same order, on every rank).
  // A group whose members equal an earlier group's shares its communicator (alias): every
  // member sees the same equality, so all ranks agree on what is created.
  struct Plan {
    std::string name;
    std::vector<int> members;
    int slot;        // index into SetupInfo::ids of the leader; groups_ index for slots < 8
    int alias = -1;  // index of the earlier plan whose communicator this one uses
  };
  std::vector<Plan> plans;
  for (unsigned axes = 1; axes < 8; ++axes) {
    std::vector<int> m = group_members(mesh_, rank_, axes);
    if (m.size() < 2 && !single_rank_comms) continue;
    Plan p{group_name(axes), std::move(m), int(axes)};
    for (size_t j = 0; j < plans.size() && p.alias < 0; ++j)
      if (plans[j].members == p.members) p.alias = int(j);
    plans.push_back(std::move(p));
  }
  if (single_rank_comms || size_ > 1) {
    std::vector<int> every(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) every[size_t(r)] = r;
    plans.push_back({"send/recv up", every, 8});
    plans.push_back({"send/recv down", every, 9});
  }

  // The exchange: host, GPU, and the ids of the groups this rank leads.
  SetupInfo mine;
  std::memset(&mine, 0, sizeof mine);
  gethostname(mine.host, sizeof mine.host - 1);
  if (cudaDeviceGetPCIBusId(mine.bus_id, sizeof mine.bus_id, dev) != cudaSuccess) {
    cudaGetLastError();
    std::snprintf(mine.bus_id, sizeof mine.bus_id, "cuda:%d", dev);
  }
  for (const Plan &p : plans)
    if (p.alias < 0 && p.members.front() == rank_)
      if (ncclResult_t r = ncclGetUniqueId(&mine.ids[p.slot]); r != ncclSuccess)
        return Status::error(prefix() + "ncclGetUniqueId for group '" + p.name + "': " + ncclGetErrorString(r));
  std::vector<SetupInfo> all(static_cast<size_t>(size_));
  {
    MPI_Comm world = MPI_COMM_NULL;
    MPI_Request req = MPI_REQUEST_NULL;
    auto wait = [&](const char *what) -> Status {
      for (int64_t iter = 0;; ++iter) {
        int flag = 0;
        if (int rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE); rc != MPI_SUCCESS)
          return Status::error(prefix() + what + " failed (MPI error " + std::to_string(rc) + ")");
        if (flag) return Status::ok();
        if (Clock::now() >= deadline)
          return Status::error(prefix() + what + " over all " + std::to_string(size_) +
                               " ranks did not complete within " + seconds_str(timeout_seconds) +
                               " s (a peer died or is stuck)");
        backoff(iter);
      }
    };
    if (MPI_Comm_idup(MPI_COMM_WORLD, &world, &req) != MPI_SUCCESS)
      return Status::error(prefix() + "MPI_Comm_idup for the NCCL setup failed");
    if (Status s = wait("duplicating MPI_COMM_WORLD for the NCCL setup"); !s) return s;
    MPI_Comm_set_errhandler(world, MPI_ERRORS_RETURN);
    Status s = Status::ok();
    if (MPI_Iallgather(&mine, int(sizeof mine), MPI_BYTE, all.data(), int(sizeof mine), MPI_BYTE, world, &req) !=
        MPI_SUCCESS)
      s = Status::error(prefix() + "MPI_Iallgather of the NCCL setup failed");
    else
      s = wait("exchanging GPUs and NCCL ids (MPI_Iallgather)");
    if (s) MPI_Comm_free(&world);  // after a timeout the request still uses it: leak it
    if (!s) return s;
  }

  // One rank per GPU within every communicator.
  {
    std::vector<RankDevice> devices(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      SetupInfo &in = all[size_t(r)];
      in.host[sizeof in.host - 1] = 0;
      in.bus_id[sizeof in.bus_id - 1] = 0;
      devices[size_t(r)] = {in.host, in.bus_id};
    }
    // Every rank checks every rank's groups (not only its own), so that all ranks fail together.
    std::vector<CommGroup> groups;
    for (int r = 0; r < size_; ++r)
      for (unsigned axes = 1; axes < 8; ++axes) {
        std::vector<int> m = group_members(mesh_, r, axes);
        if (m.front() == r && m.size() > 1) groups.push_back({group_name(axes), std::move(m)});
      }
    if (size_ > 1) {
      std::vector<int> every(static_cast<size_t>(size_));
      for (int r = 0; r < size_; ++r) every[size_t(r)] = r;
      groups.push_back({"send/recv (the whole world)", every});
    }
    if (Status s = check_one_rank_per_gpu(devices, groups); !s) return Status::error(prefix() + s.message());
  }

  // Streams.
  if (cudaError_t e = cudaStreamCreateWithFlags(&send_stream_, cudaStreamNonBlocking); e != cudaSuccess)
    return Status::error(prefix() + "cudaStreamCreate (send stream): " + cuda_err(e));
  {
    // The overlapped buckets' stream: highest priority, so a reduction's NCCL kernel starts while
    // the backward's kernels keep the device busy.
    int least = 0, greatest = 0;
    if (cudaDeviceGetStreamPriorityRange(&least, &greatest) != cudaSuccess) {
      cudaGetLastError();
      greatest = 0;
    }
    if (cudaError_t e = cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, greatest); e != cudaSuccess)
      return Status::error(prefix() + "cudaStreamCreate (bucket stream): " + cuda_err(e));
  }

  // The communicators, in plan order; identical member lists share one.
  std::vector<NcclHandle *> made(plans.size(), nullptr);
  for (size_t i = 0; i < plans.size(); ++i) {
    const Plan &p = plans[i];
    NcclHandle *h = p.alias >= 0 ? made[size_t(p.alias)] : nullptr;
    if (!h) {
      handles_.emplace_back();
      h = &handles_.back();
      h->name = p.name;
      h->members = p.members;
      if (Status s = create(*h, all[size_t(p.members.front())].ids[p.slot], deadline); !s) return s;
    }
    made[i] = h;
    if (p.slot < 8)
      groups_[p.slot] = h;
    else if (p.slot == 8)
      up_ = h;
    else
      down_ = h;
  }
  return Status::ok();
}

void NcclCommunicator::abort(NcclHandle &h, const std::string &why) {
  if (h.comm) ncclCommAbort(h.comm);
  h.comm = nullptr;
  if (h.broken.empty()) h.broken = why;
}

NcclCommunicator::~NcclCommunicator() {
  // Bounded wait for outstanding sends, then finalize (bounded) or abort every communicator.
  const Clock::time_point deadline = deadline_after(std::min(timeout_seconds, 10.0));
  drain_sends(pending_, [this] { reap_sends(); }, deadline);
  for (NcclHandle &h : handles_) {
    if (!h.comm) continue;
    ncclResult_t r = settle(h.comm, ncclCommFinalize(h.comm), deadline);
    if (r == ncclSuccess)
      ncclCommDestroy(h.comm);
    else
      ncclCommAbort(h.comm);
    h.comm = nullptr;
  }
  for (PendingSend &ps : pending_)
    if (ps.done) cudaEventDestroy(ps.done);
  for (auto &kv : async_) {
    if (kv.second.done) cudaEventDestroy(kv.second.done);
    if (kv.second.begin) cudaEventDestroy(kv.second.begin);
  }
  async_.clear();
  staging_.release();
  for (auto &kv : bucket_staging_) kv.second.release();
  if (send_stream_) cudaStreamDestroy(send_stream_);
  if (comm_stream_) cudaStreamDestroy(comm_stream_);
  if (timing_stream_) cudaStreamDestroy(timing_stream_);
}

Status NcclCommunicator::wait_until(const std::function<cudaError_t()> &query, NcclHandle *h, const std::string &what,
                                    const char *hang_hint) {
  const Clock::time_point deadline = deadline_after(timeout_seconds);
  for (int64_t iter = 0;; ++iter) {
    const cudaError_t e = query();
    if (e == cudaSuccess) return Status::ok();
    if (e != cudaErrorNotReady) {
      cudaGetLastError();
      if (h) abort(*h, "an earlier operation on it failed on the GPU");
      return Status::error(prefix() + what + " failed on the GPU: " + cuda_err(e));
    }
    if (h && h->comm) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(h->comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        const std::string msg = nccl_err(h->comm, async);
        abort(*h, "an earlier operation on it failed (" + msg + ")");
        return Status::error(prefix() + what + " failed: " + msg);
      }
    }
    if (Clock::now() >= deadline) {
      if (h) abort(*h, "an earlier operation on it timed out (its NCCL communicator was aborted)");
      return Status::error(prefix() + what + " did not complete within " + seconds_str(timeout_seconds) + " s (" +
                           hang_hint + ")");
    }
    backoff(iter);
  }
}

Status NcclCommunicator::wait_stream(cudaStream_t s, NcclHandle *h, const std::string &what, const char *hang_hint) {
  return wait_until([s] { return cudaStreamQuery(s); }, h, what, hang_hint);
}

Status NcclCommunicator::wait_event(cudaEvent_t ev, NcclHandle *h, const std::string &what, const char *hang_hint) {
  return wait_until([ev] { return cudaEventQuery(ev); }, h, what, hang_hint);
}

Status NcclCommunicator::collective(NcclHandle *h, const std::string &what, void *data, size_t bytes,
                                    const std::function<ncclResult_t(void *, ncclComm_t)> &enqueue) {
  if (!h->broken.empty()) return Status::error(prefix() + what + ": " + h->broken);
  const bool direct = device_accessible(data);
  void *buf = data;
  if (!direct) {
    if (Status s = staging_.reserve(bytes); !s) return Status::error(prefix() + what + ": " + s.message());
    buf = staging_.p;
    if (cudaError_t e = cudaMemcpyAsync(buf, data, bytes, cudaMemcpyHostToDevice, stream()); e != cudaSuccess)
      return Status::error(prefix() + what + ": staging copy to the GPU: " + cuda_err(e));
  }
  ncclResult_t r = enqueue(buf, h->comm);
  if (r == ncclInProgress) r = settle(h->comm, r, deadline_after(timeout_seconds));
  if (r != ncclSuccess) {
    const std::string msg = r == ncclInProgress ? "enqueueing did not complete" : nccl_err(h->comm, r);
    abort(*h, "an earlier operation on it failed to start");
    return Status::error(prefix() + what + ": " + msg);
  }
  // Wait (deadline) before copying back: a copy to pageable memory would block without one.
  if (Status s = wait_stream(stream(), h, what, "a peer died or is stuck"); !s) return s;
  if (!direct) return copy_back(data, buf, bytes, what);
  return Status::ok();
}

Status NcclCommunicator::copy_back(void *dst, const void *src, size_t bytes, const std::string &what) {
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream());
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream());
  if (e != cudaSuccess) return Status::error(prefix() + what + ": staging copy from the GPU: " + cuda_err(e));
  return Status::ok();
}

Status NcclCommunicator::all_reduce(const std::string &group, void *data_, int64_t count, plan::ElemType dtype,
                                    ReduceOp op) {
  void *data = data_;
  // bf16 is reduced by NCCL as bf16 (f32 arithmetic per combination, rounded to bf16), as the
  // MPI communicator's user op does.
  if (dtype != plan::ElemType::F32 && dtype != plan::ElemType::BF16)
    return Status::error(prefix() + "all_reduce over group '" + group +
                         "': i32 data is not supported (f32 or bf16 only)");
  const ncclDataType_t ntype = dtype == plan::ElemType::BF16 ? ncclBfloat16 : ncclFloat32;
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return Status::error(prefix() + "all_reduce: " + axes.message());
  NcclHandle *h = groups_[*axes];
  const std::vector<int> members = group_members(mesh_, rank_, *axes);
  const int64_t bytes = count * plan::elem_size(dtype);
  auto what = [&] {
    return "all_reduce over group '" + group + "' (ranks " + rank_list(members) + ") of " + std::to_string(bytes) +
           " bytes";
  };
  if (count < 0) return Status::error(prefix() + what() + ": negative count");
  if (count > 0 && !data) return Status::error(prefix() + what() + ": no data");
  if (h && count > 0) {
    const ncclRedOp_t nop = op == ReduceOp::Sum ? ncclSum : ncclMax;
    if (Status s = collective(h, what(), data, size_t(bytes),
                              [&](void *buf, ncclComm_t c) {
                                return ncclAllReduce(buf, buf, size_t(count), ntype, nop, c, stream());
                              });
        !s)
      return s;
  } else if (h && !h->broken.empty()) {
    return Status::error(prefix() + what() + ": " + h->broken);
  }
  count_all_reduce(bytes, int(members.size()));
  return Status::ok();
}

// Overlapped bucket: the comm stream waits for everything queued on stream() so far (the
// bucket's gradients, packed), reduces in place with NCCL and records `done`; nothing waits on
// the host. Host data (not device-accessible) takes the blocking path and completes here.
Status NcclCommunicator::all_reduce_start(int handle, const std::string &group, void *data, int64_t count,
                                          plan::ElemType dtype, ReduceOp op) {
  if (started(handle))
    return Status::error(prefix() + "all_reduce_start of bucket " + std::to_string(handle) + " over group '" + group +
                         "': the previous start of this bucket was never waited for");
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return Status::error(prefix() + "all_reduce_start: " + axes.message());
  NcclHandle *h = groups_[*axes];
  const std::vector<int> members = group_members(mesh_, rank_, *axes);
  const int64_t bytes = count * plan::elem_size(dtype);
  const std::string what = "all_reduce_start of bucket " + std::to_string(handle) + " over group '" + group +
                           "' (ranks " + rank_list(members) + ") of " + std::to_string(bytes) + " bytes";
  if (dtype != plan::ElemType::F32 && dtype != plan::ElemType::BF16)
    return Status::error(prefix() + what + ": i32 data is not supported (f32 or bf16 only)");
  if (count < 0) return Status::error(prefix() + what + ": negative count");
  if (count > 0 && !data) return Status::error(prefix() + what + ": no data");
  AsyncReduce a;
  a.h = h;
  a.what = what;
  if (h && count > 0) {
    if (!h->broken.empty()) return Status::error(prefix() + what + ": " + h->broken);
    if (!device_accessible(data)) {
      if (Status s = all_reduce(group, data, count, dtype, op); !s) return s;  // counts its bytes
      started_[handle] = what;
      async_[handle] = std::move(a);
      return Status::ok();
    }
    cudaEvent_t ready = nullptr;
    cudaError_t e = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(ready, stream());
    if (e == cudaSuccess) e = cudaStreamWaitEvent(comm_stream_, ready, 0);
    if (ready) cudaEventDestroy(ready);  // released once the recorded work completes
    if (e != cudaSuccess) return Status::error(prefix() + what + ": ordering after the compute stream: " + cuda_err(e));
    // --trace: the reduction's device time (a failure only loses the measurement).
    if (device_timing_ && (cudaEventCreate(&a.begin) != cudaSuccess || cudaEventRecord(a.begin, comm_stream_) != cudaSuccess)) {
      if (a.begin) cudaEventDestroy(a.begin);
      a.begin = nullptr;
      (void)cudaGetLastError();
    }
    const ncclDataType_t ntype = dtype == plan::ElemType::BF16 ? ncclBfloat16 : ncclFloat32;
    const ncclRedOp_t nop = op == ReduceOp::Sum ? ncclSum : ncclMax;
    ncclResult_t r = ncclAllReduce(data, data, size_t(count), ntype, nop, h->comm, comm_stream_);
    if (r == ncclInProgress) r = settle(h->comm, r, deadline_after(timeout_seconds));
    if (r != ncclSuccess) {
      const std::string msg = r == ncclInProgress ? "enqueueing did not complete" : nccl_err(h->comm, r);
      if (a.begin) cudaEventDestroy(a.begin);
      abort(*h, "an earlier operation on it failed to start");
      return Status::error(prefix() + what + ": ncclAllReduce: " + msg);
    }
    if ((e = cudaEventCreateWithFlags(&a.done, a.begin ? cudaEventDefault : cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventRecord(a.done, comm_stream_)) != cudaSuccess) {
      if (a.done) cudaEventDestroy(a.done);
      if (a.begin) cudaEventDestroy(a.begin);
      abort(*h, "an earlier operation on it could not be tracked");
      return Status::error(prefix() + what + ": cudaEventRecord: " + cuda_err(e));
    }
  } else if (h && !h->broken.empty()) {
    return Status::error(prefix() + what + ": " + h->broken);
  }
  count_all_reduce(bytes, int(members.size()));  // at the start, like every communicator
  started_[handle] = what;
  async_[handle] = std::move(a);
  return Status::ok();
}

// Waits (deadline, watching the group's NCCL errors) for the bucket's reduction, then orders
// stream() after it. The host waits for the comm stream's event only, never for stream(): the
// backward's queued kernels keep running; the optimizer step that follows (its clipping norm)
// waits for the stream anyway, so the host wait costs at most its launch latency. The host wait
// is the watchdog: a reduction that never completes (a dead or stuck peer) becomes an error
// naming the bucket and the group, and the communicator is aborted, never a hang in a later
// stream synchronization.
Status NcclCommunicator::all_reduce_wait(int handle) {
  auto it = async_.find(handle);
  if (it == async_.end())
    return Status::error(prefix() + "all_reduce_wait of bucket " + std::to_string(handle) + ", which was not started");
  AsyncReduce a = std::move(it->second);
  async_.erase(it);
  started_.erase(handle);
  Status s = a.error;
  if (s && a.done)
    s = wait_event(a.done, a.h, a.what,
                   "a peer died or is stuck, or the ranks started their buckets in different orders");
  if (s && a.done)
    if (cudaError_t e = cudaStreamWaitEvent(stream(), a.done, 0); e != cudaSuccess)
      s = Status::error(prefix() + a.what + ": cudaStreamWaitEvent: " + cuda_err(e));
  int64_t b = 0, d = 0;
  if (s && a.begin && a.done && place_on_host_clock(a.begin, a.done, &b, &d)) device_spans_[handle] = {b, d};
  if (a.done) cudaEventDestroy(a.done);
  if (a.begin) cudaEventDestroy(a.begin);
  return s;
}

bool NcclCommunicator::place_on_host_clock(cudaEvent_t begin, cudaEvent_t done, int64_t *begin_ns, int64_t *end_ns) {
  if (!timing_stream_ && cudaStreamCreateWithFlags(&timing_stream_, cudaStreamNonBlocking) != cudaSuccess) {
    timing_stream_ = nullptr;
    (void)cudaGetLastError();
    return false;
  }
  cudaEvent_t ref = nullptr;
  float to_begin = 0, to_done = 0;
  bool ok = cudaEventCreate(&ref) == cudaSuccess && cudaEventRecord(ref, timing_stream_) == cudaSuccess &&
            cudaEventSynchronize(ref) == cudaSuccess;
  const int64_t host_ref =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  ok = ok && cudaEventElapsedTime(&to_begin, begin, ref) == cudaSuccess &&
       cudaEventElapsedTime(&to_done, done, ref) == cudaSuccess;
  if (ref) cudaEventDestroy(ref);
  if (!ok) {
    (void)cudaGetLastError();
    return false;
  }
  *begin_ns = host_ref - static_cast<int64_t>(static_cast<double>(to_begin) * 1e6);
  *end_ns = std::max(*begin_ns, host_ref - static_cast<int64_t>(static_cast<double>(to_done) * 1e6));
  return true;
}

bool NcclCommunicator::device_span(int handle, int64_t *begin_ns, int64_t *end_ns) {
  auto it = device_spans_.find(handle);
  if (it == device_spans_.end()) return false;
  *begin_ns = it->second.first;
  *end_ns = it->second.second;
  device_spans_.erase(it);
  return true;
}

void NcclCommunicator::progress() {
  // Surface an asynchronous NCCL error of an in-flight bucket early (its wait returns it).
  for (auto &kv : async_) {
    AsyncReduce &a = kv.second;
    if (!a.done || !a.error.is_ok() || !a.h || !a.h->comm) continue;
    if (cudaEventQuery(a.done) != cudaErrorNotReady) {
      cudaGetLastError();
      continue;
    }
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(a.h->comm, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      const std::string msg = nccl_err(a.h->comm, async);
      a.error = Status::error(prefix() + a.what + " failed: " + msg);
      abort(*a.h, "an earlier operation on it failed (" + msg + ")");
    }
  }
}

Status NcclCommunicator::broadcast(const std::string &group, float *data, int64_t count, int root) {
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return Status::error(prefix() + "broadcast: " + axes.message());
  NcclHandle *h = groups_[*axes];
  const std::vector<int> members = group_members(mesh_, rank_, *axes);
  const int g = int(members.size());
  const int64_t bytes = count * 4;
  auto what = [&] {
    return "broadcast over group '" + group + "' (ranks " + rank_list(members) + ") of " + std::to_string(bytes) +
           " bytes from group rank " + std::to_string(root);
  };
  if (count < 0) return Status::error(prefix() + what() + ": negative count");
  if (count > 0 && !data) return Status::error(prefix() + what() + ": no data");
  if (root < 0 || root >= g) return Status::error(prefix() + what() + ": root is not in the group");
  if (h && count > 0) {
    if (Status s = collective(h, what(), data, size_t(bytes),
                              [&](void *buf, ncclComm_t c) {
                                return ncclBroadcast(buf, buf, size_t(count), ncclFloat32, root, c, stream());
                              });
        !s)
      return s;
  }
  const int me = int(std::find(members.begin(), members.end(), rank_) - members.begin());
  count_broadcast(bytes, g, me == root);
  return Status::ok();
}

Status NcclCommunicator::check_peer(const char *op, int peer, int tag, int64_t bytes, const void *data) const {
  const std::string what = std::string(op) + (op[0] == 's' ? " to rank " : " from rank ") + std::to_string(peer) +
                           " (tag " + std::to_string(tag) + ") of " + std::to_string(bytes) + " bytes";
  if (peer < 0 || peer >= size_)
    return Status::error(prefix() + what + ": peer is not a rank of this world of " + std::to_string(size_) +
                         " ranks");
  if (peer == rank_)
    return Status::error(prefix() + what + ": the NCCL communicator does not send to its own rank");
  if (bytes < 0) return Status::error(prefix() + what + ": negative size");
  if (bytes > 0 && !data) return Status::error(prefix() + what + ": no data");
  return Status::ok();
}

void NcclCommunicator::reap_sends() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    const cudaError_t e = cudaEventQuery(it->done);
    if (e == cudaErrorNotReady) {
      ++it;
      continue;
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      if (send_error_.is_ok())
        send_error_ = Status::error(prefix() + send_desc(*it) + " failed on the GPU: " + cuda_err(e));
    }
    cudaEventDestroy(it->done);
    it = pending_.erase(it);
  }
  // An asynchronous NCCL error of a point-to-point communicator fails the sends too.
  for (NcclHandle *h : {up_, down_}) {
    if (!h || !h->comm || !send_error_.is_ok()) continue;
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(h->comm, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      const std::string msg = nccl_err(h->comm, async);
      send_error_ = Status::error(prefix() + "a send on '" + h->name + "' failed: " + msg);
      abort(*h, "an earlier operation on it failed (" + msg + ")");
    }
  }
}

Status NcclCommunicator::send(int peer, int tag, const void *data, int64_t bytes) {
  reap_sends();
  if (!send_error_.is_ok()) return send_error_;
  if (Status s = check_peer("send", peer, tag, bytes, data); !s) return s;
  NcclHandle *h = send_comm(peer);
  PendingSend ps;
  ps.peer = peer;
  ps.tag = tag;
  ps.bytes = bytes;
  ps.h = h;
  const std::string desc = send_desc(ps);
  if (!h->broken.empty()) return Status::error(prefix() + desc + ": " + h->broken);
  if (bytes > 0) {
    // Staging copy on stream() (after the kernels that wrote `data`), then the send on the send
    // stream after that copy; the buffer is freed on the send stream after the send.
    void *buf = nullptr;
    if (cudaError_t e = cudaMallocAsync(&buf, size_t(bytes), stream()); e != cudaSuccess) {
      cudaGetLastError();
      return Status::error(prefix() + desc + ": cudaMallocAsync of the staging copy: " + cuda_err(e));
    }
    cudaEvent_t copied = nullptr;
    cudaError_t e = cudaMemcpyAsync(buf, data, size_t(bytes), cudaMemcpyDefault, stream());
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&copied, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(copied, stream());
    if (e == cudaSuccess) e = cudaStreamWaitEvent(send_stream_, copied, 0);
    if (copied) cudaEventDestroy(copied);  // released once recorded work completes
    if (e != cudaSuccess) {
      cudaFreeAsync(buf, stream());
      return Status::error(prefix() + desc + ": staging copy: " + cuda_err(e));
    }
    ncclResult_t r = ncclSend(buf, size_t(bytes), ncclUint8, peer, h->comm, send_stream_);
    if (r == ncclInProgress) r = settle(h->comm, r, deadline_after(timeout_seconds));
    cudaFreeAsync(buf, send_stream_);
    if (r != ncclSuccess) {
      const std::string msg = r == ncclInProgress ? "enqueueing did not complete" : nccl_err(h->comm, r);
      abort(*h, "an earlier send failed to start");
      return Status::error(prefix() + desc + ": ncclSend: " + msg);
    }
    if ((e = cudaEventCreateWithFlags(&ps.done, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventRecord(ps.done, send_stream_)) != cudaSuccess)
      return Status::error(prefix() + desc + ": cudaEventRecord: " + cuda_err(e));
    pending_.push_back(ps);
  }
  count_send(bytes);
  return Status::ok();
}

Status NcclCommunicator::recv(int peer, int tag, void *data, int64_t bytes) {
  if (Status s = check_peer("recv", peer, tag, bytes, data); !s) return s;
  NcclHandle *h = recv_comm(peer);
  const std::string what = "recv from rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ") of " +
                           std::to_string(bytes) + " bytes";
  if (!h->broken.empty()) return Status::error(prefix() + what + ": " + h->broken);
  if (bytes > 0) {
    const bool direct = device_accessible(data);
    void *buf = data;
    if (!direct) {
      if (Status s = staging_.reserve(size_t(bytes)); !s) return Status::error(prefix() + what + ": " + s.message());
      buf = staging_.p;
    }
    ncclResult_t r = ncclRecv(buf, size_t(bytes), ncclUint8, peer, h->comm, stream());
    if (r == ncclInProgress) r = settle(h->comm, r, deadline_after(timeout_seconds));
    if (r != ncclSuccess) {
      const std::string msg = r == ncclInProgress ? "enqueueing did not complete" : nccl_err(h->comm, r);
      abort(*h, "an earlier recv failed to start");
      return Status::error(prefix() + what + ": ncclRecv: " + msg);
    }
    if (Status s = wait_stream(stream(), h, what,
                               "a peer died or is stuck, never sends this message, or sends a different "
                               "size: NCCL matches messages between two ranks in issue order");
        !s)
      return s;
    if (!direct)
      if (Status s = copy_back(data, buf, size_t(bytes), what); !s) return s;
  }
  reap_sends();
  return Status::ok();
}

Status NcclCommunicator::flush() {
  bool timed_out = false;
  Status s = flush_sends(prefix(), timeout_seconds, pending_, &send_error_, [this] { reap_sends(); }, &timed_out);
  if (timed_out) {
    // A stuck NCCL send cannot be cancelled: abort the point-to-point communicators.
    for (NcclHandle *h : {up_, down_})
      if (h) abort(*h, "an earlier send timed out (its NCCL communicator was aborted)");
    for (PendingSend &p : pending_) cudaEventDestroy(p.done);
    pending_.clear();
  }
  return s;
}

} // namespace nccl_detail

using nccl_detail::NcclCommunicator;

StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(const plan::Mesh &mesh, double timeout_seconds,
                                                              bool single_rank_comms) {
  StatusOr<std::unique_ptr<Communicator>> mpi = make_mpi_communicator(mesh, timeout_seconds);
  if (!mpi) return mpi.status();
  std::string why;
  if (!available(&why))
    return Status::error("rank " + std::to_string((*mpi)->rank()) +
                         ": the NCCL collectives need a usable CUDA GPU per rank: no usable CUDA GPU: " + why +
                         " (use the host-staged MPI collectives: --collectives mpi)");
  auto comm = std::make_unique<NcclCommunicator>(mesh, std::move(*mpi));
  comm->timeout_seconds = timeout_seconds;
  if (Status s = comm->init(single_rank_comms); !s) return s;
  return std::unique_ptr<Communicator>(std::move(comm));
}

} // namespace parallora::rt::cuda
