//===- mpi_comm.cpp - the MPI communicator: no blocking call, no hang -------===//
//
// Every operation is non-blocking (MPI_Iallreduce, MPI_Isend, MPI_Irecv, MPI_Comm_idup) and
// then polled with MPI_Testall and a backoff (yield, then short sleeps) until it completes or
// `timeout_seconds` pass; a timeout is an error naming the operation, the group or peer, the
// tag, the bytes and the timeout. A timed-out recv is cancelled (no stray match later); a
// timed-out collective cannot be cancelled in MPI, so its group is marked broken and later
// collectives on it fail at once.
//
// Communicators: a private duplicate of MPI_COMM_WORLD carries the point-to-point messages
// (so user tags 0..MPI_TAG_UB never collide with anything else), and one sub-communicator per
// non-empty subset of {dp, tp, pp} (MPI_Comm_split: color = this rank's coordinates on the
// axes outside the group, key = world rank, so a rank's index in a group is its position among
// the group's world ranks in ascending order). All of them return errors instead of aborting
// (MPI_ERRORS_RETURN).
//
// send copies the data into a staging buffer owned by the communicator, starts MPI_Isend and
// returns; completed sends are reaped whenever the communicator is used, flush() waits for all.
// Messages over 1 GiB travel as several MPI messages with the same tag (MPI keeps their order).
//
//===----------------------------------------------------------------------===//
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/comm/comm_impl.h"
#include "runtime/comm/mpi_communicator.h"
#include "runtime/base/bf16.h"

namespace parallora::rt {

using namespace comm_detail;

namespace comm_detail {

namespace {

constexpr int64_t kMaxChunkBytes = int64_t(1) << 30;  // per MPI message / collective call

} // namespace

std::string mpi_error_string(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(buf, size_t(len));
}

bool MpiCommunicator::poll(std::vector<MPI_Request> &reqs, std::vector<MPI_Status> *statuses,
                           Clock::time_point deadline, int *rc) {
  *rc = MPI_SUCCESS;
  for (int64_t iter = 0;; ++iter) {
    int flag = 0;
    const int r = MPI_Testall(int(reqs.size()), reqs.data(), &flag,
                              statuses ? statuses->data() : MPI_STATUSES_IGNORE);
    if (r != MPI_SUCCESS) {
      *rc = r;
      return true;
    }
    if (flag) return true;
    if (Clock::now() >= deadline) return false;
    if (iter % 64 == 63) reap_sends();
    backoff(iter);
  }
}

void MpiCommunicator::reap_sends() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    int flag = 0;
    const int r = MPI_Testall(int(it->reqs.size()), it->reqs.data(), &flag, MPI_STATUSES_IGNORE);
    if (r != MPI_SUCCESS) {
      if (send_error_.is_ok())
        send_error_ = Status::error(prefix() + send_desc(*it) + " failed: " + mpi_error_string(r));
      it = pending_.erase(it);
    } else if (flag) {
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
}

Status MpiCommunicator::init() {
  int flag = 0;
  void *ub = nullptr;
  if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag) == MPI_SUCCESS && flag && ub)
    tag_ub_ = *static_cast<int *>(ub);

  // Private world (non-blocking dup, polled).
  {
    std::vector<MPI_Request> req(1);
    int rc = MPI_Comm_idup(MPI_COMM_WORLD, &world_, &req[0]);
    if (rc != MPI_SUCCESS) return mpi_fail("MPI_Comm_idup(MPI_COMM_WORLD)", rc);
    if (!poll(req, nullptr, deadline_after(timeout_seconds), &rc))
      return Status::error(prefix() + "duplicating MPI_COMM_WORLD (" + std::to_string(size_) +
                           " ranks) did not complete within " + seconds_str(timeout_seconds) +
                           " s (a peer died or is stuck)");
    if (rc != MPI_SUCCESS) return mpi_fail("MPI_Comm_idup(MPI_COMM_WORLD)", rc);
    MPI_Comm_set_errhandler(world_, MPI_ERRORS_RETURN);
  }

