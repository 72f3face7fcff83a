//===- checkpoint.cpp - resumable training checkpoints ---------------------===//
#include "runtime/io/checkpoint.h"
#include "runtime/io/checkpoint_manifest.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <filesystem>
#include <set>
#include <system_error>

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include "runtime/base/safetensors.h"
#include "runtime/base/fs_util.h"

namespace fs = std::filesystem;

namespace parallora::rt {

namespace {

constexpr const char *kOptimizerFile = "optimizer.safetensors";
constexpr const char *kStateFile = "trainer_state.json";
constexpr const char *kLatestFile = "latest";
constexpr const char *kStateFormat = "parallora-trainer-state";
constexpr int kStateVersion = 1;

// "checkpoint-<digits>" -> step; -1 otherwise.
int64_t checkpoint_step(const std::string &name) {
  const std::string prefix = "checkpoint-";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || name.size() > prefix.size() + 18)
    return -1;
  int64_t v = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

// Removes "checkpoint-*.tmp-<pid>" directories left by processes that no longer exist.
void remove_stale_tmp_dirs(const std::string &out_dir) {
  std::error_code ec;
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    size_t at = name.rfind(".tmp-");
    if (name.rfind("checkpoint-", 0) != 0 || at == std::string::npos) continue;
    const std::string pid_text = name.substr(at + 5);
    if (pid_text.empty() || pid_text.size() > 9 ||
        !std::all_of(pid_text.begin(), pid_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    pid_t pid = pid_t(std::stol(pid_text));
    if (pid == ::getpid()) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
    fsutil::remove_all_quiet(it->path().string());
  }
}

Status prune_checkpoints(const std::string &out_dir, int keep_last, const std::string &keep_name) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    int64_t step = checkpoint_step(name);
    if (step >= 0 && it->is_directory(ec)) found.emplace_back(step, name);
  }
  std::sort(found.begin(), found.end());
  if (int64_t(found.size()) <= keep_last) return Status::ok();
  size_t remove = found.size() - size_t(keep_last);
  for (size_t i = 0; i < remove; ++i) {
    if (found[i].second == keep_name) continue;
    // Renamed aside first: a kill mid-delete never leaves a partial checkpoint-N behind.
    Status st = fsutil::remove_dir_atomically(out_dir + "/" + found[i].second);
    if (!st) return Status::error("cannot remove old checkpoint: " + st.message());
  }
  return Status::ok();
}

StatusOr<std::map<std::string, std::vector<float>>> read_f32_tensors(const std::string &path) {
  auto file = SafetensorsFile::open(path);
  if (!file) return file.status();
  std::map<std::string, std::vector<float>> out;
  for (const TensorView &t : (*file)->tensors()) {
    if (t.dtype != DType::F32)
      return Status::error(path + ": tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) +
                           ", expected F32");
    std::vector<float> data(size_t(t.numel()));
    Status st = to_f32(t, data.data());
    if (!st) return Status::error(path + ": tensor '" + t.name + "': " + st.message());
    out.emplace(t.name, std::move(data));
  }
  return out;
}

// Newest "checkpoint-N" holding trainer_state.json, or "".
std::string newest_complete_checkpoint(const std::string &out_dir) {
  int64_t best = -1;
  std::string best_name;
  std::error_code ec;
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    int64_t step = checkpoint_step(name);
    std::error_code e2;
    if (step > best && fs::is_regular_file(it->path() / kStateFile, e2)) {
      best = step;
      best_name = name;
    }
  }
  return best_name;
}

} // namespace

