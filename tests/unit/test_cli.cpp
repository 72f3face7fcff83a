// Tests for tools/common/cli.h: readable validator messages, exit code 2 for every parse
// error, and the --threads cap (`lora-run --threads 100000` segfaulted in libgomp).
#include "tools/common/cli.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

using namespace parallora;

namespace {

/// Parses `args` (after the program name) with one option checked by `v`; returns the exit code
/// (-1: parsed) and the text CLI11 printed.
int parse_with(CLI::Validator v, std::vector<std::string> args, std::string *printed = nullptr) {
  CLI::App app{"test"};
  std::string value;
  app.add_option("--x", value)->check(v);
  std::vector<char *> argv{const_cast<char *>("prog")};
  for (std::string &a : args) argv.push_back(a.data());
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  int rc = cli::parse(app, int(argv.size()), argv.data());
  std::string err = testing::internal::GetCapturedStderr();
  std::string out = testing::internal::GetCapturedStdout();
  if (printed) *printed = err + out;
  return rc;
}

} // namespace

TEST(Cli, ValidatorsPrintReadableNumbersAndExitTwo) {
  std::string msg;
  EXPECT_EQ(parse_with(cli::at_least(1), {"--x", "0"}, &msg), 2);
  EXPECT_NE(msg.find("--x: must be >= 1 (got 0)"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::at_least(2, "the loss needs 2"), {"--x", "1"}, &msg), 2);
  EXPECT_NE(msg.find("--x: must be >= 2 (got 1): the loss needs 2"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::at_least(1), {"--x", "1.5"}, &msg), 2);
  EXPECT_NE(msg.find("not an integer: 1.5"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::positive_number(), {"--x", "0"}, &msg), 2);
  EXPECT_NE(msg.find("--x: must be > 0 (got 0)"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::non_negative_number(), {"--x", "-0.5"}, &msg), 2);
  EXPECT_NE(msg.find("must be >= 0 (got -0.5)"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::number_range(0.0, 0.999), {"--x", "1.5"}, &msg), 2);
  EXPECT_NE(msg.find("--x: must be between 0 and 0.999 (got 1.5)"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("179769"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::int_range(2, 8), {"--x", "9"}, &msg), 2);
  EXPECT_NE(msg.find("must be between 2 and 8 (got 9)"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::positive_number(), {"--x", "nan"}, &msg), 2);
  EXPECT_EQ(parse_with(cli::positive_number(), {"--x", "1e-3"}), -1);
  EXPECT_EQ(parse_with(cli::number_range(0.0, 1.0), {"--x", "1"}), -1);
  EXPECT_EQ(parse_with(cli::at_least(0), {"--x", "0"}), -1);
  // Unknown flags and --help follow the same convention.
  EXPECT_EQ(parse_with(cli::at_least(0), {"--nope"}), 2);
  EXPECT_EQ(parse_with(cli::at_least(0), {"--help"}), 0);
}

TEST(Cli, ThreadCountIsCapped) {
  const int cap = cli::max_threads();
  EXPECT_GE(cap, 4);
  EXPECT_LE(cap, 1024);
  std::string msg;
  EXPECT_EQ(parse_with(cli::thread_count(), {"--x", "100000"}, &msg), 2);
  EXPECT_NE(msg.find("--x: must be between 0 and " + std::to_string(cap)), std::string::npos) << msg;
  EXPECT_NE(msg.find("(got 100000)"), std::string::npos) << msg;
  EXPECT_EQ(parse_with(cli::thread_count(), {"--x", "-1"}), 2);
  EXPECT_EQ(parse_with(cli::thread_count(), {"--x", "0"}), -1);
  EXPECT_EQ(parse_with(cli::thread_count(), {"--x", std::to_string(cap)}), -1);
}
