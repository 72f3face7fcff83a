//===- hf_config.cpp - Hugging Face LlamaConfig (config.json) -------------===//
//
// Reads the keys of transformers' LlamaConfig that shape the graph. Both the
// transformers 4 layout (top-level `rope_theta`, `rope_scaling`, `torch_dtype`) and the
// transformers 5 layout (`rope_parameters`, `dtype`) are accepted. A JSON `null` counts as
// an absent key, because HF writes e.g. `"rope_scaling": null` and `"head_dim": null`.
//
//===----------------------------------------------------------------------===//
#include "frontend/hf_config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace parallora {
namespace {

using json = nlohmann::json;

/// Reads typed keys of one JSON object; the first failure is kept and names the key as
/// `prefix + key` so nested keys read as `rope_scaling.factor`.
class KeyReader {
public:
  KeyReader(const json &object, std::string origin, std::string prefix = "")
      : object_(object), origin_(std::move(origin)), prefix_(std::move(prefix)) {}

  bool has(const char *key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }

  void read_int(const char *key, int64_t &out, bool must_be_positive = true) {
    const json *v = lookup(key);
    if (!v)
      return;
    if (!v->is_number_integer()) {
      fail(key, std::string("expected an integer, got ") + describe(*v));
      return;
    }
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)) {
      fail(key, "value " + v->dump() + " does not fit in int64");
      return;
    }
    int64_t value = v->get<int64_t>();
    if (must_be_positive && value <= 0) {
      fail(key, "must be positive, got " + std::to_string(value));
      return;
    }
    out = value;
  }

  void read_double(const char *key, double &out, bool must_be_positive = true) {
    const json *v = lookup(key);
    if (!v)
      return;
    if (!v->is_number()) {
      fail(key, std::string("expected a number, got ") + describe(*v));
      return;
    }
    double value = v->get<double>();
    if (must_be_positive && !(value > 0.0)) {
      fail(key, "must be positive, got " + v->dump());
      return;
    }
    out = value;
  }

  void read_bool(const char *key, bool &out) {
    const json *v = lookup(key);
    if (!v)
      return;
    if (!v->is_boolean()) {
      fail(key, std::string("expected true or false, got ") + describe(*v));
      return;
    }
    out = v->get<bool>();
  }

  void read_string(const char *key, std::string &out) {
    const json *v = lookup(key);
    if (!v)
      return;
    if (!v->is_string()) {
      fail(key, std::string("expected a string, got ") + describe(*v));
      return;
    }
    out = v->get<std::string>();
  }

  /// Returns the object under `key`, nullptr when absent; a non-object is an error.
  const json *read_object(const char *key) {
    const json *v = lookup(key);
    if (v && !v->is_object()) {
      fail(key, std::string("expected an object or null, got ") + describe(*v));
      return nullptr;
    }
    return v;
  }

  void fail(const std::string &key, const std::string &message) {
    if (status_.is_ok())
      status_ = Status::error(origin_ + ": key '" + prefix_ + key + "': " + message);
  }

  const Status &status() const { return status_; }

private:
  const json *lookup(const char *key) const {
    if (!status_.is_ok())
      return nullptr;
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null())
      return nullptr;
    return &*it;
  }

  static std::string describe(const json &v) {
    std::string text = v.dump();
    if (text.size() > 40)
      text = text.substr(0, 37) + "...";
    return std::string(v.type_name()) + " " + text;
  }

  const json &object_;
  std::string origin_;
  std::string prefix_;
  Status status_;
};

