// runtime/train/metrics_log.h: the session's metrics.jsonl and its resume truncation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/train/metrics_log.h"

using namespace parallora::rt;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

TEST(MetricsLog, ResumeDropsLaterStepsAndAppends) {
  fs::path d = fs::temp_directory_path() / ("parallora_metrics_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  {
    auto log = MetricsLog::open(d.string(), true, -1, 2);
    ASSERT_TRUE(log);
    for (int s = 1; s <= 4; ++s) ASSERT_TRUE(log->write({{"step", s}, {"loss", 1.0 / s}}));
  }
  auto again = MetricsLog::open(d.string(), true, 2, 2);  // resumed at step 2
  ASSERT_TRUE(again);
  ASSERT_TRUE(again->write({{"step", 3}, {"loss", 0.5}}));
  std::ifstream in((d / "metrics.jsonl").string());
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["step"], 1);
  EXPECT_EQ(lines[1]["step"], 2);
  EXPECT_EQ(lines[2]["step"], 3);
  EXPECT_EQ(lines[2]["loss"], 0.5);
  EXPECT_EQ(lines[2]["world_size"], 2);
  auto reader = MetricsLog::open(d.string(), false, -1, 2);  // not the writing rank: no file touched
  ASSERT_TRUE(reader);
  EXPECT_TRUE(reader->write({{"step", 9}}));
  EXPECT_EQ(std::count(std::istreambuf_iterator<char>(std::ifstream((d / "metrics.jsonl").string()).rdbuf()),
                       std::istreambuf_iterator<char>(), '\n'),
            3);
  fs::remove_all(d);
}

} // namespace
