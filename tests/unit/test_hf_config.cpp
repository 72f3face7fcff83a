// Tests for frontend/hf_config: real HF configs, defaults, both rope layouts, and every
// error naming the file and the key.
#include "frontend/hf_config.h"

#include <cstdio>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>

using namespace parallora;

namespace {

const std::string kConfigs = std::string(PARALLORA_SOURCE_DIR) + "/models/configs/";

/// Parses with transformers' defaults for absent sizes (the tests below probe single keys).
LlamaConfig parse_ok(const std::string &text) {
  auto c = parse_llama_config(text, "test.json", /*require_sizes=*/false);
  EXPECT_TRUE(c.is_ok()) << c.message();
  return c.is_ok() ? c.value() : LlamaConfig();
}

/// Parses `text`, expects failure, and checks the message names the origin and every part.
void expect_error(const std::string &text, std::initializer_list<const char *> parts, bool require_sizes = false) {
  auto c = parse_llama_config(text, "cfg/config.json", require_sizes);
  ASSERT_FALSE(c.is_ok()) << "parsed without error: " << text;
  EXPECT_NE(c.message().find("cfg/config.json"), std::string::npos) << c.message();
  for (const char *part : parts)
    EXPECT_NE(c.message().find(part), std::string::npos)
        << "message lacks '" << part << "': " << c.message();
}

} // namespace

TEST(HfConfig, Llama32_1B) {
  auto c = load_llama_config(kConfigs + "llama-3.2-1b.json");
  ASSERT_TRUE(c.is_ok()) << c.message();
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->intermediate_size, 8192);
  EXPECT_EQ(c->num_hidden_layers, 16);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->rope_type, "llama3");
  EXPECT_DOUBLE_EQ(c->rope_scaling->factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling->low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_EQ(c->num_parameters(), 1235814400);
}

TEST(HfConfig, TinyLlama1_1B) {
  auto c = load_llama_config(kConfigs + "tinyllama-1.1b.json");
  ASSERT_TRUE(c.is_ok()) << c.message();
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 64);  // derived: 2048 / 32
  EXPECT_EQ(c->num_hidden_layers, 22);
  EXPECT_EQ(c->intermediate_size, 5632);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->rope_scaling.has_value());  // "rope_scaling": null
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->num_parameters(), 1100048384);
}

TEST(HfConfig, TinyTestConfigs) {
  auto c = load_llama_config(kConfigs + "tiny-llama.json");
  ASSERT_TRUE(c.is_ok()) << c.message();
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_FALSE(c->rope_scaling.has_value());
  EXPECT_EQ(c->torch_dtype, "float32");  // transformers 5 "dtype"
  // 256*64 embed + 2 * (4096 q + 2*2048 kv + 4096 o + 3*64*128 mlp + 128 norms) + 64 + 256*64 head
  EXPECT_EQ(c->num_parameters(), 106816);

  auto t = load_llama_config(kConfigs + "tiny-llama-tied.json");
  ASSERT_TRUE(t.is_ok()) << t.message();
  EXPECT_TRUE(t->tie_word_embeddings);
  EXPECT_EQ(t->num_key_value_heads, 4);
  EXPECT_EQ(t->num_parameters(), 98624);
}

TEST(HfConfig, MissingKeysGetTransformersDefaults) {
  LlamaConfig c = parse_ok("{}");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.torch_dtype, "float32");

  // num_key_value_heads follows num_attention_heads, head_dim follows hidden/heads.
  c = parse_ok(R"({"hidden_size": 512, "num_attention_heads": 8})");
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  // null means absent.
  c = parse_ok(R"({"hidden_size": 512, "num_attention_heads": 8, "head_dim": null,
                   "num_key_value_heads": null, "rope_scaling": null})");
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  // An explicit head_dim need not divide hidden_size.
  c = parse_ok(R"({"hidden_size": 100, "num_attention_heads": 3, "head_dim": 32,
                   "num_key_value_heads": 1})");
  EXPECT_EQ(c.head_dim, 32);
}

// Issue 18 item 7: a config.json without the sizes became LLaMA-7B silently.
TEST(HfConfig, MissingSizesAreRefusedByDefault) {
  expect_error("{}", {"not a LLaMA config.json: missing vocab_size, hidden_size, intermediate_size, "
                      "num_hidden_layers, num_attention_heads", "LLaMA-7B"}, true);
  expect_error(R"({"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4})",
               {"missing num_hidden_layers"}, true);
  expect_error(R"({"architectures": ["BertModel"], "dim": 768})", {"missing vocab_size"}, true);
  // Key errors still come first and name the key.
  expect_error(R"({"hidden_size": -3})", {"'hidden_size'", "positive"}, true);
  auto full = parse_llama_config(R"({"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
                                     "num_hidden_layers": 2, "num_attention_heads": 4})", "ok.json");
  ASSERT_TRUE(full.is_ok()) << full.message();
  EXPECT_EQ(full->num_hidden_layers, 2);
}

TEST(HfConfig, RopeParametersTransformers5) {
  LlamaConfig c = parse_ok(R"({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3",
      "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}})");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 32.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 8192);

  c = parse_ok(R"({"rope_parameters": {"rope_theta": 1234.5, "rope_type": "default"}})");
  EXPECT_DOUBLE_EQ(c.rope_theta, 1234.5);
  EXPECT_FALSE(c.rope_scaling.has_value());
}

