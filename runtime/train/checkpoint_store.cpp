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
#include "runtime/plan/plan_io.h"
#include "runtime/train/adapter_export.h"

namespace parallora::rt {
namespace {
constexpr const char *kOptimizerFile = "optimizer.safetensors";
using json = nlohmann::json;
namespace fs = std::filesystem;

std::string rank_file(int rank) { return "rank-" + std::to_string(rank) + ".safetensors"; }

/// `path` is a checkpoint-N directory or an out dir (its `latest`, else the newest complete one).
StatusOr<std::string> resolve_checkpoint_dir(const std::string &path_in) {
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
  return dir;
}

/// Checkpoints of several ranks written before the global layout (rank-R.safetensors, no
/// optimizer.safetensors): this rank's shard, as held. Only the plan that wrote it can resume.
StatusOr<ResumePoint> load_rank_checkpoint(const std::string &dir, const Executor &ex, int rank) {
  std::error_code ec;
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

StatusOr<ResumePoint> CheckpointStore::load(const std::string &path, const Executor &ex, int rank,
                                            const std::string &plan_path) const {
  auto dir = resolve_checkpoint_dir(path);
  if (!dir) return dir.status();
  std::error_code ec;
  if (!fs::exists(*dir + "/" + kOptimizerFile, ec) && fs::exists(*dir + "/" + rank_file(0), ec)) {
    auto old = load_rank_checkpoint(*dir, ex, rank);  // the older per-rank layout
    if (!old) return old;
    if (Status s = check_resumable(old->state, old->path, plan_path); !s) return Status::error(old->path + ": " + s.message());
    return old;
  }
  // The global layout: every rank reads the whole adapter and moments and keeps its slices.
  auto c = load_checkpoint(*dir);
  if (!c) return c.status();
  if (Status s = check_resumable(c->state, c->path, plan_path); !s) return Status::error(c->path + ": " + s.message());
  ResumePoint rp;
  rp.state = std::move(c->state);
  rp.path = std::move(c->path);
  if (plan_.world_size == 1) {
    rp.trainables = std::move(c->adapters);
    rp.optimizer_state = std::move(c->optimizer_state);
    return rp;
  }
  auto tr = take_rank_slices(plan_, rank, plan::BufferKind::Trainable, c->adapters);
  if (!tr) return Status::error(rp.path + ": " + tr.message());
  auto os = take_rank_slices(plan_, rank, plan::BufferKind::OptState, c->optimizer_state);
  if (!os) return Status::error(rp.path + ": " + os.message());
  rp.trainables = std::move(*tr);
  rp.optimizer_state = std::move(*os);
  return rp;
}

Status CheckpointStore::check_resumable(const TrainerState &st, const std::string &cpath, const std::string &plan_path) const {
  const std::string training = plan::training_fingerprint(plan_);
  if (st.training_fingerprint.empty()) {
    // Written before training fingerprints: only the plan that wrote it.
    if (st.plan_fingerprint == fingerprint_) return Status::ok();
    return Status::error("the checkpoint was written for plan " + st.plan_fingerprint + ", but " + plan_path +
                         " has fingerprint " + fingerprint_ +
                         " (resume with the plan that wrote the checkpoint, or start a new run with --init-adapter " +
                         cpath + ")");
  }
  if (st.training_fingerprint == training) return Status::ok();
  std::string diff;
  for (auto &[label, value] : plan::training_config(plan_)) {
    const std::string was = st.training.contains(label) && st.training[label].is_string()
                                ? st.training[label].get<std::string>()
                                : std::string("(not recorded)");
    if (was != value) diff += std::string(diff.empty() ? "" : "; ") + label + " " + was + ", the plan has " + value;
  }
  if (diff.empty()) diff = "training fingerprint " + st.training_fingerprint + ", the plan has " + training;
  return Status::error("the checkpoint was trained with " + diff + " (" + plan_path +
                       "): a checkpoint resumes under any mesh, pipeline schedule, micro-batch count or precision, "
                       "but only with the same model, LoRA config, global batch, sequence length and hyperparameters "
                       "(start a new run with --init-adapter " + cpath + " to reuse its adapter)");
}

Status CheckpointStore::save(const TrainerState &st_in, Communicator &comm, const Executor &ex) const {
  TrainerState st = st_in;
  st.training_fingerprint = plan::training_fingerprint(plan_);
  st.training = json::object();
  for (auto &[label, value] : plan::training_config(plan_)) st.training[label] = value;
  const plan::Mesh &mesh = plan_.mesh;
  st.mesh = {{"world_size", plan_.world_size}, {"dp", mesh.dp},           {"tp", mesh.tp},
             {"pp", mesh.pp},                   {"strategy", plan_.strategy}, {"pipeline_schedule", plan_.pipeline_schedule},
             {"precision", plan_.precision},    {"micro_batches", plan_.micro_batches}};
  if (plan_.world_size == 1) {
    std::string saved;
    return save_checkpoint(out_, st, plan_.lora, base_model_, named_tensors(ex, plan::BufferKind::Trainable),
                           named_tensors(ex, plan::BufferKind::OptState), &saved, keep_last_);
  }
  // Several ranks: the whole adapter and AdamW moments are assembled on rank 0 (tensor-parallel
  // slices pasted, pipeline stages joined, ZeRO-1 moments taken from their owners), which writes
  // the one-rank layout: the checkpoint resumes under any mesh.
  std::vector<FullTensor> adapters, moments;
  if (Status s = gather_full_trainables(plan_, comm, ex, &adapters); !s) return s;
  if (Status s = gather_full_optimizer_states(plan_, comm, ex, &moments); !s) return s;
  if (comm.rank() != 0) return Status::ok();
  std::string saved;
  return save_checkpoint(out_, st, plan_.lora, base_model_, as_named(adapters), as_named(moments), &saved, keep_last_);
}

} // namespace parallora::rt