  // Handshake: every rank must have been given the same mesh (max and min of the dims agree).
  {
    int dims[6] = {mesh_.dp, mesh_.tp, mesh_.pp, -mesh_.dp, -mesh_.tp, -mesh_.pp};
    std::vector<MPI_Request> req(1);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, dims, 6, MPI_INT, MPI_MAX, world_, &req[0]);
    if (rc != MPI_SUCCESS) return mpi_fail("mesh handshake (MPI_Iallreduce)", rc);
    if (!poll(req, nullptr, deadline_after(timeout_seconds), &rc))
      return Status::error(prefix() + "mesh handshake over all " + std::to_string(size_) +
                           " ranks did not complete within " + seconds_str(timeout_seconds) +
                           " s (a peer died or is stuck)");
    if (rc != MPI_SUCCESS) return mpi_fail("mesh handshake (MPI_Iallreduce)", rc);
    if (dims[0] != mesh_.dp || dims[1] != mesh_.tp || dims[2] != mesh_.pp ||
        -dims[3] != mesh_.dp || -dims[4] != mesh_.tp || -dims[5] != mesh_.pp)
      return Status::error(prefix() + "the ranks were given different meshes (this rank: dp " +
                           std::to_string(mesh_.dp) + " x tp " + std::to_string(mesh_.tp) +
                           " x pp " + std::to_string(mesh_.pp) + "; largest seen: dp " +
                           std::to_string(dims[0]) + " x tp " + std::to_string(dims[1]) +
                           " x pp " + std::to_string(dims[2]) + ")");
  }

  // One sub-communicator per non-empty subset of {dp, tp, pp}. MPI_Comm_split has no
  // non-blocking form; after the handshake every rank is known to be alive and agreeing.
  const plan::MeshCoord me = plan::coord_of(mesh_, rank_);
  groups_[0].members = {rank_};
  for (unsigned axes = 1; axes < 8; ++axes) {
    Group &g = groups_[axes];
    g.size = comm_detail::group_size(mesh_, axes);
    g.members = group_members(mesh_, rank_, axes);
    const int color = plan::rank_of(mesh_, (axes & kDp) ? 0 : me.dp, (axes & kTp) ? 0 : me.tp,
                                    (axes & kPp) ? 0 : me.pp);
    const int rc = MPI_Comm_split(world_, color, rank_, &g.comm);
    if (rc != MPI_SUCCESS)
      return mpi_fail("MPI_Comm_split for group '" + group_name(axes) + "'", rc);
    MPI_Comm_set_errhandler(g.comm, MPI_ERRORS_RETURN);
    int gsize = 0, grank = -1;
    MPI_Comm_size(g.comm, &gsize);
    MPI_Comm_rank(g.comm, &grank);
    const int expect_rank =
        int(std::find(g.members.begin(), g.members.end(), rank_) - g.members.begin());
    if (gsize != g.size || grank != expect_rank)
      return Status::error(prefix() + "internal: sub-communicator of group '" +
                           group_name(axes) + "' has " + std::to_string(gsize) +
                           " ranks (this one " + std::to_string(grank) + "), expected " +
                           std::to_string(g.size) + " (this one " +
                           std::to_string(expect_rank) + ")");
  }
  return init_control(deadline_after(timeout_seconds));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    // Too late for MPI; the staging buffers of unfinished sends are leaked on purpose.
    for (PendingSend &ps : pending_) ps.buf.release();
    return;
  }
  // Give outstanding sends a bounded chance to finish, then cancel what is left (its buffers
  // are leaked: MPI may still read them).
  drain_sends(pending_, [this] { reap_sends(); }, deadline_after(std::min(timeout_seconds, 10.0)));
  for (PendingSend &ps : pending_) {
    for (MPI_Request &r : ps.reqs)
      if (r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
    ps.buf.release();
  }
  // A started all-reduce never waited for (an error path): MPI may still write its staging
  // bytes, so they are leaked rather than freed.
  if (!async_.empty()) new std::map<int, std::vector<char>>(std::move(staging_));
  free_control();
  for (Group &g : groups_)
    if (g.comm != MPI_COMM_NULL) MPI_Comm_free(&g.comm);
  if (world_ != MPI_COMM_NULL) MPI_Comm_free(&world_);
}

namespace {

// bf16 reductions: MPI has no bfloat16 type, so bf16 data travels as MPI_UINT16_T with user
// operations that widen, combine in f32 and round back (runtime/base/bf16.h) at every combination.
void bf16_sum(void *in, void *inout, int *len, MPI_Datatype *) {
  const uint16_t *a = static_cast<const uint16_t *>(in);
  uint16_t *b = static_cast<uint16_t *>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}
void bf16_max(void *in, void *inout, int *len, MPI_Datatype *) {
  const uint16_t *a = static_cast<const uint16_t *>(in);
  uint16_t *b = static_cast<uint16_t *>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(std::max(bf16_to_f32(a[i]), bf16_to_f32(b[i])));
}
MPI_Op bf16_op(ReduceOp op) {
  static MPI_Op sum = MPI_OP_NULL, max = MPI_OP_NULL;  // created once, freed by MPI_Finalize
  MPI_Op &o = op == ReduceOp::Sum ? sum : max;
  if (o == MPI_OP_NULL) MPI_Op_create(op == ReduceOp::Sum ? bf16_sum : bf16_max, /*commute=*/1, &o);
  return o;
}

} // namespace

