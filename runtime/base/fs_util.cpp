//===- fs_util.cpp - durable file and directory updates --------------------===//
#include "runtime/base/fs_util.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace parallora::rt::fsutil {

std::string strip_trailing_slashes(const std::string &path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string parent_dir(const std::string &path) {
  fs::path parent = fs::path(strip_trailing_slashes(path)).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

Status create_dirs(const std::string &dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::error("cannot create directory " + dir + ": " + ec.message());
  if (!fs::is_directory(dir, ec))
    return Status::error("cannot create directory " + dir + ": a file of that name exists");
  return Status::ok();
}

Status fsync_dir(const std::string &dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::error("cannot open directory " + dir + ": " + std::strerror(errno));
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  // Some file systems do not support fsync on directories; that is not a failure of ours.
  if (rc != 0 && e != EINVAL && e != EROFS)
    return Status::error("cannot fsync directory " + dir + ": " + std::strerror(e));
  return Status::ok();
}

std::string tmp_suffix() { return ".tmp-" + std::to_string(long(::getpid())); }

Status write_file_atomic(const std::string &path, const std::string &contents) {
  const std::string tmp = path + tmp_suffix();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::error("cannot create " + tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return Status::error("cannot write " + tmp + ": " + std::strerror(e));
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return Status::error("cannot fsync " + tmp + ": " + std::strerror(e));
  }
  if (::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return Status::error("cannot close " + tmp + ": " + std::strerror(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return Status::error("cannot rename " + tmp + " to " + path + ": " + std::strerror(e));
  }
  return fsync_dir(parent_dir(path));
}

Status read_file(const std::string &path, std::string *out) {
  std::FILE *f = std::fopen(path.c_str(), "rb");
  if (!f) return Status::error("cannot open " + path + ": " + std::strerror(errno));
  out->clear();
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  bool err = std::ferror(f) != 0;
  std::fclose(f);
  if (err) return Status::error("cannot read " + path);
  return Status::ok();
}

void remove_all_quiet(const std::string &path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

Status remove_dir_atomically(const std::string &path) {
  const std::string doomed = path + tmp_suffix();
  remove_all_quiet(doomed);
  if (::rename(path.c_str(), doomed.c_str()) != 0)
    return Status::error("cannot move " + path + " aside to " + doomed + " for removal: " + std::strerror(errno));
  std::error_code ec;
  fs::remove_all(doomed, ec);
  if (ec) return Status::error("cannot remove " + doomed + ": " + ec.message());
  return Status::ok();
}

Status replace_dir(const std::string &tmp, const std::string &dst) {
  std::error_code ec;
  const std::string parent = parent_dir(dst);
  if (!fs::exists(fs::symlink_status(dst, ec))) {
    if (::rename(tmp.c_str(), dst.c_str()) != 0)
      return Status::error("cannot rename " + tmp + " to " + dst + ": " + std::strerror(errno));
    return fsync_dir(parent);
  }
  if (!fs::is_directory(fs::symlink_status(dst, ec)))
    return Status::error("cannot replace " + dst + ": it exists and is not a directory");
#ifdef RENAME_EXCHANGE
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dst.c_str(), RENAME_EXCHANGE) == 0) {
    Status s = fsync_dir(parent);
    remove_all_quiet(tmp);  // now holds the old contents
    return s;
  }
#endif
  // Fallback: move the old directory aside, move the new one in, remove the old one.
  const std::string aside = dst + ".old" + tmp_suffix().substr(4);
  remove_all_quiet(aside);
  if (::rename(dst.c_str(), aside.c_str()) != 0)
    return Status::error("cannot move " + dst + " aside to " + aside + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), dst.c_str()) != 0) {
    int e = errno;
    ::rename(aside.c_str(), dst.c_str());  // put the old one back
    return Status::error("cannot rename " + tmp + " to " + dst + ": " + std::strerror(e));
  }
  Status s = fsync_dir(parent);
  remove_all_quiet(aside);
  return s;
}

} // namespace parallora::rt::fsutil
