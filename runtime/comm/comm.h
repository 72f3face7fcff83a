//===- comm.h - the collectives a rank's kernels use (MPI on CPU ranks) ----===//
//
// One Communicator per rank. It knows the plan's mesh and this rank's coordinates, and runs
// collectives on a `group`: the ranks that share this rank's coordinates on every mesh axis
// NOT named in the group ("tp" = this rank's tensor-parallel peers, "dp,tp" = its whole pipeline
// stage, "" = this rank alone). Group names list axes in dp,tp,pp order.
//
// Every blocking call waits at most `timeout_seconds`; a peer that never answers (dead, or a
// plan mismatch) becomes an error naming the operation, the group and the peers, never a hang.
//
// BYTES SENT (what the compiler predicts and the runtime reports, per rank): the algorithmic
// bytes of the textbook algorithm, like nccl-tests' "bus bytes":
//   all_reduce of n bytes over a group of g ranks: 2 * (g - 1) / g * n  (ring), 0 when g == 1
//   send of n bytes: n;  recv: 0
//   broadcast of n bytes over g ranks: the root counts (g - 1) * n (what it sends with a flat
//   tree), the others 0; kind "broadcast"
// counted under the kind "all_reduce" or "send". Exact integer formula: 2 * (g - 1) * n / g
// with n a multiple of 4 bytes (rounded down).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/plan/collective_bytes.h"
#include "runtime/kernel.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

enum class ReduceOp { Sum, Max };

class Communicator {
public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  const plan::Mesh &mesh() const { return mesh_; }
  plan::MeshCoord coord() const { return plan::coord_of(mesh_, rank()); }
  /// This rank's index along `axis` ("dp", "tp" or "pp"); -1 for any other name.
  int coord(const std::string &axis) const;
  /// Number of ranks in `group` (product of the named axes' sizes); error text for a bad name.
  StatusOr<int> group_size(const std::string &group) const;
  /// The world ranks of `group` (this rank's), ascending; error text for a bad name.
  StatusOr<std::vector<int>> group_ranks(const std::string &group) const;
  /// This rank's index in `group`: its position in group_ranks(group) (= its rank in the
  /// group's MPI sub-communicator; for "tp" the tp coordinate). Sharded kernels (vocab_group)
  /// hold shard number group_rank(group).
  StatusOr<int> group_rank(const std::string &group) const;

  /// In-place all-reduce of `count` elements of type `dtype` (F32 or BF16) over `group`. BF16
  /// sums are taken in f32 and rounded to bf16 after every pairwise combination (as NCCL's bf16
  /// all-reduce does); the bytes counted are the bf16 bytes.
  virtual Status all_reduce(const std::string &group, void *data, int64_t count, plan::ElemType dtype,
                            ReduceOp op) = 0;
  /// The f32 case.
  Status all_reduce(const std::string &group, float *data, int64_t count, ReduceOp op) {
    return all_reduce(group, data, count, plan::ElemType::F32, op);
  }
  /// Non-blocking all-reduce (gradient buckets overlapped with the rest of the backward):
  /// all_reduce_start begins the in-place reduction of `data` under `handle` (a small integer,
  /// the plan's bucket number) and returns; `data` must stay untouched until
  /// all_reduce_wait(handle) returns, which completes it (same deadline and errors as
  /// all_reduce). Starts must be issued in the same order on every member (collective order).
  /// progress() lets outstanding reductions advance (the executor calls it between kernels
  /// while any is outstanding). The bytes are counted at the start. The default implementation
  /// completes the reduction inside all_reduce_start (no overlap); the MPI communicator overlaps.
  virtual Status all_reduce_start(int handle, const std::string &group, void *data, int64_t count,
                                  plan::ElemType dtype, ReduceOp op);
  virtual Status all_reduce_wait(int handle);
  virtual void progress() {}
  /// True while all_reduce_start(handle) has not been waited for.
  bool started(int handle) const { return started_.count(handle) != 0; }
  bool any_started() const { return !started_.empty(); }
  /// Staging bytes owned by the communicator for bucket `handle` (kept across steps).
  std::vector<char> &staging(int handle) { return staging_[handle]; }

