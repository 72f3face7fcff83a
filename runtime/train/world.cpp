//===- world.cpp - MPI start-up and the session's control traffic ----------===//
#include "runtime/train/world.h"

#include <cstdlib>

#include <mpi.h>

namespace parallora::rt {

bool launched_by_mpi_launcher() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

World init_world(bool need_mpi) {
  World w;
  if (!launched_by_mpi_launcher() && !need_mpi) return w;
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  w.mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  return w;
}

void finalize_world(World &w) {
  if (w.mpi) MPI_Finalize();
  w.mpi = false;
}

void abort_world(const World &w, int code) {
  if (w.mpi) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}


Status control_barrier(Communicator &comm) {
  if (comm.world_size() == 1) return Status::ok();
  MPI_Barrier(MPI_COMM_WORLD);
  return Status::ok();
}

Status control_sum(Communicator &comm, double *data, int64_t count) {
  if (comm.world_size() == 1) return Status::ok();
  MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return Status::ok();
}

Status control_gather(Communicator &comm, const double *mine, int64_t count, double *all) {
  if (comm.world_size() == 1) {
    for (int64_t i = 0; i < count; ++i) all[i] = mine[i];
    return Status::ok();
  }
  MPI_Gather(mine, static_cast<int>(count), MPI_DOUBLE, all, static_cast<int>(count), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return Status::ok();
}

Status control_broadcast(Communicator &comm, void *data, int64_t bytes) {
  if (comm.world_size() == 1) return Status::ok();
  MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, 0, MPI_COMM_WORLD);
  return Status::ok();
}

Status control_send(Communicator &comm, int peer, int tag, const float *data, int64_t count) {
  (void)comm;
  MPI_Send(data, static_cast<int>(count), MPI_FLOAT, peer, tag, MPI_COMM_WORLD);
  return Status::ok();
}

Status control_recv(Communicator &comm, int peer, int tag, float *data, int64_t count) {
  (void)comm;
  MPI_Recv(data, static_cast<int>(count), MPI_FLOAT, peer, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  return Status::ok();
}

} // namespace parallora::rt
