//===- nccl_comm.h - the NCCL communicator: collectives stay on the GPU -----===//
//
// Plain C++ (no CUDA / NCCL headers): lora-run and the tests include this. Compiled into
// parallora_cuda only when NCCL is found (then PARALLORA_HAVE_NCCL=1 is defined for every
// target linking parallora_cuda); guard uses with #if PARALLORA_HAVE_NCCL.
//
// WHAT IT IS: a Communicator (runtime/comm/comm.h) whose all_reduce / broadcast / send / recv
// are NCCL operations enqueued on the backend's stream (cuda::stream()), so they are ordered
// after the kernels that produced their inputs without a host round trip. Same groups, same
// group indices, same byte counting (all_reduce_bytes_sent, count_send, count_broadcast) and the
// same "no hang" rule as the MPI communicator: every wait polls cudaStreamQuery /
// cudaEventQuery and ncclCommGetAsyncError against `timeout_seconds`; on timeout the NCCL
// communicator involved is aborted (ncclCommAbort: the only way to stop a stuck NCCL kernel),
// the group (or point-to-point) is marked broken so later calls fail at once, and the error
// names the operation, the group and its ranks (or the peer and tag), the bytes and the timeout.
//
// SETUP (make_nccl_communicator): builds the MPI communicator first (world-size check, mesh
// handshake, and the bootstrap channel), then exchanges once, over a private duplicate of
// MPI_COMM_WORLD (MPI_Iallgather, polled against the deadline), every rank's (hostname, PCI bus
// id of its current CUDA device) and the ncclUniqueId of every group it leads (the group's
// lowest world rank = group index 0 calls ncclGetUniqueId; this is the "rank 0 of the group's
// sub-communicator broadcasts the id" step done for all groups in one collective). Then it
// checks that no two ranks of one NCCL communicator share a GPU (check_one_rank_per_gpu: NCCL
// 2.5-2.29 refuses that, "Duplicate GPU detected"), and creates, eagerly and in the same order
// on every rank, one ncclComm_t per group of more than one rank (groups with identical members,
// e.g. "tp" and "dp,tp" when dp == 1, share one) plus two world communicators for send/recv
// (below), each with ncclCommInitRankConfig(config.blocking = 0) polled until ready or timeout.
//
// TYPES: all_reduce takes f32 (ncclFloat32) or bf16 (ncclBfloat16: NCCL combines bf16 in f32
// and rounds to bf16 per combination, like the MPI communicator's user op); i32 is an error.
// broadcast is f32 (trainables); send / recv move bytes. The device-side "all_reduce" kernel
// accepts a list of f32 or of bf16 tensors (one type per call, the host kernel's rule) and
// applies `scale` in f32 with one rounding for bf16.
//
// DATA: pointers must be device-accessible for the zero-copy path (CUDA managed memory, as the
// executor's buffers are, or device memory). A host pointer (pageable or pinned) is accepted
// too: it is staged through a device buffer (the CUDA backend's clipping reduction passes a
// float on the host stack). Every call waits for its result before returning (all_reduce,
// broadcast, recv), so host code may read the data right after, exactly as with MPI.
//
// SEND / RECV: NCCL has no tags. Messages between a pair of ranks in one direction are matched
// in ISSUE ORDER; REQUIREMENT: both ranks issue their sends / recvs to each other in the same
// order with the same sizes (the plan's pipeline schedules guarantee it: the recv of message k
// from a peer is issued by the receiver in the order the sender issues its sends). `tag` only
// appears in error messages. A size mismatch is not detected by NCCL: it shows up as a timeout.
//   send: copies the data into a stream-ordered device staging buffer on stream() (so the
//   caller may overwrite its buffer at once, like the MPI communicator's staging copy), then
//   enqueues ncclSend on a dedicated send stream that waits for that copy (event), and returns
//   without waiting. flush() waits (deadline) for every outstanding send.
//   recv: enqueues ncclRecv on stream() and waits (deadline): the next kernel needs the data.
//   NCCL serializes all operations of one communicator in issue order on the GPU, and a send
//   does not complete before the receiver posts its recv. With one world communicator, rank A
//   doing send(B) then recv(B) while B does send(A) then recv(A) (1F1B's cross pattern) would
//   deadlock once messages exceed NCCL's buffers. So messages travel on one of two world
//   communicators by direction: "up" (sender's world rank < receiver's) and "down"; a rank's
//   sends to higher ranks never queue behind its recvs from higher ranks.
//   Sending to oneself is an error (no plan does it; NCCL would need send and recv grouped).
//
// FILES: nccl_comm.cu (setup, collectives, send / recv), nccl_collective_kernels.cu (KERNELS),
// nccl_communicator.cuh (the class both use; private).
//
// CONTROL PLANE (comm.h: barrier, all_reduce_f64, gather_f64, broadcast_bytes, send_control /
// recv_control): forwarded to the MPI communicator built at setup, with this communicator's
// timeout_seconds; host memory, never NCCL, never counted in bytes_sent().
//
// KERNELS: register_nccl_collective_kernels() replaces "all_reduce", "broadcast",
// "all_reduce_start" and "all_reduce_wait" in a registry with device-side versions (bucket
// packing, the scale attr and the copy x -> y done on stream(), never on the host) and installs
// the plain "send" / "recv" kernels (they only call comm->send / comm->recv). Call it AFTER
// cuda::register_kernels(), whose host-staged collective wrappers it overrides, and only with
// this communicator in KernelCall::comm (with another communicator a single tensor is reduced
// host-staged by that communicator; a multi-tensor bucket and broadcast, whose staging is device
// memory, fail with a message naming --collectives nccl).
//
// OVERLAP (the compiler's overlapped gradient buckets: all_reduce_start in the backward right
// after a bucket's last gradient, on the last micro-batch only; all_reduce_wait in
// optimizer_step). A second, high-priority stream (the comm stream) carries the reductions:
//   all_reduce_start(handle, ...)  records an event on stream() (after the kernels that produced
//       the data), makes the comm stream wait for it, enqueues ncclAllReduce in place on the comm
//       stream and records a "done" event; returns at once (bytes counted here). The device
//       kernel first packs x_i into a per-bucket device staging buffer on stream().
//   all_reduce_wait(handle)  waits on the host for the done event only (deadline; the group's
//       ncclCommGetAsyncError watched; on timeout the communicator is aborted and the error names
//       the bucket, the group and its ranks), then makes stream() wait for the event; the device
//       kernel unpacks scale * sum into y_i on stream(). stream() itself is never synchronized:
//       the backward's queued kernels run while the buckets reduce.
//   progress()  surfaces an asynchronous NCCL error of an in-flight bucket early.
//   A wait without a start (not the last micro-batch) is the whole device all_reduce.
// Buckets are started in the same order on every rank (the plan orders them), which NCCL needs.
// NCCL serializes the operations of one communicator in issue order whatever the stream, so a
// blocking collective over the same group issued while buckets are in flight (the clipping norm
// in optimizer_step) runs after them. Two different communicators in flight at once (a
// tensor-parallel all_reduce on stream() while "dp" buckets reduce on the comm stream) rely on
// every rank issuing them in the same order (true for the plans); a deadlock there would surface
// as the wait's timeout, not a hang.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/comm/comm.h"
#include "runtime/kernel.h"
#include "runtime/plan/plan.h"

