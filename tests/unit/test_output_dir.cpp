// runtime/train/output_dir.h: one run per --out (lock, used-directory refusal, --overwrite,
// leftovers of killed saves).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "runtime/train/output_dir.h"

using namespace parallora;
using namespace parallora::rt;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("parallora_outdir_" + std::to_string(::getpid()) + "_" +
                                               ::testing::UnitTest::GetInstance()->current_test_info()->name());
  TempDir() { fs::remove_all(path); }
  ~TempDir() { fs::remove_all(path); }
};

TEST(OutputDir, NamesOfOutputsAndLeftovers) {
  EXPECT_TRUE(is_run_output("metrics.jsonl"));
  EXPECT_TRUE(is_run_output("checkpoint-3"));
  EXPECT_TRUE(is_run_output("adapter"));
  EXPECT_FALSE(is_run_output("plan.lp"));
  EXPECT_FALSE(is_run_output(".lock"));
  EXPECT_TRUE(is_save_leftover("checkpoint-3.tmp-1234"));
  EXPECT_TRUE(is_save_leftover("latest.tmp-99"));
  EXPECT_TRUE(is_save_leftover("checkpoint-3.old-77"));
  EXPECT_FALSE(is_save_leftover("checkpoint-3.tmp-"));
  EXPECT_FALSE(is_save_leftover("checkpoint-3.tmp-12a"));
  EXPECT_FALSE(is_save_leftover("notes.tmp"));
}

TEST(OutputDir, CreatesParentsAndLocks) {
  TempDir t;
  const std::string out = (t.path / "a" / "b").string();
  auto first = OutputDir::claim(out, false, false);
  ASSERT_TRUE(first) << first.message();
  EXPECT_TRUE(fs::is_directory(out));
  auto second = OutputDir::claim(out, true, false);  // another run while the first lives
  ASSERT_FALSE(second);
  EXPECT_NE(second.message().find("is in use by another lora-run (pid " + std::to_string(::getpid())), std::string::npos)
      << second.message();
  { OutputDir released = std::move(*first); }  // the lock goes with the owner
  EXPECT_TRUE(OutputDir::claim(out, false, false));
}

TEST(OutputDir, RefusesAUsedDirectoryUnlessResumingOrOverwriting) {
  TempDir t;
  fs::create_directories(t.path / "checkpoint-2");
  std::ofstream(t.path / "metrics.jsonl") << "{}\n";
  std::ofstream(t.path / "plan.lp") << "keep";  // not a run output: never touched
  auto refused = OutputDir::claim(t.path.string(), false, false);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.message().find("already holds a run (checkpoint-2, metrics.jsonl)"), std::string::npos)
      << refused.message();
  EXPECT_TRUE(OutputDir::claim(t.path.string(), true, false));  // --resume
  EXPECT_TRUE(fs::exists(t.path / "metrics.jsonl"));
  std::vector<std::string> removed;
  ASSERT_TRUE(OutputDir::claim(t.path.string(), false, true, &removed));  // --overwrite
  EXPECT_EQ(removed, (std::vector<std::string>{"checkpoint-2", "metrics.jsonl"}));
  EXPECT_FALSE(fs::exists(t.path / "metrics.jsonl"));
  EXPECT_TRUE(fs::exists(t.path / "plan.lp"));
}

TEST(OutputDir, RemovesLeftoversOfKilledSaves) {
  TempDir t;
  fs::create_directories(t.path / "checkpoint-5.tmp-4242");
  std::ofstream(t.path / "latest.tmp-17") << "checkpoint-5\n";
  std::vector<std::string> removed;
  ASSERT_TRUE(OutputDir::claim(t.path.string(), true, false, &removed));
  EXPECT_EQ(removed, (std::vector<std::string>{"checkpoint-5.tmp-4242", "latest.tmp-17"}));
  EXPECT_FALSE(fs::exists(t.path / "checkpoint-5.tmp-4242"));
}

TEST(OutputDir, AFileIsNotADirectory) {
  TempDir t;
  fs::create_directories(t.path);
  std::ofstream(t.path / "file") << "x";
  auto r = OutputDir::claim((t.path / "file").string(), false, false);
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("--out " + (t.path / "file").string()), std::string::npos) << r.message();
}

} // namespace
