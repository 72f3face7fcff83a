//===- test_runtime_io.cpp - token files, loader, PEFT, checkpoints, metrics ===//
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <unistd.h>

#include "runtime/base/safetensors.h"
#include "runtime/io/checkpoint.h"
#include "runtime/io/metrics.h"
#include "runtime/io/peft_adapter.h"
#include "runtime/io/token_data.h"

namespace fs = std::filesystem;
using namespace parallora;
using namespace parallora::rt;

namespace {

std::string fresh_dir(const std::string &name) {
  std::string dir = testing::TempDir() + "/parallora_rtio_" + std::to_string(::getpid()) + "_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(bytes.size()));
}

void put_u32(std::vector<uint8_t> &b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(uint8_t(v >> (8 * i)));
}
void put_u16(std::vector<uint8_t> &b, uint16_t v) {
  b.push_back(uint8_t(v));
  b.push_back(uint8_t(v >> 8));
}

std::vector<uint8_t> llmc_header(int32_t magic, int32_t version, int32_t n) {
  std::vector<uint8_t> b;
  put_u32(b, uint32_t(magic));
  put_u32(b, uint32_t(version));
  put_u32(b, uint32_t(n));
  while (b.size() < 1024) b.push_back(0);
  return b;
}

// llm.c u16 file holding tokens 0..n-1 (mod 65536).
std::string make_u16_file(const std::string &dir, int n, const std::string &name = "tok.bin") {
  auto b = llmc_header(20240520, 1, n);
  for (int i = 0; i < n; ++i) put_u16(b, uint16_t(i));
  std::string path = dir + "/" + name;
  write_bytes(path, b);
  return path;
}

bool bits_equal(const float *a, const float *b, size_t n) { return std::memcmp(a, b, n * 4) == 0; }

} // namespace

// ------------------------------------------------------------------ token files

TEST(TokenFile, LlmcU16) {
  std::string dir = fresh_dir("u16");
  std::string path = make_u16_file(dir, 10);
  auto tf = TokenFile::open(path, "auto");
  ASSERT_TRUE(tf) << tf.message();
  EXPECT_EQ(tf->num_tokens(), 10);
  EXPECT_EQ(tf->token_size(), 2);
  EXPECT_EQ(tf->format, "llmc-u16");
  for (int i = 0; i < 10; ++i) EXPECT_EQ(tf->token(i), uint32_t(i));
  EXPECT_EQ(tf->max_token(), 9u);
  auto tf2 = TokenFile::open(path, "llmc");
  ASSERT_TRUE(tf2) << tf2.message();
  EXPECT_EQ(tf2->num_tokens(), 10);
}

TEST(TokenFile, LlmcU32) {
  std::string dir = fresh_dir("u32");
  auto b = llmc_header(20240801, 7, 3);
  put_u32(b, 5);
  put_u32(b, 128255);
  put_u32(b, 70000);
  write_bytes(dir + "/t.bin", b);
  auto tf = TokenFile::open(dir + "/t.bin", "auto");
  ASSERT_TRUE(tf) << tf.message();
  EXPECT_EQ(tf->num_tokens(), 3);
  EXPECT_EQ(tf->token_size(), 4);
  EXPECT_EQ(tf->token(0), 5u);
  EXPECT_EQ(tf->token(1), 128255u);
  EXPECT_EQ(tf->token(2), 70000u);
  EXPECT_EQ(tf->max_token(), 128255u);
}

TEST(TokenFile, SizeMismatchNamesFileAndSizes) {
  std::string dir = fresh_dir("mismatch");
  auto b = llmc_header(20240520, 1, 10);  // claims 10 tokens, holds 9
  for (int i = 0; i < 9; ++i) put_u16(b, 1);
  write_bytes(dir + "/short.bin", b);
  auto tf = TokenFile::open(dir + "/short.bin", "auto");
  ASSERT_FALSE(tf);
  EXPECT_NE(tf.message().find("short.bin"), std::string::npos) << tf.message();
  EXPECT_NE(tf.message().find("1044"), std::string::npos) << tf.message();  // 1024 + 10*2
  EXPECT_NE(tf.message().find("1042"), std::string::npos) << tf.message();  // actual
}

