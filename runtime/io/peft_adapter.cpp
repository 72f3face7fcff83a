//===- peft_adapter.cpp - LoRA adapters in Hugging Face PEFT's format -----===//
#include "runtime/io/peft_adapter.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "runtime/base/safetensors.h"
#include "runtime/base/fs_util.h"

namespace parallora::rt {

namespace {

constexpr const char *kPrefix = "base_model.model.";
constexpr const char *kWeightsFile = "adapter_model.safetensors";
constexpr const char *kConfigFile = "adapter_config.json";

int64_t numel_of(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Our name from a PEFT key, or "" when the key is not a LoRA A/B weight.
// "base_model.model.X.lora_A.weight" -> "X.lora_A.weight";
// "base_model.model.X.lora_A.default.weight" -> "X.lora_A.weight".
std::string name_from_key(const std::string &key) {
  std::string rest = key;
  if (rest.rfind(kPrefix, 0) == 0) rest = rest.substr(std::string(kPrefix).size());
  for (const char *part : {".lora_A.", ".lora_B."}) {
    size_t at = rest.rfind(part);
    if (at == std::string::npos) continue;
    std::string module = rest.substr(0, at);
    std::string tail = rest.substr(at + std::string(part).size());
    if (tail == "weight") return rest;
    // "<adapter>.weight" with a single adapter-name component.
    if (tail.size() > 7 && tail.compare(tail.size() - 7, 7, ".weight") == 0 &&
        tail.substr(0, tail.size() - 7).find('.') == std::string::npos && !module.empty())
      return module + std::string(part) + "weight";
  }
  return "";
}

nlohmann::json number_json(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9e15) return int64_t(v);
  return v;
}

} // namespace

std::string peft_key(const std::string &name) { return kPrefix + name; }

Status write_peft_files(const std::string &dir, const plan::LoraInfo &lora,
                        const std::string &base_model_name_or_path,
                        const std::vector<NamedTensor> &adapters) {
  std::set<std::string> seen;
  std::vector<TensorToWrite> tensors;
  tensors.reserve(adapters.size());
  for (const NamedTensor &t : adapters) {
    if (t.name.empty()) return Status::error("write_peft_adapter: a tensor has an empty name");
    if (!seen.insert(t.name).second)
      return Status::error("write_peft_adapter: tensor " + t.name + " given twice");
    if (!t.data && numel_of(t.shape) > 0)
      return Status::error("write_peft_adapter: tensor " + t.name + " has no data");
    for (int64_t d : t.shape)
      if (d < 0) return Status::error("write_peft_adapter: tensor " + t.name + " has a negative dim");
    TensorToWrite w;
    w.name = peft_key(t.name);
    w.dtype = DType::F32;
    w.shape = t.shape;
    w.data = t.data;
    tensors.push_back(std::move(w));
  }
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorToWrite &a, const TensorToWrite &b) { return a.name < b.name; });
  const std::string weights_path = dir + "/" + kWeightsFile;
  Status st = write_safetensors(weights_path, tensors, {{"format", "pt"}});
  if (!st) return st;

  std::vector<std::string> targets = lora.target_modules;
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  nlohmann::json cfg = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"r", lora.rank},
      {"lora_alpha", number_json(lora.alpha)},
      {"lora_dropout", lora.dropout},
      {"target_modules", targets},
      {"use_rslora", lora.use_rslora},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"init_lora_weights", true},
      {"inference_mode", true},
      {"base_model_name_or_path", base_model_name_or_path},
      {"modules_to_save", nullptr},
      {"revision", nullptr},
      {"layers_to_transform", nullptr},
  };
  return fsutil::write_file_atomic(dir + "/" + kConfigFile, cfg.dump(2) + "\n");
}

Status write_peft_adapter(const std::string &dir_in, const plan::LoraInfo &lora,
                          const std::string &base_model_name_or_path,
                          const std::vector<NamedTensor> &adapters) {
  const std::string dir = fsutil::strip_trailing_slashes(dir_in);
  if (dir.empty()) return Status::error("write_peft_adapter: empty directory name");
  Status st = fsutil::create_dirs(fsutil::parent_dir(dir));
  if (!st) return st;
  const std::string tmp = dir + fsutil::tmp_suffix();
  fsutil::remove_all_quiet(tmp);
  st = fsutil::create_dirs(tmp);
  if (!st) return st;
  st = write_peft_files(tmp, lora, base_model_name_or_path, adapters);
  if (st) st = fsutil::fsync_dir(tmp);
  if (st) st = fsutil::replace_dir(tmp, dir);
  if (!st) fsutil::remove_all_quiet(tmp);
  return st;
}