namespace parallora::rt::cuda {

/// Where one rank runs: its host and its GPU (PCI bus id, or any string unique per GPU on a
/// host). Two ranks share a GPU when both strings are equal.
struct RankDevice {
  std::string host;
  std::string device;
};

/// A set of world ranks that will form one NCCL communicator, with a name for messages.
struct CommGroup {
  std::string name;
  std::vector<int> ranks;
};

/// Pure check (no CUDA, no MPI): ok when no group of two or more ranks holds two ranks on the
/// same (host, device). Otherwise an error naming the group, its ranks, the two ranks, the GPU
/// and the host, and saying to use the host-staged MPI collectives (`--collectives mpi`). When
/// several groups are violated, the smallest one is reported (ties: the first). A rank outside
/// [0, devices.size()) in a group is an error too.
Status check_one_rank_per_gpu(const std::vector<RankDevice> &devices,
                              const std::vector<CommGroup> &groups);

/// The NCCL communicator (file comment). Requires MPI_Init, a usable CUDA device (the backend's
/// choice: cuda::available() is called, which sets local rank % device count on this thread;
/// the communicator then uses cudaGetDevice) and must be used from that thread.
/// `timeout_seconds` bounds the setup and becomes the communicator's timeout_seconds.
/// Errors: MPI not initialized / world size != mesh size (from make_mpi_communicator), no
/// usable GPU, two ranks of one group on one GPU, NCCL init failure or timeout.
/// `single_rank_comms` (tests): also give one-rank groups an NCCL communicator (a world of 1
/// then exercises the NCCL calls on one GPU); normally one-rank groups are the identity.
StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(const plan::Mesh &mesh,
                                                              double timeout_seconds = 300,
                                                              bool single_rank_comms = false);

/// Device-side "all_reduce" / "broadcast" and plain "send" / "recv" (file comment, KERNELS).
void register_nccl_collective_kernels(KernelRegistry &registry);

/// "NCCL 2.28.9" (the library linked in), for logs.
std::string nccl_version_string();

} // namespace parallora::rt::cuda