TEST(TokenFile, BadHeaderErrors) {
  std::string dir = fresh_dir("badhdr");
  // Right magic, wrong version.
  auto b = llmc_header(20240520, 3, 0);
  write_bytes(dir + "/v.bin", b);
  auto tf = TokenFile::open(dir + "/v.bin", "auto");
  ASSERT_FALSE(tf);
  EXPECT_NE(tf.message().find("version 3"), std::string::npos) << tf.message();
  // No magic: auto asks for --data-format; llmc reports the bad header.
  std::vector<uint8_t> raw(2048, 7);
  write_bytes(dir + "/raw.bin", raw);
  auto a = TokenFile::open(dir + "/raw.bin", "auto");
  ASSERT_FALSE(a);
  EXPECT_NE(a.message().find("--data-format"), std::string::npos) << a.message();
  auto l = TokenFile::open(dir + "/raw.bin", "llmc");
  ASSERT_FALSE(l);
  EXPECT_NE(l.message().find("magic"), std::string::npos) << l.message();
  // Shorter than a header.
  write_bytes(dir + "/tiny.bin", {1, 2, 3});
  EXPECT_FALSE(TokenFile::open(dir + "/tiny.bin", "llmc"));
  EXPECT_FALSE(TokenFile::open(dir + "/tiny.bin", "auto"));
  // Missing file, unknown format.
  auto m = TokenFile::open(dir + "/nope.bin", "auto");
  ASSERT_FALSE(m);
  EXPECT_NE(m.message().find("nope.bin"), std::string::npos);
  EXPECT_FALSE(TokenFile::open(dir + "/raw.bin", "u8"));
}

TEST(TokenFile, RawFormats) {
  std::string dir = fresh_dir("raw");
  std::vector<uint8_t> b;
  put_u16(b, 1);
  put_u16(b, 65535);
  put_u16(b, 3);
  write_bytes(dir + "/r16.bin", b);
  auto t16 = TokenFile::open(dir + "/r16.bin", "u16");
  ASSERT_TRUE(t16) << t16.message();
  EXPECT_EQ(t16->num_tokens(), 3);
  EXPECT_EQ(t16->token(1), 65535u);
  // 6 bytes is not a multiple of 4.
  auto t32bad = TokenFile::open(dir + "/r16.bin", "u32");
  ASSERT_FALSE(t32bad);
  EXPECT_NE(t32bad.message().find("multiple"), std::string::npos) << t32bad.message();
  std::vector<uint8_t> c;
  put_u32(c, 100000);
  put_u32(c, 2);
  write_bytes(dir + "/r32.bin", c);
  auto t32 = TokenFile::open(dir + "/r32.bin", "u32");
  ASSERT_TRUE(t32) << t32.message();
  EXPECT_EQ(t32->num_tokens(), 2);
  EXPECT_EQ(t32->token(0), 100000u);
  write_bytes(dir + "/odd.bin", {1, 2, 3});
  EXPECT_FALSE(TokenFile::open(dir + "/odd.bin", "u16"));
  // An empty raw file is 0 tokens.
  write_bytes(dir + "/empty.bin", {});
  auto e = TokenFile::open(dir + "/empty.bin", "u16");
  ASSERT_TRUE(e) << e.message();
  EXPECT_EQ(e->num_tokens(), 0);
}

// ------------------------------------------------------------------ loader

namespace {
std::vector<int32_t> take(SequenceLoader &l, int64_t n) {
  std::vector<int32_t> out(size_t(n * l.seq_len()));
  Status st = l.next(n, out.data());
  EXPECT_TRUE(st) << st.message();
  return out;
}
// First token of each sequence / seq_len = the sequence index (file holds 0..n-1).
std::vector<int64_t> seq_ids(const std::vector<int32_t> &tokens, int64_t seq_len) {
  std::vector<int64_t> ids;
  for (size_t i = 0; i < tokens.size(); i += size_t(seq_len)) ids.push_back(tokens[i] / seq_len);
  return ids;
}
} // namespace