Status MpiCommunicator::all_reduce(const std::string &group, void *data, int64_t count, plan::ElemType dtype,
                                   ReduceOp op) {
  Pending p;
  if (Status s = reduce_begin(group, data, count, dtype, op, p); !s) return s;
  return reduce_end(p);
}

Status MpiCommunicator::all_reduce_start(int handle, const std::string &group, void *data, int64_t count,
                                         plan::ElemType dtype, ReduceOp op) {
  if (started(handle))
    return Status::error(prefix() + "all_reduce_start of bucket " + std::to_string(handle) + " over group '" + group +
                         "': the previous start of this bucket was never waited for");
  Pending p;
  if (Status s = reduce_begin(group, data, count, dtype, op, p); !s) return s;
  started_[handle] = p.what;
  async_[handle] = std::move(p);
  return Status::ok();
}

Status MpiCommunicator::all_reduce_wait(int handle) {
  auto it = async_.find(handle);
  if (it == async_.end())
    return Status::error(prefix() + "all_reduce_wait of bucket " + std::to_string(handle) + ", which was not started");
  Pending p = std::move(it->second);
  async_.erase(it);
  started_.erase(handle);
  return reduce_end(p);
}

void MpiCommunicator::progress() {
  for (auto &[handle, p] : async_) {
    int flag = 0;
    if (!p.reqs.empty()) MPI_Testall(int(p.reqs.size()), p.reqs.data(), &flag, MPI_STATUSES_IGNORE);
  }
}

Status MpiCommunicator::reduce_begin(const std::string &group, void *data_, int64_t count, plan::ElemType dtype,
                                     ReduceOp op, Pending &p) {
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return Status::error(prefix() + "all_reduce: " + axes.message());
  Group &g = groups_[*axes];
  const int64_t esize = plan::elem_size(dtype);
  const int64_t bytes = count * esize;
  char *data = static_cast<char *>(data_);
  p.group = &g;
  p.what = "all_reduce over group '" + group + "' (ranks " + rank_list(g.members) + ") of " + std::to_string(bytes) +
           " bytes";
  if (count < 0) return Status::error(prefix() + p.what + ": negative count");
  if (count > 0 && !data) return Status::error(prefix() + p.what + ": no data");
  if (dtype == plan::ElemType::I32) return Status::error(prefix() + p.what + ": i32 data (f32 or bf16 only)");
  if (!g.broken.empty()) return Status::error(prefix() + p.what + ": " + g.broken);
  if (g.size > 1 && count > 0) {
    const bool bf16 = dtype == plan::ElemType::BF16;
    const MPI_Datatype type = bf16 ? MPI_UINT16_T : MPI_FLOAT;
    const MPI_Op mop = bf16 ? bf16_op(op) : op == ReduceOp::Sum ? MPI_SUM : MPI_MAX;
    const int64_t chunk = kMaxChunkBytes / esize;
    for (int64_t off = 0; off < count; off += chunk) {
      p.reqs.emplace_back(MPI_REQUEST_NULL);
      const int n = int(std::min(chunk, count - off));
      const int rc = MPI_Iallreduce(MPI_IN_PLACE, data + off * esize, n, type, mop, g.comm, &p.reqs.back());
      if (rc != MPI_SUCCESS) {
        g.broken = "an earlier all_reduce over this group failed to start";
        return mpi_fail(p.what + ": MPI_Iallreduce", rc);
      }
    }
  }
  count_all_reduce(bytes, g.size);
  return Status::ok();
}

Status MpiCommunicator::reduce_end(Pending &p) {
  if (p.reqs.empty()) return Status::ok();
  Group &g = *p.group;
  int rc = MPI_SUCCESS;
  if (!poll(p.reqs, nullptr, deadline_after(timeout_seconds), &rc)) {
    // A collective request cannot be cancelled or freed: the group is unusable from now on.
    g.broken = "an earlier all_reduce over this group timed out";
    return Status::error(prefix() + p.what + " did not complete within " + seconds_str(timeout_seconds) +
                         " s (a peer died or is stuck)");
  }
  if (rc != MPI_SUCCESS) {
    g.broken = "an earlier all_reduce over this group failed";
    return mpi_fail(p.what, rc);
  }
  return Status::ok();
}

