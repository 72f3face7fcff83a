//===- hf_config.h - Hugging Face LlamaConfig (config.json) ---------------===//
//
// The subset of transformers' LlamaConfig that determines the graph. Parsed from an HF
// `config.json`; unknown keys are ignored, wrong types and impossible values are errors
// that name the file and the key.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "runtime/base/status.h"

namespace parallora {

/// Llama-3 style rope scaling ("rope_type": "llama3"). Other types are rejected at parse time.
struct RopeScaling {
  std::string rope_type = "llama3";
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string model_type = "llama";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // defaults to num_attention_heads when absent
  int64_t head_dim = 128;            // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  double initializer_range = 0.02;
  std::string torch_dtype = "float32";  // "float32" | "bfloat16" | "float16"
  std::string hidden_act = "silu";

  /// Total parameter count of the base model (embedding, layers, norm, head unless tied).
  int64_t num_parameters() const;
};

/// The keys that fix the model's sizes. transformers defaults each to LLaMA-7B's value, so a
/// config.json without them (a truncated file, another model's config, or `{}`) would silently
/// become a 7B model; parse_llama_config refuses it unless `require_sizes` is false.
inline constexpr const char *kRequiredSizeKeys[] = {"vocab_size", "hidden_size", "intermediate_size",
                                                    "num_hidden_layers", "num_attention_heads"};

/// Parses `path` (an HF config.json). Errors name the file and the key.
StatusOr<LlamaConfig> load_llama_config(const std::string &path);
/// Parses a JSON text; `origin` names the source in errors. `require_sizes`: refuse a config
/// lacking any of kRequiredSizeKeys (false: transformers' LlamaConfig defaults, 7B sizes).
StatusOr<LlamaConfig> parse_llama_config(const std::string &json_text, const std::string &origin,
                                         bool require_sizes = true);

} // namespace parallora
