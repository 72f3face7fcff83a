//===- output_dir.cpp - one run per output directory -----------------------===//
#include "runtime/train/output_dir.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <sys/file.h>
#include <unistd.h>

#include "runtime/base/fs_util.h"
#include "runtime/train/checkpoint_store.h"
#include "runtime/train/world.h"

namespace parallora::rt {
namespace fs = std::filesystem;

bool is_run_output(const std::string &name) {
  return name == "metrics.jsonl" || name == "summary.json" || name == "adapter" || name == "latest" ||
         checkpoint_dir_step(name) >= 0;
}

bool is_save_leftover(const std::string &name) {
  // "<x>.tmp-<pid>" (a save or a removal in progress) and "<x>.old-<pid>" (fs_util's replace_dir
  // fallback moving an old checkpoint aside).
  for (const char *mark : {".tmp-", ".old-"}) {
    const size_t at = name.rfind(mark);
    if (at == std::string::npos || at == 0 || at + 5 == name.size()) continue;
    bool digits = true;
    for (size_t i = at + 5; i < name.size(); ++i) digits &= name[i] >= '0' && name[i] <= '9';
    if (digits) return true;
  }
  return false;
}

StatusOr<OutputDir> OutputDir::claim(const std::string &dir_in, bool resuming, bool overwrite,
                                     std::vector<std::string> *removed) {
  const std::string dir = fsutil::strip_trailing_slashes(dir_in);
  if (Status s = fsutil::create_dirs(dir); !s) return Status::error("--out " + dir + ": " + s.message());
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status::error("--out " + dir + " is not a directory");
  OutputDir out;
  out.dir_ = dir;
  const std::string lock = dir + "/.lock";
  out.lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (out.lock_fd_ < 0) return Status::error("--out " + dir + ": cannot create " + lock + ": " + std::strerror(errno));
  if (::flock(out.lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = ::pread(out.lock_fd_, buf, sizeof buf - 1, 0);
    std::string owner = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("unknown");
    while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
    return Status::error("--out " + dir + " is in use by another lora-run (pid " + owner +
                         ", holding " + lock + "); wait for it to finish or choose another --out");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(out.lock_fd_, 0) != 0 || ::pwrite(out.lock_fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    return Status::error("--out " + dir + ": cannot write " + lock + ": " + std::strerror(errno));

  std::vector<std::string> outputs, leftovers;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (is_save_leftover(name)) leftovers.push_back(name);
    else if (is_run_output(name)) outputs.push_back(name);
  }
  if (ec) return Status::error("--out " + dir + ": cannot list: " + ec.message());
  std::sort(outputs.begin(), outputs.end());
  std::sort(leftovers.begin(), leftovers.end());
  for (const std::string &name : leftovers) {
    fsutil::remove_all_quiet(dir + "/" + name);
    if (removed) removed->push_back(name);
  }
  if (!outputs.empty() && !resuming) {
    if (!overwrite) {
      std::string list;
      for (size_t i = 0; i < outputs.size() && i < 4; ++i) list += (i ? ", " : "") + outputs[i];
      if (outputs.size() > 4) list += ", ...";
      return Status::error("--out " + dir + " already holds a run (" + list + "); continue it with --resume " + dir +
                           ", replace it with --overwrite, or choose another --out");
    }
    for (const std::string &name : outputs) {
      fsutil::remove_all_quiet(dir + "/" + name);
      if (removed) removed->push_back(name);
    }
  }
  return out;
}

Status check_out_shared(Communicator &comm, const std::string &out) {
  const bool rank0 = comm.rank() == 0;
  uint64_t token = 0;
  // A leftover if killed before it is removed: the next start removes it (is_save_leftover).
  const std::string probe = out + "/.shared.tmp-" + std::to_string(::getpid());
  if (rank0) {
    token = (static_cast<uint64_t>(::getpid()) << 32) ^
            static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    if (Status s = fsutil::write_file_atomic(probe, std::to_string(token) + "\n"); !s) return s;
  }
  char name[4096] = {0};
  if (rank0) std::snprintf(name, sizeof name, "%s", probe.c_str());
  if (Status s = control_broadcast(comm, &token, sizeof token); !s) return s;
  if (Status s = control_broadcast(comm, name, sizeof name); !s) return s;
  std::string seen;
  const double blind = fsutil::read_file(name, &seen) && seen == std::to_string(token) + "\n" ? 0.0 : 1.0;
  std::vector<double> all(rank0 ? static_cast<size_t>(comm.world_size()) : 0);
  if (Status s = control_gather(comm, &blind, 1, rank0 ? all.data() : nullptr); !s) return s;
  double blind_ranks = blind;
  if (Status s = control_sum(comm, &blind_ranks, 1); !s) return s;
  if (rank0) ::unlink(probe.c_str());
  if (blind_ranks == 0) return Status::ok();
  std::string list;
  for (int r = 0; r < static_cast<int>(all.size()); ++r)
    if (all[r] > 0) list += (list.empty() ? "" : ",") + std::to_string(r);
  return Status::error("--out " + out + " is not the same directory on every rank: rank(s) " + list +
                       " cannot read the file rank 0 wrote there (" + name +
                       "); runs across hosts need --out on a filesystem mounted at the same path on every host");
}

OutputDir::OutputDir(OutputDir &&o) noexcept : dir_(std::move(o.dir_)), lock_fd_(o.lock_fd_) { o.lock_fd_ = -1; }

OutputDir &OutputDir::operator=(OutputDir &&o) noexcept {
  if (this != &o) {
    if (lock_fd_ >= 0) ::close(lock_fd_);
    dir_ = std::move(o.dir_);
    lock_fd_ = o.lock_fd_;
    o.lock_fd_ = -1;
  }
  return *this;
}

OutputDir::~OutputDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // closing the last descriptor drops the flock
}

} // namespace parallora::rt
