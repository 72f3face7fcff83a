//===- world.h - this process's place among the ranks, and control traffic -===//
//
// A training session runs one process per rank (mpirun, or torchrun-style variables through
// Open MPI). World says which rank this is; the control_* functions are the session's own
// traffic between ranks (the logged loss sum, the checkpoint's barriers, the end-of-run report),
// which is not part of the plan and so not counted in the communicator's bytes.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>

#include "runtime/base/status.h"
#include "runtime/comm/comm.h"

namespace parallora::rt {

/// This process's place in the world. `mpi`: MPI_Init was called (and MPI_Finalize is due).
struct World {
  bool mpi = false;
  int rank = 0;
  int size = 1;
};

/// True when mpirun (Open MPI), a PMI or PMIx launcher started this process.
bool launched_by_mpi_launcher();

/// Initializes MPI when a launcher started us or `need_mpi` (a plan of several ranks). When MPI's
/// start-up has not completed after `timeout_seconds` (> 0; --comm-timeout), for instance because
/// another rank was stopped before it, the process exits 1 with an error saying so.
World init_world(bool need_mpi, double timeout_seconds = 0);
/// MPI_Finalize when init_world started MPI.
void finalize_world(World &w);
/// Ends every rank of the job (MPI_Abort) after a rank-local failure; no-op without MPI.
[[noreturn]] void abort_world(const World &w, int code);

// Control traffic over the whole world, timed by the communicator's timeout. `comm` is the
// session's communicator (one rank: every call is local).
Status control_barrier(Communicator &comm);
/// In-place sum over the world of `count` doubles.
Status control_sum(Communicator &comm, double *data, int64_t count);
/// Rank 0 receives every rank's `count` doubles in rank order in `all` (null elsewhere).
Status control_gather(Communicator &comm, const double *mine, int64_t count, double *all);
/// Rank 0's `count` bytes to every rank.
Status control_broadcast(Communicator &comm, void *data, int64_t bytes);
/// Point-to-point floats for assembling full tensors on rank 0.
Status control_send(Communicator &comm, int peer, int tag, const float *data, int64_t count);
Status control_recv(Communicator &comm, int peer, int tag, float *data, int64_t count);

} // namespace parallora::rt