StatusOr<std::map<std::string, AdapterTensor>> read_peft_adapter_with_shapes(
    const std::string &dir_in, plan::LoraInfo *info_out) {
  const std::string dir = fsutil::strip_trailing_slashes(dir_in);
  const std::string config_path = dir + "/" + kConfigFile;
  const std::string weights_path = dir + "/" + kWeightsFile;

  std::string text;
  Status st = fsutil::read_file(config_path, &text);
  if (!st) return Status::error("PEFT adapter " + dir + ": " + st.message());
  nlohmann::json cfg = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (cfg.is_discarded() || !cfg.is_object())
    return Status::error(config_path + ": not a JSON object");
  if (cfg.contains("peft_type") && cfg["peft_type"] != "LORA")
    return Status::error(config_path + ": peft_type is " + cfg["peft_type"].dump() +
                         ", only LORA adapters are supported");
  plan::LoraInfo info;
  if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<int64_t>() <= 0)
    return Status::error(config_path + ": key 'r' must be a positive integer");
  info.rank = cfg["r"].get<int64_t>();
  if (cfg.contains("lora_alpha")) {
    if (!cfg["lora_alpha"].is_number())
      return Status::error(config_path + ": key 'lora_alpha' must be a number");
    info.alpha = cfg["lora_alpha"].get<double>();
  } else {
    info.alpha = 8;  // PEFT's LoraConfig default
  }
  if (cfg.contains("lora_dropout") && !cfg["lora_dropout"].is_null()) {
    if (!cfg["lora_dropout"].is_number())
      return Status::error(config_path + ": key 'lora_dropout' must be a number");
    info.dropout = cfg["lora_dropout"].get<double>();
  }
  if (cfg.contains("use_rslora") && !cfg["use_rslora"].is_null()) {
    if (!cfg["use_rslora"].is_boolean())
      return Status::error(config_path + ": key 'use_rslora' must be true or false");
    info.use_rslora = cfg["use_rslora"].get<bool>();
  }
  if (cfg.contains("target_modules") && !cfg["target_modules"].is_null()) {
    const auto &tm = cfg["target_modules"];
    if (tm.is_string()) {
      info.target_modules.push_back(tm.get<std::string>());
    } else if (tm.is_array()) {
      for (const auto &m : tm) {
        if (!m.is_string())
          return Status::error(config_path + ": key 'target_modules' must list strings");
        info.target_modules.push_back(m.get<std::string>());
      }
      std::sort(info.target_modules.begin(), info.target_modules.end());
    } else {
      return Status::error(config_path + ": key 'target_modules' must be a list or a string");
    }
  }

  auto file = SafetensorsFile::open(weights_path);
  if (!file) return Status::error("PEFT adapter " + dir + ": " + file.message());
  std::map<std::string, AdapterTensor> out;
  for (const TensorView &t : (*file)->tensors()) {
    std::string name = name_from_key(t.name);
    if (name.empty())
      return Status::error(weights_path + ": tensor '" + t.name +
                           "' is not a LoRA weight (expected base_model.model.<module>.lora_A."
                           "weight or .lora_B.weight); only plain LoRA adapters are supported");
    if (out.count(name))
      return Status::error(weights_path + ": tensor '" + t.name + "' duplicates " + name);
    if (t.shape.size() != 2)
      return Status::error(weights_path + ": tensor '" + t.name + "' has " +
                           std::to_string(t.shape.size()) + " dims, expected 2");
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16 &&
        t.dtype != DType::F64)
      return Status::error(weights_path + ": tensor '" + t.name + "' has dtype " +
                           dtype_name(t.dtype) + ", expected F32, F16, BF16 or F64");
    AdapterTensor a;
    a.shape = t.shape;
    a.data.resize(size_t(t.numel()));
    Status cs = to_f32(t, a.data.data());
    if (!cs) return Status::error(weights_path + ": tensor '" + t.name + "': " + cs.message());
    out.emplace(std::move(name), std::move(a));
  }
  if (out.empty()) return Status::error(weights_path + ": holds no LoRA tensors");
  if (info_out) *info_out = info;
  return out;
}

StatusOr<std::map<std::string, std::vector<float>>> read_peft_adapter(const std::string &dir,
                                                                      plan::LoraInfo *info_out) {
  auto r = read_peft_adapter_with_shapes(dir, info_out);
  if (!r) return r.status();
  std::map<std::string, std::vector<float>> out;
  for (auto &kv : *r) out.emplace(kv.first, std::move(kv.second.data));
  return out;
}

} // namespace parallora::rt
