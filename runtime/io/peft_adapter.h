//===- peft_adapter.h - LoRA adapters in Hugging Face PEFT's on-disk format ===//
//
// A PEFT adapter directory (what `PeftModel.save_pretrained` writes and
// `PeftModel.from_pretrained(base, dir)` loads):
//   adapter_model.safetensors  keys "base_model.model.<module>.lora_A.weight" / ".lora_B.weight"
//                              (no adapter name), F32 here
//   adapter_config.json        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": ..,
//                               "lora_alpha": .., "lora_dropout": .., "target_modules": [sorted],
//                               "use_rslora": .., "bias": "none", "fan_in_fan_out": false,
//                               "init_lora_weights": true, "inference_mode": true,
//                               "base_model_name_or_path": .., "modules_to_save": null,
//                               "revision": null, "layers_to_transform": null}
// Our tensor names are the HF module names: "model.layers.0.self_attn.q_proj.lora_A.weight".
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

/// A borrowed fp32 tensor to write: numel(shape) floats at `data`.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float *data = nullptr;
};

/// The PEFT key of one of our names: "base_model.model." + name.
std::string peft_key(const std::string &name);

/// Writes the adapter directory `dir` atomically: everything goes into `dir.tmp-<pid>` (files
/// fsync'd), then renamed to `dir`; an existing `dir` is first renamed aside and removed after.
/// Parent directories are created as needed.
Status write_peft_adapter(const std::string &dir, const plan::LoraInfo &lora,
                          const std::string &base_model_name_or_path,
                          const std::vector<NamedTensor> &adapters);

/// Writes adapter_model.safetensors + adapter_config.json into the existing directory `dir`
/// (each file atomically, no directory rename); used by checkpoints, which rename the whole
/// checkpoint directory themselves.
Status write_peft_files(const std::string &dir, const plan::LoraInfo &lora,
                        const std::string &base_model_name_or_path,
                        const std::vector<NamedTensor> &adapters);

/// Reads a PEFT LoRA adapter directory (ours or PEFT's own): keys "base_model.model.<name>",
/// also with an adapter name before ".weight" (".lora_A.default.weight", older PEFT), which is
/// dropped; F32/F16/BF16/F64 converted to fp32. Returns our names -> data (shapes are checked
/// only for being 2-d). `info_out` (may be null) receives r, lora_alpha, lora_dropout,
/// target_modules, use_rslora from adapter_config.json.
StatusOr<std::map<std::string, std::vector<float>>> read_peft_adapter(const std::string &dir,
                                                                      plan::LoraInfo *info_out);

/// Same, also returning each tensor's shape.
struct AdapterTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
StatusOr<std::map<std::string, AdapterTensor>> read_peft_adapter_with_shapes(
    const std::string &dir, plan::LoraInfo *info_out);

} // namespace parallora::rt