Status MpiCommunicator::broadcast(const std::string &group, float *data, int64_t count, int root) {
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return Status::error(prefix() + "broadcast: " + axes.message());
  Group &g = groups_[*axes];
  const int64_t bytes = count * 4;
  auto what = [&] {
    return "broadcast over group '" + group + "' (ranks " + rank_list(g.members) + ") of " + std::to_string(bytes) +
           " bytes from group rank " + std::to_string(root);
  };
  if (count < 0) return Status::error(prefix() + what() + ": negative count");
  if (count > 0 && !data) return Status::error(prefix() + what() + ": no data");
  if (root < 0 || root >= g.size) return Status::error(prefix() + what() + ": root is not in the group");
  if (!g.broken.empty()) return Status::error(prefix() + what() + ": " + g.broken);
  if (g.size > 1 && count > 0) {
    std::vector<MPI_Request> reqs;
    const int64_t chunk = kMaxChunkBytes / 4;
    for (int64_t off = 0; off < count; off += chunk) {
      reqs.emplace_back(MPI_REQUEST_NULL);
      const int n = int(std::min(chunk, count - off));
      const int rc = MPI_Ibcast(data + off, n, MPI_FLOAT, root, g.comm, &reqs.back());
      if (rc != MPI_SUCCESS) {
        g.broken = "an earlier broadcast over this group failed to start";
        return mpi_fail(what() + ": MPI_Ibcast", rc);
      }
    }
    int rc = MPI_SUCCESS;
    if (!poll(reqs, nullptr, deadline_after(timeout_seconds), &rc)) {
      g.broken = "an earlier broadcast over this group timed out";
      return Status::error(prefix() + what() + " did not complete within " + seconds_str(timeout_seconds) +
                           " s (a peer died or is stuck)");
    }
    if (rc != MPI_SUCCESS) {
      g.broken = "an earlier broadcast over this group failed";
      return mpi_fail(what(), rc);
    }
  }
  const auto me = std::find(g.members.begin(), g.members.end(), rank());
  count_broadcast(bytes, g.size, me - g.members.begin() == root);
  return Status::ok();
}

Status MpiCommunicator::check_peer_tag(const char *op, int peer, int tag, int64_t bytes,
                                       const void *data) const {
  const std::string what = std::string(op) + (op[0] == 's' ? " to rank " : " from rank ") +
                           std::to_string(peer) + " (tag " + std::to_string(tag) + ") of " +
                           std::to_string(bytes) + " bytes";
  if (peer < 0 || peer >= size_)
    return Status::error(prefix() + what + ": peer is not a rank of this world of " +
                         std::to_string(size_) + " ranks");
  if (tag < 0 || tag > tag_ub_)
    return Status::error(prefix() + what + ": tag outside [0, " + std::to_string(tag_ub_) +
                         "] (MPI_TAG_UB)");
  if (bytes < 0) return Status::error(prefix() + what + ": negative size");
  if (bytes > 0 && !data) return Status::error(prefix() + what + ": no data");
  return Status::ok();
}

Status MpiCommunicator::send(int peer, int tag, const void *data, int64_t bytes) {
  reap_sends();
  if (!send_error_.is_ok()) return send_error_;
  if (Status s = check_peer_tag("send", peer, tag, bytes, data); !s) return s;
  PendingSend ps;
  ps.peer = peer;
  ps.tag = tag;
  ps.bytes = bytes;
  ps.buf.reset(new char[size_t(std::max<int64_t>(bytes, 1))]);
  if (bytes > 0) std::memcpy(ps.buf.get(), data, size_t(bytes));
  const std::string desc = send_desc(ps);
  int64_t off = 0;
  do {
    const int n = int(std::min(kMaxChunkBytes, bytes - off));
    ps.reqs.emplace_back(MPI_REQUEST_NULL);
    const int rc = MPI_Isend(ps.buf.get() + off, n, MPI_BYTE, peer, tag, world_, &ps.reqs.back());
    if (rc != MPI_SUCCESS) {
      ps.reqs.pop_back();
      if (!ps.reqs.empty()) pending_.push_back(std::move(ps));  // keep its buffer alive
      return mpi_fail(desc + ": MPI_Isend", rc);
    }
    off += n;
  } while (off < bytes);
  pending_.push_back(std::move(ps));
  count_send(bytes);
  return Status::ok();
}

Status MpiCommunicator::recv(int peer, int tag, void *data, int64_t bytes) {
  if (Status s = check_peer_tag("recv", peer, tag, bytes, data); !s) return s;
  return timed_recv(world_, "recv", peer, tag, data, bytes);
}

