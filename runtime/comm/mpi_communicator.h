//===- mpi_communicator.h - the MPI communicator's class (private) ---------===//
//
// Shared by mpi_comm.cpp (setup and the data plane: all_reduce, broadcast, send / recv, counted in
// bytes_sent) and mpi_control.cpp (the control plane: barrier, all_reduce_f64, gather_f64,
// broadcast_bytes, send_control / recv_control, never counted). Users see only comm.h.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <mpi.h>

#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/comm/comm_impl.h"
#include "runtime/comm/deadline.h"

namespace parallora::rt::comm_detail {

/// MPI_Error_string of `rc`.
std::string mpi_error_string(int rc);

struct PendingSend {
  std::vector<MPI_Request> reqs;
  std::unique_ptr<char[]> buf;
  int peer = -1, tag = -1;
  int64_t bytes = 0;
};

class MpiCommunicator final : public Communicator {
public:
  MpiCommunicator(const plan::Mesh &mesh, int rank, int size)
      : Communicator(mesh), rank_(rank), size_(size) {}
  ~MpiCommunicator() override;

  Status init();

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  using Communicator::all_reduce;
  Status all_reduce(const std::string &group, void *data, int64_t count, plan::ElemType dtype,
                    ReduceOp op) override;
  Status send(int peer, int tag, const void *data, int64_t bytes) override;
  Status recv(int peer, int tag, void *data, int64_t bytes) override;
  Status all_reduce_start(int handle, const std::string &group, void *data, int64_t count, plan::ElemType dtype,
                          ReduceOp op) override;
  Status all_reduce_wait(int handle) override;
  void progress() override;
  Status broadcast(const std::string &group, float *data, int64_t count, int root) override;
  Status flush() override;

  // Control plane (mpi_control.cpp).
  Status barrier(const std::string &group) override;
  Status all_reduce_f64(const std::string &group, double *data, int64_t count, ReduceOp op) override;
  Status gather_f64(const std::string &group, const double *mine, int64_t count, double *all) override;
  Status broadcast_bytes(const std::string &group, void *data, int64_t bytes, int root) override;
  Status send_control(int peer, int tag, const void *data, int64_t bytes) override;
  Status recv_control(int peer, int tag, void *data, int64_t bytes) override;

private:
  struct Group;
  /// One all-reduce in flight: its requests (empty when nothing travels) and its description.
  struct Pending {
    std::vector<MPI_Request> reqs;
    Group *group = nullptr;
    std::string what;
  };
  Status reduce_begin(const std::string &group, void *data, int64_t count, plan::ElemType dtype, ReduceOp op,
                      Pending &p);
  Status reduce_end(Pending &p);

  struct Group {
    MPI_Comm comm = MPI_COMM_NULL;
    int size = 1;
    std::vector<int> members;
    std::string broken;  // why later collectives fail at once (an earlier one timed out)
    // Control plane: a duplicate of `comm` (its own matching context: control collectives
    // never pair with data ones) and why later control operations fail at once.
    MPI_Comm control = MPI_COMM_NULL;
    std::string control_broken;
  };

  std::string prefix() const { return "rank " + std::to_string(rank_) + ": "; }
  Status mpi_fail(const std::string &what, int rc) const {
    return Status::error(prefix() + what + " failed: " + mpi_error_string(rc));
  }
  /// Polls until every request completes (true) or the deadline passes (false). *rc gets
  /// MPI_Testall's return code when it is not MPI_SUCCESS (then returns true).
  bool poll(std::vector<MPI_Request> &reqs, std::vector<MPI_Status> *statuses,
            Clock::time_point deadline, int *rc);
  /// Tests pending sends once, drops the completed ones; keeps the first send error.
  void reap_sends();
  Status check_peer_tag(const char *op, int peer, int tag, int64_t bytes, const void *data) const;
  std::string send_desc(const PendingSend &ps) const { return comm_detail::send_desc(ps.peer, ps.tag, ps.bytes); }
  /// The receive of recv / recv_control on `comm`: `op` names it in errors.
  Status timed_recv(MPI_Comm comm, const char *op, int peer, int tag, void *data, int64_t bytes);
  /// Control plane setup (mpi_control.cpp): the control duplicates of the group communicators
  /// and of the world, created non-blocking and polled against `deadline`.
  Status init_control(Clock::time_point deadline);
  void free_control();
  /// One control collective `op` over `g` (mpi_control.cpp): arrival tokens to and from every
  /// other member, then the requests `start` posts on g.control (none for a barrier), polled
  /// together against the deadline; `what` describes the call for errors.
  Status control_collective(Group &g, const char *op, const std::string &what,
                            const std::function<int(MPI_Comm, std::vector<MPI_Request> &)> &start);
  /// The group of a control collective and the description "<op> over group 'g' (ranks ...)".
  Status control_group(const char *op, const std::string &group, Group **g, std::string *what);

  int rank_, size_;
  MPI_Comm world_ = MPI_COMM_NULL;    // private duplicate of MPI_COMM_WORLD (point-to-point)
  MPI_Comm control_world_ = MPI_COMM_NULL;  // another one: send_control / recv_control
  Group groups_[8];                   // by axis bits (comm_impl.h); [0] = this rank alone
  int tag_ub_ = 32767;
  std::list<PendingSend> pending_;
  std::map<int, Pending> async_;  // all_reduce_start handles not yet waited for
  Status send_error_;
};

} // namespace parallora::rt::comm_detail
