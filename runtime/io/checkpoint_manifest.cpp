//===- checkpoint_manifest.cpp - checksums that make a checkpoint verifiable ===//
#include "runtime/io/checkpoint_manifest.h"

#include <cstdio>
#include <fstream>
#include <vector>

#include <zlib.h>

namespace parallora::rt {

using json = nlohmann::json;

namespace {
std::string hex8(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}
} // namespace

std::string crc32_hex(const void *data, size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const Bytef *p = static_cast<const Bytef *>(data);
  while (size > 0) {  // zlib takes uInt lengths
    uInt n = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = crc32(crc, p, n);
    p += n;
    size -= n;
  }
  return hex8(static_cast<uint32_t>(crc));
}

StatusOr<json> file_checksum(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error("cannot open " + path);
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<char> buf(1 << 20);
  int64_t bytes = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    std::streamsize n = in.gcount();
    if (n <= 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef *>(buf.data()), static_cast<uInt>(n));
    bytes += n;
  }
  if (in.bad()) return Status::error("cannot read " + path);
  return json{{"bytes", bytes}, {"crc32", hex8(static_cast<uint32_t>(crc))}};
}

Status add_file_checksums(const std::string &dir, const std::vector<std::string> &names, json *state) {
  json &files = (*state)["files"];
  if (!files.is_object()) files = json::object();
  for (const std::string &name : names) {
    auto c = file_checksum(dir + "/" + name);
    if (!c) return c.status();
    files[name] = *c;
  }
  return Status::ok();
}

static std::string state_digest(json state) {
  state.erase("checksum");
  const std::string text = state.dump();
  return crc32_hex(text.data(), text.size());
}

void seal_state(json *state) { (*state)["checksum"] = state_digest(*state); }

Status verify_manifest(const std::string &dir, const std::string &state_path, const json &state,
                       const std::vector<std::string> &names) {
  if (state.contains("checksum")) {
    if (!state["checksum"].is_string() || state["checksum"].get<std::string>() != state_digest(state))
      return Status::error(state_path + ": checksum mismatch: the trainer state was edited or corrupted "
                           "(its recorded checksum does not match its contents)");
  }
  if (!state.contains("files")) return Status::ok();
  const json &files = state["files"];
  if (!files.is_object()) return Status::error(state_path + ": key 'files' must be an object");
  for (const std::string &name : names) {
    if (!files.contains(name))
      return Status::error(state_path + ": the manifest lists no checksum for " + name);
    const json &want = files[name];
    auto got = file_checksum(dir + "/" + name);
    if (!got) return got.status();
    // Types checked before get<>(): want.value() throws on a mistyped entry (found by fuzz_checkpoint).
    const bool same = want.is_object() && want.contains("bytes") && want["bytes"].is_number_integer() &&
                      want["bytes"].get<int64_t>() == (*got)["bytes"].get<int64_t>() &&
                      want.contains("crc32") && want["crc32"].is_string() &&
                      want["crc32"].get<std::string>() == (*got)["crc32"].get<std::string>();
    if (!same)
      return Status::error(dir + "/" + name + ": checksum mismatch (" + (*got)["bytes"].dump() + " bytes, crc32 " +
                           (*got)["crc32"].get<std::string>() + "; the manifest " + state_path + " records " +
                           want.dump() + "): the file is corrupt or was replaced");
  }
  return Status::ok();
}

} // namespace parallora::rt
