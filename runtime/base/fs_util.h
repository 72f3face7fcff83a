//===- fs_util.h - durable file and directory updates (internal) ----------===//
//
// Helpers shared by peft_adapter.cpp, checkpoint.cpp and the plan writer (plan_io.cpp).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <string>

#include "runtime/base/status.h"

namespace parallora::rt::fsutil {

/// "<path>" without trailing slashes ("/" stays "/").
std::string strip_trailing_slashes(const std::string &path);
/// The parent directory of `path` ("." when it has none).
std::string parent_dir(const std::string &path);
/// mkdir -p.
Status create_dirs(const std::string &dir);
/// fsync a directory (so renames/creations inside it are durable).
Status fsync_dir(const std::string &dir);
/// Writes `contents` to `path` atomically: `path.tmp-<pid>`, fsync, rename, fsync parent.
Status write_file_atomic(const std::string &path, const std::string &contents);
/// Reads a whole file.
Status read_file(const std::string &path, std::string *out);
/// Moves the finished directory `tmp` to `dst`, atomically replacing an existing `dst`
/// (renameat2 RENAME_EXCHANGE, falling back to rename-aside), then fsyncs dst's parent and
/// removes the old contents.
Status replace_dir(const std::string &tmp, const std::string &dst);
/// Best-effort recursive removal (errors ignored).
void remove_all_quiet(const std::string &path);
/// Removes a directory so that a kill at any moment never leaves it half-deleted under its own
/// name: renamed to `<path>.tmp-<pid>` first (a leftover the next run removes), then deleted.
Status remove_dir_atomically(const std::string &path);
/// ".tmp-<pid>" of this process.
std::string tmp_suffix();

} // namespace parallora::rt::fsutil