Status MpiCommunicator::timed_recv(MPI_Comm comm, const char *op, int peer, int tag, void *data, int64_t bytes) {
  const std::string what = std::string(op) + " from rank " + std::to_string(peer) + " (tag " +
                           std::to_string(tag) + ") of " + std::to_string(bytes) + " bytes";
  char *dst = static_cast<char *>(data);
  std::vector<MPI_Request> reqs;
  std::vector<int> sizes;
  int64_t off = 0;
  do {
    const int n = int(std::min(kMaxChunkBytes, bytes - off));
    reqs.emplace_back(MPI_REQUEST_NULL);
    sizes.push_back(n);
    const int rc = MPI_Irecv(dst ? dst + off : nullptr, n, MPI_BYTE, peer, tag, comm,
                             &reqs.back());
    if (rc != MPI_SUCCESS) {
      reqs.pop_back();
      for (MPI_Request &r : reqs) {
        MPI_Cancel(&r);
        MPI_Wait(&r, MPI_STATUS_IGNORE);
      }
      return mpi_fail(what + ": MPI_Irecv", rc);
    }
    off += n;
  } while (off < bytes);
  std::vector<MPI_Status> st(reqs.size());
  int rc = MPI_SUCCESS;
  if (!poll(reqs, &st, deadline_after(timeout_seconds), &rc)) {
    // Cancel what has not arrived, so that no later message is swallowed by a stale receive.
    bool all_arrived = true;
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (reqs[i] == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&reqs[i]);
      MPI_Status cs;
      MPI_Wait(&reqs[i], &cs);
      int cancelled = 0;
      MPI_Test_cancelled(&cs, &cancelled);
      if (cancelled) all_arrived = false;
      else st[i] = cs;
    }
    if (!all_arrived)
      return Status::error(prefix() + what + " did not complete within " +
                           seconds_str(timeout_seconds) +
                           " s (a peer died or is stuck, or it never sends this message)");
  } else if (rc != MPI_SUCCESS) {
    // MPI_ERR_IN_STATUS: the per-request errors say what failed (typically a truncation: the
    // peer sent a larger message).
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (st[i].MPI_ERROR != MPI_SUCCESS && st[i].MPI_ERROR != MPI_ERR_PENDING) {
        for (size_t j = 0; j < reqs.size(); ++j)
          if (reqs[j] != MPI_REQUEST_NULL) {
            MPI_Cancel(&reqs[j]);
            MPI_Wait(&reqs[j], MPI_STATUS_IGNORE);
          }
        return Status::error(prefix() + what + " failed: " + mpi_error_string(st[i].MPI_ERROR) +
                             " (the peer's message does not match this size)");
      }
      if (reqs[i] != MPI_REQUEST_NULL) {
        MPI_Cancel(&reqs[i]);
        MPI_Wait(&reqs[i], MPI_STATUS_IGNORE);
      }
    }
    return mpi_fail(what, rc);
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    int got = 0;
    MPI_Get_count(&st[i], MPI_BYTE, &got);
    if (got != sizes[i])
      return Status::error(prefix() + what + ": the peer sent " + std::to_string(got) +
                           " bytes" + (reqs.size() > 1 ? " in part " + std::to_string(i) : "") +
                           ", expected " + std::to_string(sizes[i]) +
                           " (the ranks disagree on the message size)");
  }
  reap_sends();
  return Status::ok();
}

Status MpiCommunicator::flush() {
  bool timed_out = false;
  return flush_sends(prefix(), timeout_seconds, pending_, &send_error_, [this] { reap_sends(); }, &timed_out);
}

} // namespace comm_detail

StatusOr<std::unique_ptr<Communicator>> make_mpi_communicator(const plan::Mesh &mesh,
                                                             double timeout_seconds) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return Status::error(std::string("make_mpi_communicator: MPI is ") +
                         (finalized ? "already finalized" : "not initialized (call MPI_Init first)"));
  const std::string mesh_str = "dp " + std::to_string(mesh.dp) + " x tp " +
                               std::to_string(mesh.tp) + " x pp " + std::to_string(mesh.pp);
  if (mesh.dp < 1 || mesh.tp < 1 || mesh.pp < 1)
    return Status::error("invalid mesh (" + mesh_str + "): every axis needs at least 1 rank");
  int size = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (size != mesh.size())
    return Status::error("plan was compiled for " + std::to_string(mesh.size()) + " ranks (" +
                         mesh_str + ") but this MPI world has " + std::to_string(size) +
                         " (launch it with mpirun -np " + std::to_string(mesh.size()) + ")");
  auto comm = std::make_unique<MpiCommunicator>(mesh, rank, size);
  comm->timeout_seconds = timeout_seconds;
  if (Status s = comm->init(); !s) return s;
  return std::unique_ptr<Communicator>(std::move(comm));
}

} // namespace parallora::rt
