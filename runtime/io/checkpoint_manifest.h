//===- checkpoint_manifest.h - checksums that make a checkpoint verifiable --===//
//
// trainer_state.json is a checkpoint's manifest. Besides the trainer state it holds
//   "files":    {"<file>": {"bytes": N, "crc32": "1a2b3c4d"}, ...}   every tensor/adapter file
//   "checksum": "crc32 of the compact JSON dump of every other key"     the state itself
// Loading verifies the state's checksum (an edited step counter is refused) and each file it
// reads (a flipped bit is refused, naming the file). Checkpoints written before the manifest
// (no "files" / "checksum") still load. CRC32 is zlib's.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/base/status.h"

namespace parallora::rt {

/// {"bytes", "crc32"} of the file at `path`.
StatusOr<nlohmann::json> file_checksum(const std::string &path);
/// zlib CRC32 of `size` bytes as 8 lowercase hex digits.
std::string crc32_hex(const void *data, size_t size);
/// Adds `files` (entries for each name in `names`, read from `dir`) to `state`.
Status add_file_checksums(const std::string &dir, const std::vector<std::string> &names, nlohmann::json *state);
/// Sets state["checksum"] over every other key (call last).
void seal_state(nlohmann::json *state);
/// Checks state["checksum"] (if present) and the entries of `names` in state["files"] (if
/// present); `state_path` names the manifest in messages.
Status verify_manifest(const std::string &dir, const std::string &state_path, const nlohmann::json &state,
                       const std::vector<std::string> &names);

} // namespace parallora::rt
