//===- metrics_log.cpp - the session's metrics.jsonl -----------------------===//
#include "runtime/train/metrics_log.h"

#include <fstream>

namespace parallora::rt {

using json = nlohmann::json;

void truncate_metrics(const std::string &path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step) continue;
    kept += line + "\n";
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

StatusOr<MetricsLog> MetricsLog::open(const std::string &out_dir, bool writer, int64_t resumed_at, int world_size) {
  MetricsLog log;
  log.path_ = out_dir + "/metrics.jsonl";
  log.world_size_ = world_size;
  if (!writer) return log;
  if (resumed_at >= 0) truncate_metrics(log.path_, resumed_at);
  auto w = JsonlWriter::open(log.path_, /*append=*/resumed_at >= 0);
  if (!w) return w.status();
  log.w_.emplace(std::move(*w));
  return log;
}

Status MetricsLog::write(json record) {
  if (!w_) return Status::ok();
  if (world_size_ > 1) record["world_size"] = world_size_;
  return w_->write(record);
}

} // namespace parallora::rt
