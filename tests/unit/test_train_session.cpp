// The training session as a library (runtime/train/session.h), driven in-process. The plan
// comes from lora-compile (a setup step: the runtime knows nothing of the compiler). The
// session's parts have their own tests: test_checkpoint_store, test_metrics_log,
// test_adapter_export, test_output_dir, test_nonfinite.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/base/fs_util.h"
#include "runtime/train/session.h"

using namespace parallora;
using namespace parallora::rt;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kSrc = PARALLORA_SOURCE_DIR;
const std::string kModel = kSrc + "/tests/fixtures/onnx/tiny_llama.hf";
const std::string kTokens = kSrc + "/tests/fixtures/train/tiny/tokens.bin";

std::string read_all(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class SessionTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("parallora_session_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    plan_ = (dir_ / "plan.lp").string();
    std::string cmd = std::string(PARALLORA_LORA_COMPILE) + " --hf-config " + kModel + "/config.json --weights " + kModel +
                      " --batch 4 --seq-len 16 --micro-batches 2 --lora-rank 4 --lora-alpha 8 --lora-targets all-linear"
                      " --lr 1e-2 -o " + plan_ + " > " + (dir_ / "compile.log").string() + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << read_all((dir_ / "compile.log").string());
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  SessionOptions options(const std::string &out, int64_t steps) {
    SessionOptions o;
    o.plan = plan_;
    o.data = kTokens;
    o.steps = steps;
    o.out = (dir_ / out).string();
    o.threads = 1;
    return o;
  }
  Status run(const SessionOptions &o) {
    World w;
    SessionOutcome outcome;
    return run_session(o, w, &outcome);
  }
  std::vector<json> metrics(const std::string &out) {
    std::vector<json> lines;
    std::ifstream in((dir_ / out / "metrics.jsonl").string());
    for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
    return lines;
  }

  static fs::path dir_;
  static std::string plan_;
};
fs::path SessionTest::dir_;
std::string SessionTest::plan_;

TEST_F(SessionTest, TrainsAndWritesMetricsSummaryAdapterCheckpoint) {
  SessionOptions o = options("run", 3);
  o.save_every = 1;
  Status s = run(o);
  ASSERT_TRUE(s) << s.message();
  std::vector<json> m = metrics("run");
  ASSERT_EQ(m.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(m[i]["step"], i + 1);
    EXPECT_TRUE(std::isfinite(m[i]["loss"].get<double>()));
  }
  json summary = json::parse(read_all(o.out + "/summary.json"));
  EXPECT_EQ(summary["final_loss"].get<double>(), m[2]["loss"].get<double>());
  EXPECT_EQ(summary["steps"], 3);
  // The weights actually read, with a content hash (Executor::base_weights_used).
  const std::string used = summary["base_weights"].get<std::string>();
  EXPECT_EQ(used.rfind(kModel + " (crc32 ", 0), 0u) << used;
  EXPECT_TRUE(fs::exists(o.out + "/adapter/adapter_model.safetensors"));
  EXPECT_TRUE(fs::exists(o.out + "/checkpoint-3/trainer_state.json"));
  EXPECT_EQ(read_all(o.out + "/latest"), "checkpoint-3\n");
  // The loss falls on the fixture text at lr 1e-2.
  EXPECT_LT(m[2]["loss"].get<double>(), m[0]["loss"].get<double>());
}

TEST_F(SessionTest, ResumeIsBitIdenticalToAnUninterruptedRun) {
  ASSERT_TRUE(run(options("whole", 4)));
  SessionOptions first = options("parts", 2);
  ASSERT_TRUE(run(first));
  SessionOptions second = options("parts", 4);
  second.resume = second.out;
  Status s = run(second);
  ASSERT_TRUE(s) << s.message();
  EXPECT_EQ(read_all((dir_ / "whole/adapter/adapter_model.safetensors").string()),
            read_all((dir_ / "parts/adapter/adapter_model.safetensors").string()));
  std::vector<json> a = metrics("whole"), b = metrics("parts");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);  // the resumed run appended steps 3 and 4
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
}

TEST_F(SessionTest, ErrorsNameTheFlag) {
  SessionOptions o = options("bad", 2);
  o.data = (dir_ / "missing.bin").string();
  Status s = run(o);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("--data " + o.data), std::string::npos) << s.message();
  SessionOptions r = options("bad2", 2);
  r.resume = (dir_ / "nowhere").string();
  s = run(r);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("--resume"), std::string::npos) << s.message();
}

} // namespace