/// Applies a rope block: transformers 5 `rope_parameters` or transformers 4 `rope_scaling`.
/// "default" means plain RoPE; "llama3" needs all four of its keys, as transformers'
/// `_validate_llama3_parameters` demands.
Status read_rope_block(const json &block, const std::string &origin, const std::string &block_key,
                       LlamaConfig &config) {
  KeyReader r(block, origin, block_key + ".");
  r.read_double("rope_theta", config.rope_theta);
  std::string type_key = "rope_type";
  std::string type;
  if (r.has("rope_type")) {
    r.read_string("rope_type", type);
  } else if (r.has("type")) {  // transformers < 4.43 spelling
    type_key = "type";
    r.read_string("type", type);
  } else {
    type = "default";
  }
  if (!r.status().is_ok())
    return r.status();

  if (type == "default") {
    config.rope_scaling.reset();
    return Status::ok();
  }
  if (type != "llama3") {
    r.fail(type_key, "unsupported rope type '" + type + "' (supported: default, llama3)");
    return r.status();
  }
  RopeScaling scaling;
  scaling.rope_type = type;
  for (const char *key : {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"}) {
    if (!r.has(key)) {
      r.fail(key, "required for rope type 'llama3' but missing");
      return r.status();
    }
  }
  r.read_double("factor", scaling.factor);
  r.read_double("low_freq_factor", scaling.low_freq_factor);
  r.read_double("high_freq_factor", scaling.high_freq_factor);
  r.read_int("original_max_position_embeddings", scaling.original_max_position_embeddings);
  if (!r.status().is_ok())
    return r.status();
  if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
    r.fail("high_freq_factor", "must exceed low_freq_factor (" +
                                   std::to_string(scaling.low_freq_factor) + "), got " +
                                   std::to_string(scaling.high_freq_factor));
    return r.status();
  }
  config.rope_scaling = scaling;
  return Status::ok();
}

} // namespace

namespace {

/// The parameter count with overflow checks: false when it does not fit in int64, which
/// parse_llama_config reports instead of letting num_parameters() overflow.
bool count_parameters(const LlamaConfig &c, int64_t &total) {
  bool overflow = false;
  auto mul = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    overflow |= __builtin_mul_overflow(a, b, &r);
    return r;
  };
  auto add = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    overflow |= __builtin_add_overflow(a, b, &r);
    return r;
  };
  const int64_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q_dim = mul(c.num_attention_heads, c.head_dim);
  const int64_t kv_dim = mul(c.num_key_value_heads, c.head_dim);
  int64_t per_layer = add(mul(D, q_dim), mul(2, mul(D, kv_dim)));  // q, k, v projections
  per_layer = add(per_layer, mul(q_dim, D));                        // o projection
  per_layer = add(per_layer, mul(3, mul(D, I)));                    // gate, up, down
  per_layer = add(per_layer, mul(2, D));  // input and post-attention norms
  if (c.attention_bias)  // HF puts the attention bias on o_proj too
    per_layer = add(per_layer, add(add(q_dim, mul(2, kv_dim)), D));
  if (c.mlp_bias)
    per_layer = add(per_layer, add(mul(2, I), D));
  total = add(add(mul(V, D), mul(c.num_hidden_layers, per_layer)), D);  // + final norm
  if (!c.tie_word_embeddings)
    total = add(total, mul(V, D));  // lm_head
  return !overflow;
}

} // namespace

/// Embedding V*D, per layer q D*Hq*Dh, k and v D*Hkv*Dh, o Hq*Dh*D, MLP 3*D*I, two norms
/// 2*D (+ biases), final norm D, lm_head V*D unless tied. -1 if the count overflows int64
/// (never for a config that parse_llama_config accepted).
int64_t LlamaConfig::num_parameters() const {
  int64_t total;
  return count_parameters(*this, total) ? total : -1;
}

