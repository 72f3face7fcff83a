// runtime/train/checkpoint_store.h and runtime/io/checkpoint_manifest.h: checkpoint directory
// names, and the manifest that refuses a corrupt file or an edited trainer state.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/io/checkpoint_manifest.h"
#include "runtime/train/checkpoint_store.h"

using namespace parallora;
using namespace parallora::rt;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

TEST(CheckpointStore, DirectoryNames) {
  EXPECT_EQ(checkpoint_dir_step("checkpoint-12"), 12);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-0"), 0);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-"), -1);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-3.tmp-77"), -1);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-1x"), -1);
  EXPECT_EQ(checkpoint_dir_step("latest"), -1);
  EXPECT_EQ(checkpoint_dir_step("checkpoint-1234567890123456789"), -1);  // too long for int64 safety
}

TEST(CheckpointManifest, RefusesAFlippedBitAndAnEditedState) {
  fs::path d = fs::temp_directory_path() / ("parallora_manifest_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  { std::ofstream(d / "a.bin", std::ios::binary) << std::string(1000, 'x'); }
  json state = {{"global_step", 7}, {"seed", 1}};
  ASSERT_TRUE(add_file_checksums(d.string(), {"a.bin"}, &state));
  seal_state(&state);
  EXPECT_EQ(state["files"]["a.bin"]["bytes"], 1000);
  EXPECT_EQ(state["files"]["a.bin"]["crc32"].get<std::string>().size(), 8u);
  EXPECT_TRUE(verify_manifest(d.string(), "ts.json", state, {"a.bin"}));

  json edited = state;
  edited["global_step"] = 6;  // an edited step counter
  Status s = verify_manifest(d.string(), "ts.json", edited, {"a.bin"});
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("ts.json: checksum mismatch"), std::string::npos) << s.message();

  {  // one flipped bit
    std::fstream f(d / "a.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(500);
    f.put('x' ^ 0x01);
  }
  s = verify_manifest(d.string(), "ts.json", state, {"a.bin"});
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("a.bin: checksum mismatch"), std::string::npos) << s.message();

  // A file the manifest does not list is refused when asked for; a manifest-less state (an old
  // checkpoint) is accepted.
  EXPECT_FALSE(verify_manifest(d.string(), "ts.json", state, {"b.bin"}));
  EXPECT_TRUE(verify_manifest(d.string(), "ts.json", json{{"global_step", 1}}, {"a.bin"}));
  fs::remove_all(d);
}

TEST(CheckpointManifest, Crc32IsZlibs) {
  // The standard check value of CRC-32 (IEEE 802.3): "123456789" -> cbf43926.
  EXPECT_EQ(crc32_hex("123456789", 9), "cbf43926");
}

} // namespace