TEST(SequenceLoader, IdentityOrderAndEpochWrap) {
  std::string dir = fresh_dir("identity");
  auto tf = TokenFile::open(make_u16_file(dir, 26), "auto");  // 6 sequences of 4, 2 dropped
  ASSERT_TRUE(tf);
  SequenceLoader l(&*tf, 4, 1, /*shuffle=*/false);
  EXPECT_EQ(l.num_sequences(), 6);
  auto a = take(l, 4);
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}));
  EXPECT_EQ(l.position().epoch, 0u);
  EXPECT_EQ(l.position().index, 4u);
  auto b = take(l, 4);  // sequences 4, 5, then epoch 1: 0, 1
  EXPECT_EQ(seq_ids(b, 4), (std::vector<int64_t>{4, 5, 0, 1}));
  EXPECT_EQ(l.position().epoch, 1u);
  EXPECT_EQ(l.position().index, 2u);
}

TEST(SequenceLoader, ShuffleDeterminismAndPermutation) {
  std::string dir = fresh_dir("shuffle");
  auto tf = TokenFile::open(make_u16_file(dir, 400), "auto");  // 100 sequences of 4
  ASSERT_TRUE(tf);
  SequenceLoader a(&*tf, 4, 42, true), b(&*tf, 4, 42, true), c(&*tf, 4, 43, true);
  auto sa = take(a, 100), sb = take(b, 100), sc = take(c, 100);
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  auto ids = seq_ids(sa, 4);
  std::set<int64_t> uniq(ids.begin(), ids.end());
  EXPECT_EQ(uniq.size(), 100u);  // a permutation: every sequence exactly once per epoch
  std::vector<int64_t> identity(100);
  for (int i = 0; i < 100; ++i) identity[size_t(i)] = i;
  EXPECT_NE(ids, identity);
  // Sequences stay contiguous runs of the file.
  for (size_t i = 0; i < sa.size(); i += 4)
    for (size_t t = 1; t < 4; ++t) EXPECT_EQ(sa[i + t], sa[i] + int32_t(t));
  // The next epoch uses another permutation.
  auto e1 = seq_ids(take(a, 100), 4);
  EXPECT_NE(e1, ids);
  EXPECT_EQ(std::set<int64_t>(e1.begin(), e1.end()).size(), 100u);
  EXPECT_EQ(a.position().epoch, 2u);
  EXPECT_EQ(a.position().index, 0u);
}

TEST(SequenceLoader, RestoreReproducesStream) {
  std::string dir = fresh_dir("restore");
  auto tf = TokenFile::open(make_u16_file(dir, 70), "auto");  // 10 sequences of 7
  ASSERT_TRUE(tf);
  SequenceLoader a(&*tf, 7, 9, true);
  take(a, 13);  // into epoch 1
  DataPosition pos = a.position();
  EXPECT_EQ(pos.epoch, 1u);
  EXPECT_EQ(pos.index, 3u);
  auto rest_a = take(a, 25);
  SequenceLoader b(&*tf, 7, 9, true);
  b.restore(pos);
  auto rest_b = take(b, 25);
  EXPECT_EQ(rest_a, rest_b);
  // A fresh loader run straight through sees the same tokens.
  SequenceLoader c(&*tf, 7, 9, true);
  auto all = take(c, 38);
  EXPECT_TRUE(std::equal(rest_a.begin(), rest_a.end(), all.begin() + 13 * 7));
}

TEST(SequenceLoader, UniformBelowIsInRangeAndDeterministic) {
  std::mt19937_64 g1(5), g2(5);
  for (uint64_t n : {1ull, 2ull, 3ull, 7ull, 1000ull, (1ull << 63) + 5}) {
    uint64_t x = uniform_below(g1, n);
    EXPECT_LT(x, n);
    EXPECT_EQ(x, uniform_below(g2, n));
  }
}

