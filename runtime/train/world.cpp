//===- world.cpp - MPI start-up and the session's control traffic ----------===//
#include "runtime/train/world.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include <mpi.h>

namespace parallora::rt {

bool launched_by_mpi_launcher() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

World init_world(bool need_mpi, double timeout_seconds) {
  World w;
  if (!launched_by_mpi_launcher() && !need_mpi) return w;
  // MPI_Init_thread waits for every rank of the job (Open MPI's start-up exchange); a rank
  // stopped or stuck before it would hold the others there forever, before the communicator's
  // own timeouts exist. A watchdog ends this process after timeout_seconds with an error; the
  // launcher then ends the job.
  std::mutex mu;
  std::condition_variable cv;
  bool started = false;
  std::thread watchdog;
  if (timeout_seconds > 0)
    watchdog = std::thread([&] {
      std::unique_lock<std::mutex> lock(mu);
      if (cv.wait_for(lock, std::chrono::duration<double>(timeout_seconds), [&] { return started; })) return;
      char line[256];
      const int n = std::snprintf(line, sizeof line,
                                  "lora-run: error: MPI start-up (MPI_Init) did not complete within %g s "
                                  "(--comm-timeout): a rank of the job stopped, died or never started\n",
                                  timeout_seconds);
      if (n > 0) (void)!::write(2, line, size_t(n));
      std::_Exit(1);
    });
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  if (watchdog.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu);
      started = true;
    }
    cv.notify_all();
    watchdog.join();
  }
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


// Everything below goes through the communicator's timed control plane (comm.h): a stopped or
// dead peer becomes an error naming it after --comm-timeout, never a hang.
static const char *const kWorld = "dp,tp,pp";  // every mesh axis: the whole world

Status control_barrier(Communicator &comm) { return comm.barrier(kWorld); }

Status control_sum(Communicator &comm, double *data, int64_t count) {
  return comm.all_reduce_f64(kWorld, data, count, ReduceOp::Sum);
}

Status control_gather(Communicator &comm, const double *mine, int64_t count, double *all) {
  return comm.gather_f64(kWorld, mine, count, all);
}

Status control_broadcast(Communicator &comm, void *data, int64_t bytes) {
  return comm.broadcast_bytes(kWorld, data, bytes, 0);
}

Status control_send(Communicator &comm, int peer, int tag, const float *data, int64_t count) {
  return comm.send_control(peer, tag, data, count * static_cast<int64_t>(sizeof(float)));
}

Status control_recv(Communicator &comm, int peer, int tag, float *data, int64_t count) {
  return comm.recv_control(peer, tag, data, count * static_cast<int64_t>(sizeof(float)));
}

} // namespace parallora::rt
