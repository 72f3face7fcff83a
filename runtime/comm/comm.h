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
// CONTROL PLANE (barrier, all_reduce_f64, gather_f64, broadcast_bytes, send_control /
// recv_control): the training session's own coordination (the loss sum printed each step, the
// barriers around checkpoints, the pid broadcast, the summary rows gathered to rank 0, the
// adapter slices sent to rank 0), never a plan's tensors. It is NOT counted in bytes_sent()
// (those bytes are compared with the compiler's prediction). Like the rest, every call waits at
// most `timeout_seconds`, then fails with an error naming the operation, the group (its world
// ranks) and the peers that did not arrive, e.g.
//   rank 0: barrier over group 'dp,tp,pp' (ranks 0,1,2,3) did not complete within 0.5 s:
//   rank(s) 3 did not arrive (stopped, dead, or not calling barrier)
// The MPI communicator runs it on private duplicates of its communicators (control messages
// never match data-plane send / recv, whatever the tags): each collective also exchanges a
// zero-byte arrival token with every other group member, which is how it knows who is missing
// (2 (g - 1) tiny messages per rank and call: meant for a few calls per step, not for data).
// After a control collective times out, later control collectives over that group fail at once.
// The NCCL communicator forwards its control plane to the MPI communicator it was bootstrapped
// with; the one-rank communicator has only groups of one rank (identity).
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
  /// lora-run --trace: measure the device time of the overlapped reductions, where the backend
  /// can (the NCCL communicator: CUDA events around each bucket's ncclAllReduce).
  virtual void set_device_timing(bool /*on*/) {}
  /// After all_reduce_wait(handle): its reduction's begin / end on the device, on this process's
  /// steady clock (ns), once; false when not measured.
  virtual bool device_span(int /*handle*/, int64_t * /*begin_ns*/, int64_t * /*end_ns*/) { return false; }
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

  // ---- Control plane (file comment, CONTROL PLANE): not counted in bytes_sent(). Collectives
  // must be called by every member of `group` in the same order. The defaults handle groups of
  // one rank and refuse larger ones (and refuse send_control / recv_control: no peers).

  /// Returns once every member of `group` has called barrier(group).
  virtual Status barrier(const std::string &group);
  /// In-place all-reduce of `count` doubles over `group`. The MPI communicator uses
  /// MPI_Iallreduce(MPI_DOUBLE) on a duplicate of the group's communicator: over the whole
  /// world ("dp,tp,pp") it gives the bits of MPI_Allreduce(MPI_DOUBLE, MPI_COMM_WORLD) wherever
  /// the MPI library's blocking and non-blocking reductions add in the same order (Open MPI
  /// 4.1.4: checked for 1-4 and 6-8 ranks; not 5, and MPI does not promise it).
  virtual Status all_reduce_f64(const std::string &group, double *data, int64_t count, ReduceOp op);
  /// Gathers `count` doubles from every member to group index 0: there `all` receives
  /// count * group_size doubles, member i's at [i * count, (i + 1) * count); `all` may be null
  /// on the other members.
  virtual Status gather_f64(const std::string &group, const double *mine, int64_t count, double *all);
  /// `bytes` bytes from group index `root` to every member of `group`.
  virtual Status broadcast_bytes(const std::string &group, void *data, int64_t bytes, int root);
  /// Point-to-point between world ranks, apart from send / recv (their own matching: a control
  /// message never pairs with a data one). send_control returns once the receiver has taken
  /// the message (synchronous send), recv_control once it has arrived; each waits at most
  /// timeout_seconds. Messages with the same (peer, tag) arrive in the order sent. A rank
  /// cannot send to itself.
  virtual Status send_control(int peer, int tag, const void *data, int64_t bytes);
  virtual Status recv_control(int peer, int tag, void *data, int64_t bytes);

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
/// the host collective kernels and the NCCL ones (runtime/cuda/nccl_collective_kernels.cu).
Status collective_error(const KernelCall &c, const char *kernel, const std::string &msg);
/// The collective's string attr `group` and that group's size (1 for "" and for one rank); an
/// absent attr, a bad group, or a group of several axes without a communicator is an error.
Status collective_group(const KernelCall &c, const char *kernel, std::string *group, int *size);
/// all_reduce_start / all_reduce_wait: the integer attr `bucket` (the Communicator handle), and a
/// communicator must be given.
Status collective_bucket(const KernelCall &c, const char *kernel, int *handle);
/// The operand checks of the host collective kernels, shared with the NCCL ones (same order,
/// same messages):
/// as many outputs as inputs;
Status collective_pairs(const KernelCall &c, const char *kernel);
/// all_reduce: collective_pairs, collective_group, then x_i / y_i present, all f32 or all bf16
/// (x_0's type), y_i of x_i's size; the element type and the total element count;
Status collective_all_reduce_operands(const KernelCall &c, const char *kernel, std::string *group, int *size,
                                      plan::ElemType *dtype, int64_t *total);
/// broadcast: collective_pairs, collective_group, attr `roots` (one group index in [0, size) per
/// tensor), present f32 tensors with outputs of the inputs' sizes;
Status collective_broadcast_operands(const KernelCall &c, const char *kernel, std::string *group, int *size,
                                     std::vector<int64_t> *roots);
/// all_reduce_start's inputs: present, all f32 or all bf16 (x_0's type); their elements and bytes;
Status collective_bucket_inputs(const KernelCall &c, const char *kernel, plan::ElemType *dtype, int64_t *total,
                                int64_t *bytes);
/// all_reduce_wait's outputs (after collective_pairs): y_i of x_i's type and size; their bytes.
Status collective_bucket_outputs(const KernelCall &c, const char *kernel, int64_t *bytes);

} // namespace parallora::rt