TEST(SequenceLoader, TooShortFileAndVocabCheck) {
  std::string dir = fresh_dir("short");
  auto tf = TokenFile::open(make_u16_file(dir, 5), "auto");
  ASSERT_TRUE(tf);
  SequenceLoader l(&*tf, 8, 0, false);
  EXPECT_EQ(l.num_sequences(), 0);
  std::vector<int32_t> buf(8);
  Status st = l.next(1, buf.data());
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("tok.bin"), std::string::npos) << st.message();

  SequenceLoader v(&*tf, 2, 0, false);  // tokens 0..4
  EXPECT_TRUE(v.check_vocab(5));
  Status bad = v.check_vocab(4);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.message().find("tok.bin"), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("token 4 "), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("id 4"), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("vocabulary of 4"), std::string::npos) << bad.message();
}

// ------------------------------------------------------------------ PEFT adapters

namespace {
struct Adapter {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> data;
  std::vector<NamedTensor> views() const {
    std::vector<NamedTensor> v;
    for (size_t i = 0; i < names.size(); ++i) v.push_back({names[i], shapes[i], data[i].data()});
    return v;
  }
};
Adapter make_adapter(float base) {
  Adapter a;
  const int64_t r = 2, d = 3;
  for (const char *mod : {"q_proj", "v_proj"}) {
    std::string m = std::string("model.layers.0.self_attn.") + mod;
    a.names.push_back(m + ".lora_A.weight");
    a.shapes.push_back({r, d});
    a.names.push_back(m + ".lora_B.weight");
    a.shapes.push_back({d, r});
  }
  for (size_t i = 0; i < a.names.size(); ++i) {
    std::vector<float> v(6);
    for (size_t j = 0; j < v.size(); ++j)
      v[j] = base + std::nextafter(float(i) * 0.1f + float(j) / 3.0f, 1e9f);  // odd bit patterns
    a.data.push_back(v);
  }
  a.data[0][0] = -0.0f;
  a.data[0][1] = 1e-42f;  // subnormal
  return a;
}
plan::LoraInfo make_lora() {
  plan::LoraInfo l;
  l.rank = 2;
  l.alpha = 16;
  l.dropout = 0.05;
  l.use_rslora = true;
  l.target_modules = {"v_proj", "q_proj"};
  return l;
}
} // namespace

TEST(PeftAdapter, WriteReadRoundTripAndConfig) {
  std::string dir = fresh_dir("peft") + "/nested/adapter";
  Adapter a = make_adapter(0.5f);
  ASSERT_TRUE(write_peft_adapter(dir, make_lora(), "meta-llama/Llama-3.2-1B", a.views()));
  EXPECT_TRUE(fs::exists(dir + "/adapter_model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/adapter_config.json"));
  // No temporary directory left behind.
  for (auto &e : fs::directory_iterator(fs::path(dir).parent_path()))
    EXPECT_EQ(e.path().filename().string(), "adapter");

  auto file = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file) << file.message();
  const TensorView *tv = (*file)->find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  ASSERT_NE(tv, nullptr);
  EXPECT_EQ(tv->dtype, DType::F32);
  EXPECT_EQ(tv->shape, (std::vector<int64_t>{2, 3}));

  std::ifstream cf(dir + "/adapter_config.json");
  nlohmann::json cfg = nlohmann::json::parse(cf);
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 2);
  EXPECT_TRUE(cfg["lora_alpha"].is_number_integer());
  EXPECT_EQ(cfg["lora_alpha"], 16);
  EXPECT_DOUBLE_EQ(cfg["lora_dropout"].get<double>(), 0.05);
  EXPECT_EQ(cfg["target_modules"], (nlohmann::json{"q_proj", "v_proj"}));
  EXPECT_EQ(cfg["use_rslora"], true);
  EXPECT_EQ(cfg["bias"], "none");
  EXPECT_EQ(cfg["fan_in_fan_out"], false);
  EXPECT_EQ(cfg["init_lora_weights"], true);
  EXPECT_EQ(cfg["inference_mode"], true);
  EXPECT_EQ(cfg["base_model_name_or_path"], "meta-llama/Llama-3.2-1B");
  EXPECT_TRUE(cfg["modules_to_save"].is_null());
  EXPECT_TRUE(cfg["revision"].is_null());
  EXPECT_TRUE(cfg["layers_to_transform"].is_null());

  plan::LoraInfo info;
  auto back = read_peft_adapter(dir, &info);
  ASSERT_TRUE(back) << back.message();
  ASSERT_EQ(back->size(), a.names.size());
  for (size_t i = 0; i < a.names.size(); ++i) {
    auto it = back->find(a.names[i]);
    ASSERT_NE(it, back->end()) << a.names[i];
    ASSERT_EQ(it->second.size(), a.data[i].size());
    EXPECT_TRUE(bits_equal(it->second.data(), a.data[i].data(), a.data[i].size())) << a.names[i];
  }
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.alpha, 16.0);
  EXPECT_TRUE(info.use_rslora);
  EXPECT_EQ(info.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));

  // Overwriting an existing adapter replaces it.
  Adapter b = make_adapter(2.0f);
  ASSERT_TRUE(write_peft_adapter(dir, make_lora(), "x", b.views()));
  auto back2 = read_peft_adapter(dir, nullptr);
  ASSERT_TRUE(back2) << back2.message();
  EXPECT_TRUE(bits_equal((*back2)[b.names[3]].data(), b.data[3].data(), 6));
  for (auto &e : fs::directory_iterator(fs::path(dir).parent_path()))
    EXPECT_EQ(e.path().filename().string(), "adapter");
}

