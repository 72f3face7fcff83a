//===- metrics.cpp - JSONL metrics, progress bar, learning-rate schedules --===//
#include "runtime/io/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "runtime/base/fs_util.h"

namespace parallora::rt {

void JsonlWriter::Closer::operator()(std::FILE *f) const {
  if (f) std::fclose(f);
}

StatusOr<JsonlWriter> JsonlWriter::open(const std::string &path, bool append) {
  const std::string parent = fsutil::parent_dir(path);
  Status st = fsutil::create_dirs(parent);
  if (!st) return st;
  std::FILE *f = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f) return Status::error("cannot open metrics file " + path + ": " + std::strerror(errno));
  JsonlWriter w;
  w.file_.reset(f);
  w.path_ = path;
  return w;
}

Status JsonlWriter::write(const nlohmann::json &record) {
  if (!file_) return Status::error("metrics file is not open");
  std::string line;
  try {
    line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } catch (const std::exception &e) {
    return Status::error("cannot serialise a metrics record for " + path_ + ": " + e.what());
  }
  line += '\n';
  if (std::fwrite(line.data(), 1, line.size(), file_.get()) != line.size() ||
      std::fflush(file_.get()) != 0)
    return Status::error("cannot write metrics file " + path_ + ": " + std::strerror(errno));
  return Status::ok();
}

ProgressBar::ProgressBar(int64_t total_steps, int64_t print_every)
    : total_(total_steps), every_(std::max<int64_t>(1, print_every)),
      tty_(::isatty(::fileno(stderr)) != 0), start_(std::chrono::steady_clock::now()) {}

namespace {
std::string hms(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  long s = long(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", s / 60, s % 60);
  return buf;
}
} // namespace

std::string ProgressBar::format_line(int64_t step, double loss, double tokens_per_s,
                                     double lr) const {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string out;
  char buf[256];
  if (tty_ && total_ > 0) {
    const int width = 20;
    int filled = int(std::min<int64_t>(width, std::max<int64_t>(0, step) * width / total_));
    out += '[';
    out.append(size_t(filled), '#');
    out.append(size_t(width - filled), '.');
    out += "] ";
  }
  if (total_ > 0)
    std::snprintf(buf, sizeof buf, "step %lld/%lld", (long long)step, (long long)total_);
  else
    std::snprintf(buf, sizeof buf, "step %lld", (long long)step);
  out += buf;
  std::snprintf(buf, sizeof buf, " | loss %.4f | lr %.3e | %.0f tok/s | %s", loss, lr,
                tokens_per_s, hms(elapsed).c_str());
  out += buf;
  if (total_ > 0 && step > 0 && step < total_) {
    double eta = elapsed / double(step) * double(total_ - step);
    out += " < " + hms(eta);
  }
  return out;
}

void ProgressBar::update(int64_t step, double loss, double tokens_per_s, double lr) {
  if (tty_) {
    std::string line = format_line(step, loss, tokens_per_s, lr);
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
    std::fflush(stderr);
    open_line_ = true;
    return;
  }
  if (step == 1 || step % every_ == 0 || step == total_) {
    std::string line = format_line(step, loss, tokens_per_s, lr);
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }
}

void ProgressBar::finish() {
  if (open_line_) {
    std::fputc('\n', stderr);
    std::fflush(stderr);
    open_line_ = false;
  }
}

double lr_at_step(const plan::Hyperparams &hp, int64_t step, int64_t total_steps) {
  const double c = double(std::max<int64_t>(0, step - 1));  // HF's scheduler step
  const double W = double(std::max<int64_t>(0, hp.warmup_steps));
  const double T = double(hp.total_steps > 0 ? hp.total_steps : total_steps);
  if (c < W) return hp.lr * (c / std::max(1.0, W));
  double factor = 1.0;
  if (hp.schedule == "cosine") {
    const double p = (c - W) / std::max(1.0, T - W);
    factor = std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 2.0 * 0.5 * p)));
  } else if (hp.schedule == "linear") {
    factor = std::max(0.0, (T - c) / std::max(1.0, T - W));
  } else {
    return hp.lr;
  }
  return hp.lr * std::max(hp.min_lr_ratio, factor);
}

} // namespace parallora::rt