  /// Broadcast of `count` floats from the group member with group index `root` (its position in
  /// group_ranks(group)) to the others. The default handles groups of one rank and refuses more;
  /// the MPI communicator implements it.
  virtual Status broadcast(const std::string &group, float *data, int64_t count, int root);
  /// Point-to-point between world ranks. send never blocks on the receiver (the data is copied
  /// to a staging buffer first); recv blocks until the message (peer, tag) arrives or times out.
  /// Messages with the same (peer, tag) arrive in the order sent.
  virtual Status send(int peer, int tag, const void *data, int64_t bytes) = 0;
  virtual Status recv(int peer, int tag, void *data, int64_t bytes) = 0;
  /// Waits for every outstanding send (call before the buffers they came from are reused
  /// across optimizer steps, and at the end of training).
  virtual Status flush() = 0;

  /// Bytes sent so far, by kind ("all_reduce", "send"), counted as described above.
  const std::map<std::string, int64_t> &bytes_sent() const { return bytes_sent_; }
  void reset_bytes() { bytes_sent_.clear(); }

  double timeout_seconds = 300;

protected:
  explicit Communicator(plan::Mesh mesh) : mesh_(mesh) {}
  void count_all_reduce(int64_t bytes, int group_ranks);
  void count_send(int64_t bytes) { bytes_sent_["send"] += bytes; }
  void count_broadcast(int64_t bytes, int group_ranks, bool root) {
    if (root && group_ranks > 1) bytes_sent_["broadcast"] += int64_t(group_ranks - 1) * bytes;
  }

  plan::Mesh mesh_;
  std::map<std::string, int64_t> bytes_sent_;
  std::map<int, std::string> started_;  // handle -> what (for errors), until waited for
  std::map<int, std::vector<char>> staging_;
};

/// A group as a kernel sees it: its size and this rank's index in it (group_rank).
struct GroupInfo {
  int size = 1;
  int index = 0;
};
/// Resolves `group` for a kernel with a vocab_group / norm_group attr. `comm` may be null: then
/// only "" (this rank alone) resolves; any other group is an error saying a communicator is
/// needed. A bad group name is an error naming the axis.
StatusOr<GroupInfo> resolve_group(const Communicator *comm, const std::string &group);

/// A world of one rank (no MPI): every collective is the identity, send/recv are errors.
std::unique_ptr<Communicator> make_local_communicator();

/// MPI: MPI_Init must have been called (one thread calls the communicator; MPI_THREAD_SINGLE
/// or FUNNELED is enough). Checks that MPI_COMM_WORLD's size equals mesh.size()
/// (else an error naming both), then builds one sub-communicator per group. `timeout_seconds`
/// bounds the setup's own waits and becomes the communicator's timeout_seconds.
StatusOr<std::unique_ptr<Communicator>> make_mpi_communicator(const plan::Mesh &mesh,
                                                             double timeout_seconds = 300);

/// Registers the collective kernels ("all_reduce", "send", "recv"; contract in
/// runtime/cpu/kernels.h) into a registry. They use KernelCall::comm.
void register_collective_kernels(KernelRegistry &registry);

/// A collective kernel's error: "<kernel> (<loc>): <msg>" (no loc part without one). Shared by
/// the host collective kernels and the NCCL ones (runtime/cuda/nccl_comm.cu).
Status collective_error(const KernelCall &c, const char *kernel, const std::string &msg);
/// The collective's string attr `group` and that group's size (1 for "" and for one rank); an
/// absent attr, a bad group, or a group of several axes without a communicator is an error.
Status collective_group(const KernelCall &c, const char *kernel, std::string *group, int *size);
/// all_reduce_start / all_reduce_wait: the integer attr `bucket` (the Communicator handle), and a
/// communicator must be given.
Status collective_bucket(const KernelCall &c, const char *kernel, int *handle);

} // namespace parallora::rt