Status save_checkpoint(const std::string &out_dir_in, const TrainerState &state,
                       const plan::LoraInfo &lora, const std::string &base_model,
                       const std::vector<NamedTensor> &adapters,
                       const std::vector<NamedTensor> &optimizer_state, std::string *saved_path,
                       int keep_last) {
  const std::string out_dir = fsutil::strip_trailing_slashes(out_dir_in);
  if (out_dir.empty()) return Status::error("save_checkpoint: empty output directory");
  if (state.step < 0) return Status::error("save_checkpoint: negative step");
  Status st = fsutil::create_dirs(out_dir);
  if (!st) return st;

  const std::string name = "checkpoint-" + std::to_string(state.step);
  const std::string final_dir = out_dir + "/" + name;
  const std::string tmp = final_dir + fsutil::tmp_suffix();
  fsutil::remove_all_quiet(tmp);
  st = fsutil::create_dirs(tmp);
  if (!st) return st;

  auto fail = [&](Status s) {
    fsutil::remove_all_quiet(tmp);
    return Status::error("cannot save checkpoint " + final_dir + ": " + s.message());
  };

  st = write_peft_files(tmp, lora, base_model, adapters);
  if (!st) return fail(st);

  std::vector<TensorToWrite> opt;
  std::set<std::string> seen;
  for (const NamedTensor &t : optimizer_state) {
    if (!seen.insert(t.name).second)
      return fail(Status::error("optimizer tensor " + t.name + " given twice"));
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    if (!t.data && n > 0) return fail(Status::error("optimizer tensor " + t.name + " has no data"));
    TensorToWrite w;
    w.name = t.name;
    w.dtype = DType::F32;
    w.shape = t.shape;
    w.data = t.data;
    opt.push_back(std::move(w));
  }
  std::sort(opt.begin(), opt.end(),
            [](const TensorToWrite &a, const TensorToWrite &b) { return a.name < b.name; });
  st = write_safetensors(tmp + "/" + kOptimizerFile, opt, {{"format", "pt"}});
  if (!st) return fail(st);

  nlohmann::json js = {
      {"format", kStateFormat},
      {"version", kStateVersion},
      {"global_step", state.step},
      {"data_position", {{"epoch", state.data.epoch}, {"index", state.data.index}}},
      {"seed", state.seed},
      {"plan_fingerprint", state.plan_fingerprint},
      {"training_fingerprint", state.training_fingerprint},
      {"training", state.training.is_object() ? state.training : nlohmann::json::object()},
      {"mesh", state.mesh.is_object() ? state.mesh : nlohmann::json::object()},
      {"extra", state.extra.is_null() ? nlohmann::json::object() : state.extra},
  };
  // The manifest: checksums of the files just written and of the state itself.
  st = add_file_checksums(tmp, {"adapter_model.safetensors", "adapter_config.json", kOptimizerFile}, &js);
  if (!st) return fail(st);
  seal_state(&js);
  std::string text;
  try {
    text = js.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } catch (const std::exception &e) {
    return fail(Status::error(std::string("cannot serialise trainer state: ") + e.what()));
  }
  // trainer_state.json is written last: its presence marks a complete checkpoint directory.
  st = fsutil::write_file_atomic(tmp + "/" + kStateFile, text);
  if (!st) return fail(st);
  st = fsutil::fsync_dir(tmp);
  if (!st) return fail(st);
  st = fsutil::replace_dir(tmp, final_dir);
  if (!st) return fail(st);

  st = fsutil::write_file_atomic(out_dir + "/" + kLatestFile, name + "\n");
  if (!st) return Status::error("checkpoint " + final_dir + " written, but updating " + out_dir +
                                "/latest failed: " + st.message());
  if (saved_path) *saved_path = final_dir;

  remove_stale_tmp_dirs(out_dir);
  if (keep_last > 0) {
    st = prune_checkpoints(out_dir, keep_last, name);
    if (!st) return st;
  }
  return Status::ok();
}

