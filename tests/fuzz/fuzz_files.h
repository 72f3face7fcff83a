//===- fuzz_files.h - fuzz inputs that are files or directories -----------===//
//
// The runtime readers open paths (mmap, std::filesystem), so these targets write the fuzz
// input to a scratch directory first. A directory input is a list of records, one per file
// of a fixed list of names, in that order:
//
//   [u16 LE length L][L bytes]   the file's contents; L == 0xFFFF: the file is absent
//
// The last named file takes all remaining bytes (no length). Bytes that run out early leave the
// remaining files absent. Seeds are written in this layout by tests/fuzz/make_seeds.py.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

namespace parallora::fuzz {

/// A per-process scratch directory under /dev/shm (when writable; tmpfs keeps the file
/// writes cheap) or $TMPDIR or /tmp, created once and removed at exit (not after a crash: then
/// it holds the crashing input's files).
inline const std::string &scratch_dir() {
  static const std::string dir = [] {
    std::string base = "/tmp";
    if (const char *t = std::getenv("TMPDIR"); t && *t) base = t;
    if (::access("/dev/shm", W_OK) == 0) base = "/dev/shm";
    std::string tmpl = base + "/parallora-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) std::abort();
    return tmpl;
  }();
  static const bool cleanup_registered = [] {
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return true;
  }();
  (void)cleanup_registered;
  return dir;
}

/// Replaces `path` by `bytes` (or removes it when `present` is false).
inline void put_file(const std::string &path, const uint8_t *bytes, size_t size, bool present) {
  std::remove(path.c_str());
  if (!present) return;
  FILE *f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(bytes, 1, size, f) != size) std::abort();
  std::fclose(f);
}

/// Splits `data` into the files `names` (see the layout above) and writes them into `dir`.
inline void write_files(const std::string &dir, const std::vector<std::string> &names,
                        const uint8_t *data, size_t size) {
  size_t at = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string path = dir + "/" + names[i];
    if (i + 1 == names.size()) {
      put_file(path, data + at, size - at, at < size);
      break;
    }
    if (size - at < 2) {
      put_file(path, nullptr, 0, false);
      at = size;
      continue;
    }
    size_t len = size_t(data[at]) | size_t(data[at + 1]) << 8;
    at += 2;
    if (len == 0xFFFF) {
      put_file(path, nullptr, 0, false);
      continue;
    }
    if (len > size - at) len = size - at;
    put_file(path, data + at, len, true);
    at += len;
  }
}

} // namespace parallora::fuzz