TEST(HfConfig, RopeScalingTransformers4) {
  // Older checkpoints spell the key "type".
  LlamaConfig c = parse_ok(R"({"rope_theta": 250000, "rope_scaling": {"type": "llama3",
      "factor": 8, "low_freq_factor": 2, "high_freq_factor": 8,
      "original_max_position_embeddings": 4096}})");
  EXPECT_DOUBLE_EQ(c.rope_theta, 250000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->low_freq_factor, 2.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->high_freq_factor, 8.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 4096);

  c = parse_ok(R"({"rope_scaling": {"rope_type": "default"}})");
  EXPECT_FALSE(c.rope_scaling.has_value());
}

TEST(HfConfig, DtypeKeys) {
  EXPECT_EQ(parse_ok(R"({"torch_dtype": "float16"})").torch_dtype, "float16");
  EXPECT_EQ(parse_ok(R"({"dtype": "bfloat16"})").torch_dtype, "bfloat16");
  EXPECT_EQ(parse_ok(R"({"dtype": "bfloat16", "torch_dtype": "float32"})").torch_dtype, "bfloat16");
}

TEST(HfConfig, BiasesCountInNumParameters) {
  auto base = load_llama_config(kConfigs + "tiny-llama.json");
  ASSERT_TRUE(base.is_ok()) << base.message();
  LlamaConfig c = base.value();
  c.attention_bias = true;  // per layer: q 64 + k 32 + v 32 + o 64
  EXPECT_EQ(c.num_parameters(), 106816 + 2 * 192);
  c.mlp_bias = true;  // per layer: gate 128 + up 128 + down 64
  EXPECT_EQ(c.num_parameters(), 106816 + 2 * 192 + 2 * 320);
}

TEST(HfConfig, ErrorsNameFileAndKey) {
  expect_error(R"({"hidden_size": "2048"})", {"'hidden_size'", "expected an integer"});
  expect_error(R"({"hidden_size": 20.5})", {"'hidden_size'", "expected an integer"});
  expect_error(R"({"num_hidden_layers": -1})", {"'num_hidden_layers'", "positive", "-1"});
  expect_error(R"({"vocab_size": 0})", {"'vocab_size'", "positive"});
  expect_error(R"({"rms_norm_eps": 0})", {"'rms_norm_eps'", "positive"});
  expect_error(R"({"rope_theta": "big"})", {"'rope_theta'", "expected a number"});
  expect_error(R"({"tie_word_embeddings": "yes"})", {"'tie_word_embeddings'", "true or false"});
  expect_error(R"({"hidden_size": 100, "num_attention_heads": 3})",
               {"'hidden_size'", "100", "num_attention_heads", "3", "head_dim"});
  expect_error(R"({"num_attention_heads": 32, "num_key_value_heads": 5})",
               {"'num_key_value_heads'", "32", "5"});
  expect_error(R"({"hidden_act": "gelu"})", {"'hidden_act'", "gelu", "silu"});
  expect_error(R"({"model_type": "mistral"})", {"'model_type'", "mistral", "llama"});
  expect_error(R"({"torch_dtype": "int8"})", {"'torch_dtype'", "int8"});
  expect_error(R"({"dtype": 7})", {"'dtype'", "expected a string"});
  expect_error(R"({"rope_scaling": 5})", {"'rope_scaling'", "object"});
  expect_error(R"({"rope_scaling": {"rope_type": "yarn", "factor": 4}})",
               {"'rope_scaling.rope_type'", "yarn", "llama3"});
  expect_error(R"({"rope_scaling": {"type": "linear", "factor": 4}})",
               {"'rope_scaling.type'", "linear"});
  expect_error(R"({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000}})",
               {"'rope_parameters.rope_type'", "dynamic"});
  expect_error(R"({"rope_parameters": {"rope_theta": -1}})", {"'rope_parameters.rope_theta'"});
  expect_error(R"({"rope_scaling": {"rope_type": "llama3", "low_freq_factor": 1,
                   "high_freq_factor": 4, "original_max_position_embeddings": 8192}})",
               {"'rope_scaling.factor'", "missing"});
  expect_error(R"({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                   "high_freq_factor": 1, "original_max_position_embeddings": 8192}})",
               {"'rope_scaling.high_freq_factor'"});
  expect_error(R"([1, 2])", {"object"});
}

TEST(HfConfig, MalformedJsonGivesBytePosition) {
  // nlohmann counts bytes from 1: the stray '}' is the 16th byte.
  std::string text = R"({"vocab_size": })";
  expect_error(text, {"malformed JSON at byte 16"});
  expect_error("", {"malformed JSON at byte"});
  // nlohmann reports number overflow as out_of_range, not parse_error (found by fuzzing).
  expect_error(R"({"bos_token_id": 1e8000})", {"malformed JSON", "1e8000"});
}

TEST(HfConfig, SizesWhoseParameterCountOverflowsAreRejected) {
  expect_error(R"({"vocab_size": 4611686018427387904, "hidden_size": 4096})",
               {"overflows int64", "vocab_size 4611686018427387904"});
  expect_error(R"({"vocab_size": 18446744073709551615})", {"'vocab_size'", "does not fit"});
}

TEST(HfConfig, LoadErrorsNameThePath) {
  auto missing = load_llama_config("/nonexistent/dir/config.json");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.message().find("/nonexistent/dir/config.json"), std::string::npos);

  std::string path = testing::TempDir() + "hf_config_bad_" + std::to_string(getpid()) + ".json";
  {
    std::ofstream out(path);
    out << R"({"hidden_size": -3})";
  }
  auto bad = load_llama_config(path);
  std::remove(path.c_str());
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find(path), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("hidden_size"), std::string::npos) << bad.message();
}