TEST(PeftAdapter, ReadsPeftDefaultKeysAndHalfPrecision) {
  std::string dir = fresh_dir("peft_default");
  // As older PEFT wrote: ".lora_A.default.weight", bf16 data, alpha as a float, target_modules
  // as a string.
  std::vector<uint16_t> a_bits = {0x3f80, 0xc000, 0x3e80, 0x0000};  // 1, -2, 0.25, 0
  std::vector<float> b_vals = {0.5f, -1.5f, 3.0f, 4.0f};
  write_safetensors(dir + "/adapter_model.safetensors",
                    {{"base_model.model.model.layers.1.mlp.up_proj.lora_A.default.weight",
                      DType::BF16, {2, 2}, a_bits.data()},
                     {"base_model.model.model.layers.1.mlp.up_proj.lora_B.weight", DType::F32,
                      {2, 2}, b_vals.data()}});
  std::ofstream(dir + "/adapter_config.json")
      << R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4.5, "target_modules": "up_proj",
            "lora_dropout": 0.0, "task_type": "CAUSAL_LM"})";
  plan::LoraInfo info;
  auto back = read_peft_adapter(dir, &info);
  ASSERT_TRUE(back) << back.message();
  ASSERT_EQ(back->size(), 2u);
  auto &a = (*back)["model.layers.1.mlp.up_proj.lora_A.weight"];
  EXPECT_EQ(a, (std::vector<float>{1.0f, -2.0f, 0.25f, 0.0f}));
  EXPECT_EQ((*back)["model.layers.1.mlp.up_proj.lora_B.weight"], b_vals);
  EXPECT_EQ(info.alpha, 4.5);
  EXPECT_FALSE(info.use_rslora);
  EXPECT_EQ(info.target_modules, (std::vector<std::string>{"up_proj"}));
}

TEST(PeftAdapter, ClearErrors) {
  std::string dir = fresh_dir("peft_err");
  auto missing = read_peft_adapter(dir, nullptr);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.message().find("adapter_config.json"), std::string::npos) << missing.message();

  std::ofstream(dir + "/adapter_config.json") << R"({"peft_type": "LORA", "r": 2})";
  std::vector<float> v(4, 1.0f);
  write_safetensors(dir + "/adapter_model.safetensors",
                    {{"base_model.model.lm_head.weight", DType::F32, {2, 2}, v.data()}});
  auto bad = read_peft_adapter(dir, nullptr);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.message().find("lm_head.weight"), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("adapter_model.safetensors"), std::string::npos) << bad.message();

  std::ofstream(dir + "/adapter_config.json") << R"({"peft_type": "IA3", "r": 2})";
  auto ia3 = read_peft_adapter(dir, nullptr);
  ASSERT_FALSE(ia3);
  EXPECT_NE(ia3.message().find("IA3"), std::string::npos) << ia3.message();
}

// ------------------------------------------------------------------ checkpoints

