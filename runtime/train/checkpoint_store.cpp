//===- checkpoint_store.cpp - a session's checkpoints ----------------------===//
#include "runtime/train/checkpoint_store.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "runtime/base/fs_util.h"
#include "runtime/base/safetensors.h"
#include "runtime/io/checkpoint_manifest.h"
#include "runtime/train/adapter_export.h"

namespace parallora::rt {
namespace {
using json = nlohmann::json;
namespace fs = std::filesystem;

std::string rank_file(int rank) { return "rank-" + std::to_string(rank) + ".safetensors"; }

/// Plans of several ranks: `path` is a checkpoint-N directory or an out dir.
StatusOr<ResumePoint> load_rank_checkpoint(const std::string &path_in, const Executor &ex, int rank) {
  std::string dir = fsutil::strip_trailing_slashes(path_in);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status::error("checkpoint " + dir + " is not a directory");
  if (!fs::exists(dir + "/trainer_state.json", ec)) {
    std::string latest;
    if (fs::exists(dir + "/latest", ec)) {
      if (Status s = fsutil::read_file(dir + "/latest", &latest); !s) return s;
      while (!latest.empty() && (latest.back() == '\n' || latest.back() == '\r' || latest.back() == ' ')) latest.pop_back();
    } else {
      int64_t best = -1;
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::string name = it->path().filename().string();
        int64_t st = checkpoint_dir_step(name);
        std::error_code e2;
        if (st > best && fs::is_regular_file(it->path() / "trainer_state.json", e2)) {
          best = st;
          latest = name;
        }
      }
    }
    if (latest.empty() || latest.find('/') != std::string::npos || !fs::exists(dir + "/" + latest + "/trainer_state.json", ec))
      return Status::error(dir + " holds no complete checkpoint (neither trainer_state.json nor a valid `latest`)");
    dir += "/" + latest;
  }
  ResumePoint ck;
  ck.path = dir;
  std::string text;
  if (Status s = fsutil::read_file(dir + "/trainer_state.json", &text); !s) return s;
  json js = json::parse(text, nullptr, false);
  if (!js.is_object() || js.value("format", std::string()) != "parallora-trainer-state" ||
      !js.contains("global_step") || !js["global_step"].is_number_integer() || !js.contains("seed") ||
      !js["seed"].is_number_integer() || !js.contains("data_position") || !js["data_position"].is_object())
    return Status::error(dir + "/trainer_state.json: not a parallora trainer state");
  ck.state.step = js["global_step"].get<int64_t>();
  ck.state.seed = js["seed"].get<uint64_t>();
  ck.state.data.epoch = js["data_position"].value("epoch", uint64_t{0});
  ck.state.data.index = js["data_position"].value("index", uint64_t{0});
  ck.state.plan_fingerprint = js.value("plan_fingerprint", std::string());
  const int world_size = js.value("world_size", 1);
  const std::string file = dir + "/" + rank_file(rank);
  if (!fs::exists(file, ec))
    return Status::error(dir + " has no " + rank_file(rank) + " (it was written by a run of " +
                         std::to_string(world_size) + " rank" + (world_size == 1 ? "" : "s") + ")");
  if (Status s = verify_manifest(dir, dir + "/trainer_state.json", js, {rank_file(rank)}); !s) return s;
  auto st = SafetensorsFile::open(file);
  if (!st) return st.status();
  // The shard must be this rank's of this plan (a renamed or swapped file is refused).
  const auto &meta = (*st)->metadata();
  auto meta_of = [&](const char *key) {
    auto it = meta.find(key);
    return it == meta.end() ? std::string() : it->second;
  };
  if (meta_of("rank") != std::to_string(rank))
    return Status::error(file + ": holds the shard of rank " + (meta_of("rank").empty() ? "?" : meta_of("rank")) +
                         ", not of rank " + std::to_string(rank) + " (files renamed or swapped?)");
  if (!meta_of("plan_fingerprint").empty() && meta_of("plan_fingerprint") != ck.state.plan_fingerprint)
    return Status::error(file + ": written for plan " + meta_of("plan_fingerprint") + ", but the checkpoint's state names plan " +
                         ck.state.plan_fingerprint);
  std::set<std::string> opt_names;
  for (const BufferTensor &t : ex.buffers(plan::BufferKind::OptState)) opt_names.insert(t.buffer->name);
  for (const TensorView &t : (*st)->tensors()) {
    std::vector<float> data(static_cast<size_t>(t.numel()));
    if (Status s = to_f32(t, data.data()); !s) return Status::error(file + ": " + s.message());
    (opt_names.count(t.name) ? ck.optimizer_state : ck.trainables)[t.name] = std::move(data);
  }
  return ck;
}

void prune_rank_checkpoints(const std::string &out, int keep_last, const std::string &keep) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    int64_t st = checkpoint_dir_step(name);
    if (st >= 0 && it->is_directory(ec)) found.emplace_back(st, name);
  }
  std::sort(found.begin(), found.end());
  if (static_cast<int64_t>(found.size()) <= keep_last) return;
  for (size_t i = 0; i + keep_last < found.size(); ++i)
    if (found[i].second != keep) (void)fsutil::remove_dir_atomically(out + "/" + found[i].second);  // best effort
}

} // namespace

int64_t checkpoint_dir_step(const std::string &name) {
  const std::string prefix = "checkpoint-";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || name.size() > prefix.size() + 18) return -1;
  int64_t v = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

