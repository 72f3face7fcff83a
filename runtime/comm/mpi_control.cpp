//===- mpi_control.cpp - the MPI communicator's control plane (comm.h) -----===//
//
// barrier, all_reduce_f64, gather_f64, broadcast_bytes over a group; send_control /
// recv_control between world ranks. None of it is counted in bytes_sent().
//
// Communicators: every group communicator has a control duplicate (MPI_Comm_idup at setup), and
// the world has one more for send_control / recv_control, so no control message or collective
// ever matches a data-plane one.
//
// Who is missing: a control collective first posts a zero-byte arrival token to, and a receive
// from, every other member of the group (tag kArrivalTag, the only point-to-point traffic on a
// group's control duplicate), then the collective itself (MPI_Iallreduce, MPI_Igather,
// MPI_Ibcast; a barrier is the tokens alone), and polls everything against one deadline. On
// timeout the token receives that have not completed name the members that never called the
// operation; they are cancelled (no stray match later), and the group's control plane is marked
// broken (an MPI collective cannot be cancelled). The collective works on a staging copy owned
// by the call, leaked on timeout, so MPI never writes into the caller's memory late.
//
//===----------------------------------------------------------------------===//
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#include "runtime/comm/comm_impl.h"
#include "runtime/comm/mpi_communicator.h"