namespace {
TrainerState make_state(int64_t step) {
  TrainerState s;
  s.step = step;
  s.data = {3, 17};
  s.seed = 0xFEDCBA9876543210ull;  // > 2^63: must survive JSON as an exact integer
  s.plan_fingerprint = "sha256:abc";
  s.extra = {{"loss", 2.5}, {"tokens_seen", 12345}};
  return s;
}
std::vector<NamedTensor> opt_views(const Adapter &a, std::vector<std::vector<float>> &store) {
  std::vector<NamedTensor> v;
  store.clear();
  for (size_t i = 0; i < a.names.size(); ++i) {
    std::vector<float> m1 = a.data[i], m2 = a.data[i];
    for (float &x : m2) x = x * x * 1.0000001f;
    store.push_back(m1);
    store.push_back(m2);
  }
  for (size_t i = 0; i < a.names.size(); ++i) {
    v.push_back({a.names[i] + ".exp_avg", a.shapes[i], store[2 * i].data()});
    v.push_back({a.names[i] + ".exp_avg_sq", a.shapes[i], store[2 * i + 1].data()});
  }
  return v;
}
} // namespace

TEST(Checkpoint, RoundTripBitExactAndLatest) {
  std::string out = fresh_dir("ckpt");
  Adapter a = make_adapter(0.25f);
  std::vector<std::vector<float>> store;
  auto opt = opt_views(a, store);
  std::string saved;
  Status st = save_checkpoint(out, make_state(5), make_lora(), "base", a.views(), opt, &saved);
  ASSERT_TRUE(st) << st.message();
  EXPECT_EQ(saved, out + "/checkpoint-5");
  for (const char *f : {"adapter_model.safetensors", "adapter_config.json",
                        "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::exists(saved + "/" + f)) << f;
  std::ifstream lf(out + "/latest");
  std::string latest;
  lf >> latest;
  EXPECT_EQ(latest, "checkpoint-5");

  for (const std::string &path : {saved, out, out + "/"}) {
    auto ck = load_checkpoint(path);
    ASSERT_TRUE(ck) << ck.message();
    EXPECT_EQ(ck->path, out + "/checkpoint-5");
    EXPECT_EQ(ck->state.step, 5);
    EXPECT_EQ(ck->state.data.epoch, 3u);
    EXPECT_EQ(ck->state.data.index, 17u);
    EXPECT_EQ(ck->state.seed, 0xFEDCBA9876543210ull);
    EXPECT_EQ(ck->state.plan_fingerprint, "sha256:abc");
    EXPECT_EQ(ck->state.extra["tokens_seen"], 12345);
    EXPECT_EQ(ck->lora.rank, 2);
    ASSERT_EQ(ck->adapters.size(), a.names.size());
    for (size_t i = 0; i < a.names.size(); ++i)
      EXPECT_TRUE(bits_equal(ck->adapters[a.names[i]].data(), a.data[i].data(), 6));
    ASSERT_EQ(ck->optimizer_state.size(), opt.size());
    for (const NamedTensor &t : opt) {
      auto &v = ck->optimizer_state[t.name];
      ASSERT_EQ(v.size(), 6u) << t.name;
      EXPECT_TRUE(bits_equal(v.data(), t.data, 6)) << t.name;
    }
  }

  // A second checkpoint moves `latest`.
  Adapter b = make_adapter(9.0f);
  ASSERT_TRUE(save_checkpoint(out, make_state(10), make_lora(), "base", b.views(), opt, nullptr));
  auto ck = load_checkpoint(out);
  ASSERT_TRUE(ck) << ck.message();
  EXPECT_EQ(ck->state.step, 10);
  EXPECT_TRUE(bits_equal(ck->adapters[b.names[2]].data(), b.data[2].data(), 6));
  // The older one is still loadable by path.
  auto old = load_checkpoint(out + "/checkpoint-5");
  ASSERT_TRUE(old) << old.message();
  EXPECT_EQ(old->state.step, 5);
  // Re-saving the same step replaces it.
  ASSERT_TRUE(save_checkpoint(out, make_state(10), make_lora(), "base", a.views(), opt, nullptr));
  auto again = load_checkpoint(out);
  ASSERT_TRUE(again);
  EXPECT_TRUE(bits_equal(again->adapters[a.names[2]].data(), a.data[2].data(), 6));
}

TEST(Checkpoint, CrashLeavesPreviousCheckpoint) {
  std::string out = fresh_dir("ckpt_crash");
  Adapter a = make_adapter(1.0f);
  std::vector<std::vector<float>> store;
  auto opt = opt_views(a, store);
  ASSERT_TRUE(save_checkpoint(out, make_state(4), make_lora(), "base", a.views(), opt, nullptr));
  // A kill mid-save of step 5: a partial tmp directory (some files, no trainer_state.json),
  // and a leftover tmp of `latest`.
  std::string tmp = out + "/checkpoint-5.tmp-123";
  fs::create_directories(tmp);
  std::ofstream(tmp + "/adapter_model.safetensors") << "garbage, half written";
  std::ofstream(tmp + "/adapter_config.json") << "{\"r\": ";
  std::ofstream(out + "/latest.tmp-123") << "checkpoint-5";
  auto ck = load_checkpoint(out);
  ASSERT_TRUE(ck) << ck.message();
  EXPECT_EQ(ck->state.step, 4);
  EXPECT_EQ(ck->path, out + "/checkpoint-4");

  // Without `latest`, the newest complete checkpoint is used (tmp dirs never count).
  fs::remove(out + "/latest");
  auto ck2 = load_checkpoint(out);
  ASSERT_TRUE(ck2) << ck2.message();
  EXPECT_EQ(ck2->state.step, 4);

  // A checkpoint directory missing its optimizer file is an error naming it.
  fs::remove(out + "/checkpoint-4/optimizer.safetensors");
  auto broken = load_checkpoint(out + "/checkpoint-4");
  ASSERT_FALSE(broken);
  EXPECT_NE(broken.message().find("optimizer.safetensors"), std::string::npos) << broken.message();
  // Nothing at all.
  auto none = load_checkpoint(fresh_dir("ckpt_empty"));
  ASSERT_FALSE(none);
}

TEST(Checkpoint, KeepLast) {
  std::string out = fresh_dir("ckpt_keep");
  Adapter a = make_adapter(1.0f);
  std::vector<std::vector<float>> store;
  auto opt = opt_views(a, store);
  for (int64_t s : {1, 2, 3, 10})
    ASSERT_TRUE(save_checkpoint(out, make_state(s), make_lora(), "b", a.views(), opt, nullptr, 2));
  std::set<std::string> names;
  for (auto &e : fs::directory_iterator(out)) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"checkpoint-3", "checkpoint-10", "latest"}));
}