StatusOr<LoadedCheckpoint> load_checkpoint(const std::string &path_in) {
  std::string dir = fsutil::strip_trailing_slashes(path_in);
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return Status::error("checkpoint " + dir + " is not a directory");
  if (!fs::exists(dir + "/" + kStateFile, ec)) {
    // An output directory: follow `latest`, or without one take the newest complete checkpoint.
    const std::string latest = dir + "/" + kLatestFile;
    if (fs::exists(latest, ec)) {
      std::string text;
      Status st = fsutil::read_file(latest, &text);
      if (!st) return st;
      while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
        text.pop_back();
      if (text.empty() || text.find('/') != std::string::npos)
        return Status::error(latest + ": expected the name of a checkpoint directory, got '" +
                             text + "'");
      const std::string target = dir + "/" + text;
      if (!fs::exists(target + "/" + kStateFile, ec))
        return Status::error(latest + " names " + text + ", but " + target + "/" + kStateFile +
                             " does not exist");
      dir = target;
    } else {
      std::string newest = newest_complete_checkpoint(dir);
      if (newest.empty())
        return Status::error(dir + " holds neither " + kStateFile + " nor a `latest` file nor "
                             "any complete checkpoint-<step> directory");
      dir = dir + "/" + newest;
    }
  }

  LoadedCheckpoint ck;
  ck.path = dir;
  const std::string state_path = dir + "/" + kStateFile;
  std::string text;
  Status st = fsutil::read_file(state_path, &text);
  if (!st) return st;
  nlohmann::json js = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (js.is_discarded() || !js.is_object())
    return Status::error(state_path + ": not a JSON object");
  // Not js.value("format", ""): it throws when "format" holds a non-string (found by fuzz_checkpoint).
  const nlohmann::json format = js.contains("format") ? js["format"] : nlohmann::json(std::string());
  if (!format.is_string() || format.get<std::string>() != kStateFormat)
    return Status::error(state_path + ": not a parallora trainer state (format " + format.dump() + ")");
  if (!js.contains("version") || !js["version"].is_number_integer() ||
      js["version"].get<int64_t>() != kStateVersion)
    return Status::error(state_path + ": unsupported trainer state version " +
                         (js.contains("version") ? js["version"].dump() : std::string("(none)")) +
                         " (this build reads version " + std::to_string(kStateVersion) + ")");
  auto need_uint = [&](const nlohmann::json &obj, const char *key, uint64_t *out) -> Status {
    if (!obj.contains(key) || !obj[key].is_number_integer() ||
        (obj[key].is_number_integer() && !obj[key].is_number_unsigned() && obj[key].get<int64_t>() < 0))
      return Status::error(state_path + ": key '" + key + "' must be a non-negative integer");
    *out = obj[key].get<uint64_t>();
    return Status::ok();
  };
  uint64_t step = 0;
  if (!(st = need_uint(js, "global_step", &step))) return st;
  ck.state.step = int64_t(step);
  if (!js.contains("data_position") || !js["data_position"].is_object())
    return Status::error(state_path + ": key 'data_position' must be an object");
  if (!(st = need_uint(js["data_position"], "epoch", &ck.state.data.epoch))) return st;
  if (!(st = need_uint(js["data_position"], "index", &ck.state.data.index))) return st;
  if (!(st = need_uint(js, "seed", &ck.state.seed))) return st;
  if (js.contains("plan_fingerprint")) {
    if (!js["plan_fingerprint"].is_string())
      return Status::error(state_path + ": key 'plan_fingerprint' must be a string");
    ck.state.plan_fingerprint = js["plan_fingerprint"].get<std::string>();
  }
  if (js.contains("training_fingerprint")) {
    if (!js["training_fingerprint"].is_string())
      return Status::error(state_path + ": key 'training_fingerprint' must be a string");
    ck.state.training_fingerprint = js["training_fingerprint"].get<std::string>();
  }
  if (js.contains("training") && js["training"].is_object()) ck.state.training = js["training"];
  if (js.contains("mesh") && js["mesh"].is_object()) ck.state.mesh = js["mesh"];
  ck.state.extra = js.contains("extra") ? js["extra"] : nlohmann::json::object();
  st = verify_manifest(dir, state_path, js, {"adapter_model.safetensors", "adapter_config.json", kOptimizerFile});
  if (!st) return st;

  // A plan without trainables (hand-written test plans) saves an adapter file with no tensors.
  auto adapter_file = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  if (!adapter_file) return adapter_file.status();
  if (!(*adapter_file)->tensors().empty()) {
    auto adapters = read_peft_adapter(dir, &ck.lora);
    if (!adapters) return adapters.status();
    ck.adapters = std::move(*adapters);
  }
  auto opt = read_f32_tensors(dir + "/" + kOptimizerFile);
  if (!opt) return opt.status();
  ck.optimizer_state = std::move(*opt);
  return ck;
}

} // namespace parallora::rt
