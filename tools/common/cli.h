//===- cli.h - command-line conventions shared by lora-compile and lora-run ===//
//
// One message format and one exit-code convention for every Parallora tool:
//   exit 0  success (also --help)
//   exit 1  runtime error: a file, the model, the data, a kernel ("error: <message>")
//   exit 2  command-line error: a bad flag value or a bad combination of flags
// CLI11's own checks (CLI::PositiveNumber, CLI::Range) print "Value 0 not in range 0.000000 to
// 1797693134862315708145... (a 300-digit double)"
// and make the tool exit 105; the validators below print "--lora-rank: must be >= 1 (got 0)"
// instead, and parse() maps every parse error to exit code 2.
//
// Use:
//   CLI::App app{...};
//   app.add_option("--steps", a.steps, "...")->check(cli::at_least(1));
//   app.add_option("--lr", a.lr, "...")->check(cli::positive_number());
//   app.add_option("--threads", a.threads, "...")->check(cli::thread_count());
//   if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
//
// Header-only: both tools include it; nothing here knows the compiler or the runtime.
//===----------------------------------------------------------------------===//
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

namespace parallora::cli {

constexpr int kExitOk = 0;
constexpr int kExitRuntimeError = 1;
constexpr int kExitUsageError = 2;

/// A number as people write it: 0.999, 1e-08, 32, 1.8e+308 (never 300 digits).
inline std::string readable(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

namespace detail {
/// Parses the whole of `text` as an integer; false when it is not one.
inline bool parse_int(const std::string &text, long long &out) {
  try {
    size_t used = 0;
    out = std::stoll(text, &used);
    return used == text.size();
  } catch (const std::exception &) {
    return false;
  }
}
/// Parses the whole of `text` as a finite number; false when it is not one.
inline bool parse_number(const std::string &text, double &out) {
  try {
    size_t used = 0;
    out = std::stod(text, &used);
    return used == text.size() && std::isfinite(out);
  } catch (const std::exception &) {
    return false;
  }
}
} // namespace detail

/// An integer flag value >= lo: "--steps: must be >= 1 (got 0)"; `why`, when given, follows:
/// "--seq-len: must be >= 2 (got 1): the next-token loss needs ...".
inline CLI::Validator at_least(int64_t lo, const std::string &why = "") {
  return CLI::Validator(
      [lo, why](std::string &text) -> std::string {
        long long v = 0;
        if (!detail::parse_int(text, v)) return "not an integer: " + text;
        if (v < lo) return "must be >= " + std::to_string(lo) + " (got " + text + ")" + (why.empty() ? "" : ": " + why);
        return "";
      },
      ">=" + std::to_string(lo));
}

/// An integer flag value in [lo, hi]: "--seq-len: must be between 2 and 1048576 (got 1)".
inline CLI::Validator int_range(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string &text) -> std::string {
        long long v = 0;
        if (!detail::parse_int(text, v)) return "not an integer: " + text;
        if (v < lo || v > hi)
          return "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + " (got " + text + ")";
        return "";
      },
      "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

/// A number > 0 (integer or not): "--lr: must be > 0 (got -1)".
inline CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string &text) -> std::string {
        double v = 0;
        if (!detail::parse_number(text, v)) return "not a number: " + text;
        if (!(v > 0)) return "must be > 0 (got " + text + ")";
        return "";
      },
      ">0");
}

/// A number >= 0: "--weight-decay: must be >= 0 (got -0.1)".
inline CLI::Validator non_negative_number() {
  return CLI::Validator(
      [](std::string &text) -> std::string {
        double v = 0;
        if (!detail::parse_number(text, v)) return "not a number: " + text;
        if (!(v >= 0)) return "must be >= 0 (got " + text + ")";
        return "";
      },
      ">=0");
}

/// A number in [lo, hi]: "--lora-dropout: must be between 0 and 0.999 (got 1.5)".
inline CLI::Validator number_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string &text) -> std::string {
        double v = 0;
        if (!detail::parse_number(text, v)) return "not a number: " + text;
        if (!(v >= lo && v <= hi))
          return "must be between " + readable(lo) + " and " + readable(hi) + " (got " + text + ")";
        return "";
      },
      "[" + readable(lo) + ", " + readable(hi) + "]");
}

/// The most CPU threads a run may ask for: 4 x the machine's hardware threads (oversubscribing
/// an OpenMP team beyond that only slows it down), at least 4, at most 1024. A larger team makes
/// libgomp fail to create its threads and crash (`--threads 100000` segfaulted lora-run).
inline int max_threads() {
  unsigned hw = std::thread::hardware_concurrency();
  long cap = 4L * (hw ? long(hw) : 1L);
  if (cap < 4) cap = 4;
  if (cap > 1024) cap = 1024;
  return int(cap);
}

/// A thread count in [0, max_threads()] (0 = all cores):
/// "--threads: must be between 0 and 64 (4 x the 16 hardware threads of this machine; 0 = all) (got 100000)".
inline CLI::Validator thread_count() {
  return CLI::Validator(
      [](std::string &text) -> std::string {
        long long v = 0;
        if (!detail::parse_int(text, v)) return "not an integer: " + text;
        const int cap = max_threads();
        if (v < 0 || v > cap)
          return "must be between 0 and " + std::to_string(cap) + " (4 x the " +
                 std::to_string(std::thread::hardware_concurrency()) +
                 " hardware threads of this machine, at most 1024; 0 = all) (got " + text + ")";
        return "";
      },
      "[0, " + std::to_string(max_threads()) + "]");
}

/// Parses the command line. Returns -1 when the tool should go on, otherwise its exit code:
/// 0 after --help, 2 after any parse or validation error (CLI11 prints the message, e.g.
/// "--lora-rank: must be >= 1 (got 0)", and a pointer to --help on stderr).
inline int parse(CLI::App &app, int argc, char **argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsageError;
  }
  return -1;
}

} // namespace parallora::cli