// ------------------------------------------------------------------ metrics

TEST(Metrics, JsonlWriter) {
  std::string dir = fresh_dir("jsonl");
  std::string path = dir + "/sub/metrics.jsonl";
  {
    auto w = JsonlWriter::open(path, false);
    ASSERT_TRUE(w) << w.message();
    ASSERT_TRUE(w->write({{"step", 1}, {"loss", 2.5}}));
    // Flushed per line: readable while the writer is open.
    std::ifstream f(path);
    std::string line;
    std::getline(f, line);
    EXPECT_EQ(nlohmann::json::parse(line)["step"], 1);
  }
  {
    auto w = JsonlWriter::open(path, true);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->write({{"step", 2}}));
  }
  std::ifstream f(path);
  std::string l1, l2, l3;
  std::getline(f, l1);
  std::getline(f, l2);
  EXPECT_FALSE(std::getline(f, l3));
  EXPECT_EQ(nlohmann::json::parse(l2)["step"], 2);
  auto truncated = JsonlWriter::open(path, false);
  ASSERT_TRUE(truncated);
  EXPECT_EQ(fs::file_size(path), 0u);
}

TEST(Metrics, ProgressLine) {
  ProgressBar bar(100, 10);
  bar.set_tty(false);
  std::string line = bar.format_line(10, 2.34567, 1234.4, 1e-4);
  EXPECT_NE(line.find("step 10/100"), std::string::npos) << line;
  EXPECT_NE(line.find("loss 2.3457"), std::string::npos) << line;
  EXPECT_NE(line.find("lr 1.000e-04"), std::string::npos) << line;
  EXPECT_NE(line.find("1234 tok/s"), std::string::npos) << line;
  bar.set_tty(true);
  EXPECT_EQ(bar.format_line(50, 1, 1, 1).rfind("[##########..........]", 0), 0u);
  bar.finish();
}