CheckpointStore::CheckpointStore(std::string out_dir, const plan::Plan &plan, std::string fingerprint,
                                 std::string base_model, int keep_last)
    : out_(std::move(out_dir)), plan_(plan), fingerprint_(std::move(fingerprint)), base_model_(std::move(base_model)),
      keep_last_(keep_last) {}

StatusOr<ResumePoint> CheckpointStore::load(const std::string &path, const Executor &ex, int rank) const {
  if (plan_.world_size > 1) return load_rank_checkpoint(path, ex, rank);
  auto c = load_checkpoint(path);
  if (!c) return c.status();
  ResumePoint rp;
  rp.state = std::move(c->state);
  rp.trainables = std::move(c->adapters);
  rp.optimizer_state = std::move(c->optimizer_state);
  rp.path = std::move(c->path);
  return rp;
}

Status CheckpointStore::save(const TrainerState &st, Communicator &comm, const Executor &ex) const {
  if (plan_.world_size == 1) {
    std::string saved;
    return save_checkpoint(out_, st, plan_.lora, base_model_, named_tensors(ex, plan::BufferKind::Trainable),
                           named_tensors(ex, plan::BufferKind::OptState), &saved, keep_last_);
  }
  // Several ranks: rank 0 names and creates the tmp dir; every rank writes its shard; rank 0
  // adds the full adapter and trainer_state.json (last) and commits by rename.
  const int R = comm.rank();
  const bool rank0 = R == 0;
  const std::string out = fsutil::strip_trailing_slashes(out_);
  const std::string name = "checkpoint-" + std::to_string(st.step);
  const std::string final_dir = out + "/" + name;
  long long pid = rank0 ? static_cast<long long>(::getpid()) : 0;
  if (Status s = control_broadcast(comm, &pid, sizeof pid); !s) return s;
  const std::string tmp = final_dir + ".tmp-" + std::to_string(pid);
  if (rank0) {
    fsutil::remove_all_quiet(tmp);
    if (Status s = fsutil::create_dirs(tmp); !s) return s;
  }
  if (Status s = control_barrier(comm); !s) return s;
  std::vector<TensorToWrite> mine;
  for (const BufferTensor &t : ex.buffers(plan::BufferKind::Trainable))
    mine.push_back({t.buffer->name, DType::F32, t.buffer->shape, t.tensor.data});
  for (const BufferTensor &t : ex.buffers(plan::BufferKind::OptState))
    mine.push_back({t.buffer->name, DType::F32, t.buffer->shape, t.tensor.data});
  const plan::Mesh &mesh = plan_.mesh;
  const std::string mesh_str = std::to_string(mesh.dp) + "x" + std::to_string(mesh.tp) + "x" + std::to_string(mesh.pp);
  if (Status s = write_safetensors(tmp + "/" + rank_file(R), mine,
                                   {{"format", "pt"}, {"rank", std::to_string(R)}, {"mesh", mesh_str},
                                    {"plan_fingerprint", fingerprint_}});
      !s)
    return s;
  // Every shard's size and CRC32 go to rank 0 for the manifest (checkpoint_manifest.h).
  auto sum = file_checksum(tmp + "/" + rank_file(R));
  if (!sum) return sum.status();
  const double row[2] = {static_cast<double>((*sum)["bytes"].get<int64_t>()),
                         static_cast<double>(std::stoul((*sum)["crc32"].get<std::string>(), nullptr, 16))};
  std::vector<double> rows(rank0 ? 2 * static_cast<size_t>(plan_.world_size) : 0);
  if (Status s = control_gather(comm, row, 2, rank0 ? rows.data() : nullptr); !s) return s;
  std::vector<FullTensor> full;
  if (Status s = gather_full_trainables(plan_, comm, ex, &full); !s) return s;
  if (Status s = control_barrier(comm); !s) return s;
  if (!rank0) return Status::ok();
  if (Status s = write_peft_files(tmp, plan_.lora, base_model_, as_named(full)); !s) return s;
  json js = {{"format", "parallora-trainer-state"},
             {"version", 1},
             {"global_step", st.step},
             {"data_position", {{"epoch", st.data.epoch}, {"index", st.data.index}}},
             {"seed", st.seed},
             {"plan_fingerprint", st.plan_fingerprint},
             {"world_size", plan_.world_size},
             {"mesh", {{"dp", mesh.dp}, {"tp", mesh.tp}, {"pp", mesh.pp}}},
             {"extra", st.extra}};
  json &files = js["files"];
  for (int r = 0; r < plan_.world_size; ++r) {
    char crc[16];
    std::snprintf(crc, sizeof crc, "%08x", static_cast<unsigned>(rows[2 * r + 1]));
    files[rank_file(r)] = {{"bytes", static_cast<int64_t>(rows[2 * r])}, {"crc32", crc}};
  }
  if (Status s = add_file_checksums(tmp, {"adapter_model.safetensors", "adapter_config.json"}, &js); !s) return s;
  seal_state(&js);
  if (Status s = fsutil::write_file_atomic(tmp + "/trainer_state.json", js.dump(2) + "\n"); !s) return s;
  if (Status s = fsutil::fsync_dir(tmp); !s) return s;
  if (Status s = fsutil::replace_dir(tmp, final_dir); !s) return s;
  if (Status s = fsutil::write_file_atomic(out + "/latest", name + "\n"); !s) return s;
  if (keep_last_ > 0) prune_rank_checkpoints(out, keep_last_, name);
  return Status::ok();
}

} // namespace parallora::rt