StatusOr<LlamaConfig> parse_llama_config(const std::string &json_text, const std::string &origin,
                                         bool require_sizes) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error &e) {
    return Status::error(origin + ": malformed JSON at byte " + std::to_string(e.byte) + ": " +
                         e.what());
  } catch (const json::exception &e) {  // e.g. out_of_range 406: a number like 1e999
    return Status::error(origin + ": malformed JSON: " + e.what());
  }
  if (!root.is_object())
    return Status::error(origin + ": expected a JSON object at top level, got " +
                         std::string(root.type_name()));

  LlamaConfig c;
  KeyReader r(root, origin);
  r.read_string("model_type", c.model_type);
  if (r.status().is_ok() && c.model_type != "llama")
    r.fail("model_type", "only 'llama' is supported, found '" + c.model_type + "'");

  r.read_int("vocab_size", c.vocab_size);
  r.read_int("hidden_size", c.hidden_size);
  r.read_int("intermediate_size", c.intermediate_size);
  r.read_int("num_hidden_layers", c.num_hidden_layers);
  r.read_int("num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = c.num_attention_heads;
  r.read_int("num_key_value_heads", c.num_key_value_heads);
  bool explicit_head_dim = r.has("head_dim");
  r.read_int("head_dim", c.head_dim);
  r.read_int("max_position_embeddings", c.max_position_embeddings);
  r.read_double("rms_norm_eps", c.rms_norm_eps);
  r.read_double("rope_theta", c.rope_theta);
  r.read_bool("tie_word_embeddings", c.tie_word_embeddings);
  r.read_bool("attention_bias", c.attention_bias);
  r.read_bool("mlp_bias", c.mlp_bias);
  r.read_double("initializer_range", c.initializer_range, /*must_be_positive=*/false);
  r.read_string("hidden_act", c.hidden_act);
  // transformers 5 writes `dtype`, 4 writes `torch_dtype`; the newer key wins.
  const char *dtype_key = r.has("dtype") ? "dtype" : "torch_dtype";
  r.read_string(dtype_key, c.torch_dtype);
  if (!r.status().is_ok())
    return r.status();

  if (c.hidden_act != "silu")
    r.fail("hidden_act", "unsupported activation '" + c.hidden_act + "' (only 'silu')");
  else if (c.torch_dtype != "float32" && c.torch_dtype != "bfloat16" && c.torch_dtype != "float16")
    r.fail(dtype_key, "unsupported dtype '" + c.torch_dtype +
                          "' (supported: float32, bfloat16, float16)");
  else if (c.initializer_range < 0)
    r.fail("initializer_range", "must not be negative, got " + std::to_string(c.initializer_range));
  else if (c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_key_value_heads", "num_attention_heads (" + std::to_string(c.num_attention_heads) +
                                      ") is not a multiple of num_key_value_heads (" +
                                      std::to_string(c.num_key_value_heads) + ")");
  if (!r.status().is_ok())
    return r.status();
  if (require_sizes) {
    std::string missing;
    for (const char *key : kRequiredSizeKeys)
      if (!r.has(key)) missing += std::string(missing.empty() ? "" : ", ") + key;
    if (!missing.empty())
      return Status::error(origin + ": not a LLaMA config.json: missing " + missing +
                           " (transformers would silently use LLaMA-7B's sizes; give the model's own "
                           "config.json)");
  }

  if (!explicit_head_dim) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      r.fail("hidden_size", "hidden_size (" + std::to_string(c.hidden_size) +
                                ") is not divisible by num_attention_heads (" +
                                std::to_string(c.num_attention_heads) +
                                ") and head_dim is absent");
      return r.status();
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }

  // Rope: transformers 4 `rope_scaling` first, then transformers 5 `rope_parameters`, which
  // carries rope_theta as well and therefore overrides the top-level value.
  for (const char *block_key : {"rope_scaling", "rope_parameters"}) {
    const json *block = r.read_object(block_key);
    if (!r.status().is_ok())
      return r.status();
    if (!block)
      continue;
    Status s = read_rope_block(*block, origin, block_key, c);
    if (!s.is_ok())
      return s;
  }
  int64_t total;
  if (!count_parameters(c, total))
    return Status::error(origin + ": sizes too large: the parameter count (vocab_size " +
                         std::to_string(c.vocab_size) + ", hidden_size " +
                         std::to_string(c.hidden_size) + ", intermediate_size " +
                         std::to_string(c.intermediate_size) + ", num_hidden_layers " +
                         std::to_string(c.num_hidden_layers) + ", head_dim " +
                         std::to_string(c.head_dim) + ") overflows int64");
  return c;
}

StatusOr<LlamaConfig> load_llama_config(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error(path + ": cannot open config file");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return Status::error(path + ": read error");
  return parse_llama_config(text.str(), path);
}

} // namespace parallora