TEST(Metrics, LrSchedules) {
  plan::Hyperparams hp;
  hp.lr = 1e-3;
  hp.warmup_steps = 10;
  // Constant with warmup: step s uses lambda(s-1) = (s-1)/10 during warmup.
  hp.schedule = "constant";
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 1, 100), 0.0);         // lambda(0) = 0
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 6, 100), 0.5e-3);      // lambda(5) = 5/10
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 11, 100), 1e-3);       // lambda(10) = 1
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 100, 100), 1e-3);
  // No warmup: step 1 already uses the full lr.
  hp.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 1, 100), 1e-3);

  // Cosine, W = 10, T = 110: c = s-1, p = (c-10)/100, factor = 0.5 (1 + cos(pi p)).
  hp.schedule = "cosine";
  hp.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 3, 110), 0.2e-3);      // warmup: 2/10
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 11, 110), 1e-3);       // p = 0: factor 1
  EXPECT_NEAR(lr_at_step(hp, 61, 110), 0.5e-3, 1e-15);   // p = 0.5: 0.5 (1 + 0) = 0.5
  EXPECT_NEAR(lr_at_step(hp, 36, 110), 1e-3 * 0.5 * (1 + std::sqrt(0.5)), 1e-15);  // p = .25: 0.853553
  EXPECT_NEAR(lr_at_step(hp, 111, 110), 0.0, 1e-18);     // p = 1: 0
  // With a floor of 0.1 the end is 0.1 * lr, the middle unchanged.
  hp.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 111, 110), 1e-4);
  EXPECT_NEAR(lr_at_step(hp, 61, 110), 0.5e-3, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 1, 110), 0.0);         // warmup is not floored
  // hp.total_steps overrides the argument.
  hp.total_steps = 110;
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 111, 5000), 1e-4);
  hp.total_steps = 0;
  hp.min_lr_ratio = 0.0;

  // Linear, W = 10, T = 110: factor = (110 - c) / 100.
  hp.schedule = "linear";
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 11, 110), 1e-3);       // c = 10: 100/100
  EXPECT_NEAR(lr_at_step(hp, 36, 110), 0.75e-3, 1e-15);  // c = 35: 75/100
  EXPECT_NEAR(lr_at_step(hp, 110, 110), 0.01e-3, 1e-15); // c = 109: 1/100 (last step, HF)
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 111, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 500, 110), 0.0);       // clamped at 0
  hp.min_lr_ratio = 0.2;
  EXPECT_DOUBLE_EQ(lr_at_step(hp, 111, 110), 0.2e-3);
}

// An adapter saved by PEFT 0.21 itself (tests/fixtures/onnx/tiny_llama_lora.adapter).
TEST(PeftAdapter, ReadsPeftSavedFixture) {
  plan::LoraInfo info;
  auto a = read_peft_adapter_with_shapes(
      std::string(PARALLORA_SOURCE_DIR) + "/tests/fixtures/onnx/tiny_llama_lora.adapter", &info);
  ASSERT_TRUE(a) << a.message();
  EXPECT_EQ(info.rank, 4);
  EXPECT_EQ(info.alpha, 8.0);
  EXPECT_FALSE(info.use_rslora);
  EXPECT_EQ(info.target_modules, (std::vector<std::string>{"down_proj", "q_proj", "v_proj"}));
  EXPECT_EQ(a->size(), 12u);  // 2 layers x 3 modules x {A, B}
  auto q = a->find("model.layers.0.self_attn.q_proj.lora_A.weight");
  ASSERT_NE(q, a->end());
  EXPECT_EQ(q->second.shape, (std::vector<int64_t>{4, 64}));
  auto d = a->find("model.layers.1.mlp.down_proj.lora_B.weight");
  ASSERT_NE(d, a->end());
  EXPECT_EQ(d->second.shape, (std::vector<int64_t>{64, 4}));
}