namespace parallora::rt::comm_detail {

namespace {

constexpr int kArrivalTag = 1;
constexpr int64_t kMaxChunkBytes = int64_t(1) << 30;  // per MPI message / collective call
char token_out = 0, token_in = 0;                     // zero-byte messages: never read or written

} // namespace

Status MpiCommunicator::init_control(Clock::time_point deadline) {
  // The handles are written when the duplication completes: after a timeout that may be later,
  // so they live on the heap, leaked in that case.
  auto *made = new MPI_Comm[8];
  std::vector<MPI_Request> reqs;
  for (unsigned axes = 0; axes < 8; ++axes) {
    made[axes] = MPI_COMM_NULL;
    MPI_Comm parent = axes == 0 ? world_ : groups_[axes].comm;  // [0]: the world's duplicate
    reqs.emplace_back(MPI_REQUEST_NULL);
    if (int rc = MPI_Comm_idup(parent, &made[axes], &reqs.back()); rc != MPI_SUCCESS)
      return mpi_fail("MPI_Comm_idup of the control communicators", rc);  // leaks `made`
  }
  int rc = MPI_SUCCESS;
  if (!poll(reqs, nullptr, deadline, &rc))
    return Status::error(prefix() + "creating the control communicators over all " + std::to_string(size_) +
                         " ranks did not complete within " + seconds_str(timeout_seconds) +
                         " s (a peer died or is stuck)");
  if (rc != MPI_SUCCESS) return mpi_fail("MPI_Comm_idup of the control communicators", rc);
  control_world_ = made[0];
  for (unsigned axes = 1; axes < 8; ++axes) groups_[axes].control = made[axes];
  delete[] made;
  MPI_Comm_set_errhandler(control_world_, MPI_ERRORS_RETURN);
  for (unsigned axes = 1; axes < 8; ++axes) MPI_Comm_set_errhandler(groups_[axes].control, MPI_ERRORS_RETURN);
  return Status::ok();
}

void MpiCommunicator::free_control() {
  for (Group &g : groups_)
    if (g.control != MPI_COMM_NULL) MPI_Comm_free(&g.control);
  if (control_world_ != MPI_COMM_NULL) MPI_Comm_free(&control_world_);
}

Status MpiCommunicator::control_group(const char *op, const std::string &group, Group **g, std::string *what) {
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return Status::error(prefix() + op + ": " + axes.message());
  *g = &groups_[*axes];
  *what = std::string(op) + " over group '" + group + "' (ranks " + rank_list((*g)->members) + ")";
  return Status::ok();
}

Status MpiCommunicator::control_collective(Group &g, const char *op, const std::string &what,
                                           const std::function<int(MPI_Comm, std::vector<MPI_Request> &)> &start) {
  if (!g.control_broken.empty()) return Status::error(prefix() + what + ": " + g.control_broken);
  const int me = int(std::find(g.members.begin(), g.members.end(), rank_) - g.members.begin());
  // reqs: [0, n) token receives from peers[i], [n, 2n) token sends, then the collective's.
  std::vector<int> peers;  // group indices of the other members
  for (int j = 0; j < g.size; ++j)
    if (j != me) peers.push_back(j);
  const size_t n = peers.size();
  std::vector<MPI_Request> reqs(2 * n, MPI_REQUEST_NULL);
  // Stops what was posted: token receives are cancelled (reliable for receives), token sends
  // released (zero bytes from a static buffer); collective requests cannot be stopped. Returns
  // the world ranks whose token had not arrived.
  auto abandon = [&]() {
    std::vector<int> missing;
    for (size_t i = 0; i < n; ++i) {
      if (reqs[i] == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MPI_Test(&reqs[i], &flag, MPI_STATUS_IGNORE);
      if (flag) continue;
      missing.push_back(g.members[size_t(peers[i])]);
      MPI_Cancel(&reqs[i]);
      MPI_Wait(&reqs[i], MPI_STATUS_IGNORE);
    }
    for (size_t i = n; i < 2 * n; ++i) {
      if (reqs[i] == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MPI_Test(&reqs[i], &flag, MPI_STATUS_IGNORE);
      if (!flag) MPI_Request_free(&reqs[i]);
    }
    return missing;
  };
  auto post_failed = [&](const char *call, int rc) {
    abandon();
    g.control_broken = std::string("an earlier ") + op + " over this group failed to start";
    return mpi_fail(what + ": " + call, rc);
  };
  for (size_t i = 0; i < n; ++i)
    if (int rc = MPI_Irecv(&token_in, 0, MPI_BYTE, peers[i], kArrivalTag, g.control, &reqs[i]); rc != MPI_SUCCESS)
      return post_failed("MPI_Irecv (arrival token)", rc);
  for (size_t i = 0; i < n; ++i)
    if (int rc = MPI_Isend(&token_out, 0, MPI_BYTE, peers[i], kArrivalTag, g.control, &reqs[n + i]);
        rc != MPI_SUCCESS)
      return post_failed("MPI_Isend (arrival token)", rc);
  if (start)
    if (int rc = start(g.control, reqs); rc != MPI_SUCCESS) return post_failed(op, rc);
  int rc = MPI_SUCCESS;
  if (poll(reqs, nullptr, deadline_after(timeout_seconds), &rc)) {
    if (rc == MPI_SUCCESS) return Status::ok();
    g.control_broken = std::string("an earlier ") + op + " over this group failed";
    return mpi_fail(what, rc);
  }
  const std::vector<int> missing = abandon();
  const std::string within = " did not complete within " + seconds_str(timeout_seconds) + " s: ";
  if (!missing.empty()) {
    g.control_broken = std::string("an earlier ") + op + " over this group timed out (rank(s) " +
                       rank_list(missing) + " did not arrive)";
    return Status::error(prefix() + what + within + "rank(s) " + rank_list(missing) +
                         " did not arrive (stopped, dead, or not calling " + op + ")");
  }
  g.control_broken = std::string("an earlier ") + op + " over this group timed out";
  return Status::error(prefix() + what + within +
                       "every rank arrived but the operation did not finish (a peer stopped or died inside it)");
}

Status MpiCommunicator::barrier(const std::string &group) {
  Group *g = nullptr;
  std::string what;
  if (Status s = control_group("barrier", group, &g, &what); !s) return s;
  if (g->size == 1) return Status::ok();
  return control_collective(*g, "barrier", what, nullptr);
}

Status MpiCommunicator::all_reduce_f64(const std::string &group, double *data, int64_t count, ReduceOp op) {
  Group *g = nullptr;
  std::string what;
  if (Status s = control_group("all_reduce_f64", group, &g, &what); !s) return s;
  what += " of " + std::to_string(count) + " doubles";
  if (count < 0) return Status::error(prefix() + what + ": negative count");
  if (count > 0 && !data) return Status::error(prefix() + what + ": no data");
  if (count > INT_MAX) return Status::error(prefix() + what + ": more than INT_MAX doubles");
  if (g->size == 1) return Status::ok();
  std::unique_ptr<double[]> buf(new double[size_t(std::max<int64_t>(count, 1))]);
  if (count > 0) std::memcpy(buf.get(), data, size_t(count) * sizeof(double));
  Status s = control_collective(*g, "all_reduce_f64", what, [&](MPI_Comm c, std::vector<MPI_Request> &reqs) {
    reqs.emplace_back(MPI_REQUEST_NULL);
    return MPI_Iallreduce(MPI_IN_PLACE, buf.get(), int(count), MPI_DOUBLE, op == ReduceOp::Sum ? MPI_SUM : MPI_MAX,
                          c, &reqs.back());
  });
  if (!s) {
    buf.release();  // MPI may still write it
    return s;
  }
  if (count > 0) std::memcpy(data, buf.get(), size_t(count) * sizeof(double));
  return Status::ok();
}

Status MpiCommunicator::gather_f64(const std::string &group, const double *mine, int64_t count, double *all) {
  Group *g = nullptr;
  std::string what;
  if (Status s = control_group("gather_f64", group, &g, &what); !s) return s;
  what += " of " + std::to_string(count) + " doubles per rank to group rank 0";
  const bool root = g->members.front() == rank_;
  if (count < 0) return Status::error(prefix() + what + ": negative count");
  if (count > 0 && !mine) return Status::error(prefix() + what + ": no data");
  if (count > 0 && root && !all) return Status::error(prefix() + what + ": no output on the root");
  if (count * g->size > INT_MAX) return Status::error(prefix() + what + ": more than INT_MAX doubles in all");
  if (g->size == 1) {
    if (count > 0 && all != mine) std::copy(mine, mine + count, all);
    return Status::ok();
  }
  const size_t n = size_t(std::max<int64_t>(count, 1));
  std::unique_ptr<double[]> send(new double[n]);
  std::unique_ptr<double[]> recv(new double[root ? n * size_t(g->size) : 1]);
  if (count > 0) std::memcpy(send.get(), mine, size_t(count) * sizeof(double));
  Status s = control_collective(*g, "gather_f64", what, [&](MPI_Comm c, std::vector<MPI_Request> &reqs) {
    reqs.emplace_back(MPI_REQUEST_NULL);
    return MPI_Igather(send.get(), int(count), MPI_DOUBLE, recv.get(), int(count), MPI_DOUBLE, 0, c, &reqs.back());
  });
  if (!s) {
    send.release();  // MPI may still use them
    recv.release();
    return s;
  }
  if (root && count > 0) std::memcpy(all, recv.get(), size_t(count * g->size) * sizeof(double));
  return Status::ok();
}

Status MpiCommunicator::broadcast_bytes(const std::string &group, void *data, int64_t bytes, int root) {
  Group *g = nullptr;
  std::string what;
  if (Status s = control_group("broadcast_bytes", group, &g, &what); !s) return s;
  what += " of " + std::to_string(bytes) + " bytes from group rank " + std::to_string(root);
  if (bytes < 0) return Status::error(prefix() + what + ": negative size");
  if (bytes > 0 && !data) return Status::error(prefix() + what + ": no data");
  if (root < 0 || root >= g->size) return Status::error(prefix() + what + ": root is not in the group");
  if (g->size == 1) return Status::ok();
  std::unique_ptr<char[]> buf(new char[size_t(std::max<int64_t>(bytes, 1))]);
  const bool is_root = g->members[size_t(root)] == rank_;
  if (is_root && bytes > 0) std::memcpy(buf.get(), data, size_t(bytes));
  Status s = control_collective(*g, "broadcast_bytes", what, [&](MPI_Comm c, std::vector<MPI_Request> &reqs) {
    int64_t off = 0;
    do {
      const int n = int(std::min(kMaxChunkBytes, bytes - off));
      reqs.emplace_back(MPI_REQUEST_NULL);
      if (int rc = MPI_Ibcast(buf.get() + off, n, MPI_BYTE, root, c, &reqs.back()); rc != MPI_SUCCESS) return rc;
      off += n;
    } while (off < bytes);
    return MPI_SUCCESS;
  });
  if (!s) {
    buf.release();  // MPI may still use it
    return s;
  }
  if (!is_root && bytes > 0) std::memcpy(data, buf.get(), size_t(bytes));
  return Status::ok();
}

Status MpiCommunicator::send_control(int peer, int tag, const void *data, int64_t bytes) {
  if (Status s = check_peer_tag("send_control", peer, tag, bytes, data); !s) return s;
  const std::string what = "send_control to rank " + std::to_string(peer) + " (tag " + std::to_string(tag) +
                           ") of " + std::to_string(bytes) + " bytes";
  if (peer == rank_) return Status::error(prefix() + what + ": a rank cannot send a control message to itself");
  // Synchronous sends (complete once the receiver has matched them) from a staging copy: after a
  // timeout an uncancellable send may still read it, so it is leaked then.
  std::unique_ptr<char[]> buf(new char[size_t(std::max<int64_t>(bytes, 1))]);
  if (bytes > 0) std::memcpy(buf.get(), data, size_t(bytes));
  std::vector<MPI_Request> reqs;
  auto give_up = [&] {
    for (MPI_Request &r : reqs) {
      if (r == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MPI_Test(&r, &flag, MPI_STATUS_IGNORE);
      if (flag) continue;
      MPI_Cancel(&r);
      MPI_Request_free(&r);
    }
    buf.release();
  };
  int64_t off = 0;
  do {
    const int n = int(std::min(kMaxChunkBytes, bytes - off));
    reqs.emplace_back(MPI_REQUEST_NULL);
    if (int rc = MPI_Issend(buf.get() + off, n, MPI_BYTE, peer, tag, control_world_, &reqs.back());
        rc != MPI_SUCCESS) {
      give_up();
      return mpi_fail(what + ": MPI_Issend", rc);
    }
    off += n;
  } while (off < bytes);
  int rc = MPI_SUCCESS;
  if (!poll(reqs, nullptr, deadline_after(timeout_seconds), &rc)) {
    give_up();
    return Status::error(prefix() + what + " was not received within " + seconds_str(timeout_seconds) +
                         " s: rank " + std::to_string(peer) +
                         " did not arrive (stopped, dead, or not calling recv_control for it)");
  }
  if (rc != MPI_SUCCESS) {
    give_up();
    return mpi_fail(what, rc);
  }
  return Status::ok();
}

Status MpiCommunicator::recv_control(int peer, int tag, void *data, int64_t bytes) {
  if (Status s = check_peer_tag("recv_control", peer, tag, bytes, data); !s) return s;
  if (peer == rank_)
    return Status::error(prefix() + "recv_control from rank " + std::to_string(peer) + " (tag " +
                         std::to_string(tag) + ") of " + std::to_string(bytes) +
                         " bytes: a rank cannot send a control message to itself");
  return timed_recv(control_world_, "recv_control", peer, tag, data, bytes);
}

} // namespace parallora::rt::comm_detail
