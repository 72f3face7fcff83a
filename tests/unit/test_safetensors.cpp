// Tests for frontend/safetensors: byte-exact writing, reading back, half-precision
// conversion against known bit patterns, every validation error, and sharded checkpoints.
#include "runtime/base/safetensors.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

using namespace parallora;

namespace {

/// A fresh directory per test under the gtest temp dir.
class SafetensorsTest : public testing::Test {
protected:
  void SetUp() override {
    std::string templ = testing::TempDir() + "safetensors_test_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override {
    if (DIR *d = opendir(dir_.c_str())) {
      while (dirent *e = readdir(d))
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, ".."))
          std::remove((dir_ + "/" + e->d_name).c_str());
      closedir(d);
    }
    rmdir(dir_.c_str());
  }
  std::string path(const std::string &name) const { return dir_ + "/" + name; }
  std::vector<std::string> list_dir() const {
    std::vector<std::string> names;
    if (DIR *d = opendir(dir_.c_str())) {
      while (dirent *e = readdir(d))
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, ".."))
          names.push_back(e->d_name);
      closedir(d);
    }
    return names;
  }
  std::string dir_;
};

std::string read_bytes(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string &path, const std::string &bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

/// A safetensors file from a literal header and a data buffer (no padding).
std::string raw_file(const std::string &header, size_t data_bytes) {
  uint64_t n = header.size();
  std::string bytes(reinterpret_cast<const char *>(&n), 8);
  return bytes + header + std::string(data_bytes, '\x01');
}

void expect_contains(const std::string &message, std::initializer_list<std::string> parts) {
  for (const std::string &part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << "message lacks '" << part << "': " << message;
}

} // namespace

TEST(Safetensors, DTypeTable) {
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  EXPECT_STREQ(dtype_name(DType::BOOL), "BOOL");
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_EQ(dtype_size(DType::I32), 4u);
  EXPECT_EQ(dtype_size(DType::I16), 2u);
  EXPECT_EQ(dtype_size(DType::I8), 1u);
  EXPECT_EQ(dtype_size(DType::U8), 1u);
  EXPECT_EQ(dtype_size(DType::BOOL), 1u);
  DType d;
  ASSERT_TRUE(dtype_from_name("I16", d));
  EXPECT_EQ(d, DType::I16);
  EXPECT_FALSE(dtype_from_name("F8_E4M3", d));
}

TEST(Safetensors, BF16BitPatterns) {
  EXPECT_EQ(bf16_bits_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_bits_to_f32(0xC000), -2.0f);
  EXPECT_EQ(bf16_bits_to_f32(0x3E80), 0.25f);
  EXPECT_EQ(bf16_bits_to_f32(0x4049), 3.140625f);
  EXPECT_EQ(bf16_bits_to_f32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(bf16_bits_to_f32(0x8000)));
  EXPECT_EQ(bf16_bits_to_f32(0x7F80), INFINITY);
  EXPECT_EQ(bf16_bits_to_f32(0xFF80), -INFINITY);
  EXPECT_TRUE(std::isnan(bf16_bits_to_f32(0x7FC0)));
  EXPECT_EQ(bf16_bits_to_f32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
}

TEST(Safetensors, F16BitPatterns) {
  EXPECT_EQ(f16_bits_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_bits_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_bits_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_bits_to_f32(0x7BFF), 65504.0f);           // largest finite
  EXPECT_EQ(f16_bits_to_f32(0x0400), 6.103515625e-05f);   // smallest normal, 2^-14
  EXPECT_EQ(f16_bits_to_f32(0x0001), 5.9604644775390625e-08f);  // smallest subnormal, 2^-24
  EXPECT_NEAR(f16_bits_to_f32(0x0001), 5.96e-8f, 1e-10f);
  EXPECT_EQ(f16_bits_to_f32(0x03FF), 1023 * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_bits_to_f32(0x8001), -5.9604644775390625e-08f);
  EXPECT_TRUE(std::signbit(f16_bits_to_f32(0x8000)));
  EXPECT_EQ(f16_bits_to_f32(0x8000), 0.0f);
  EXPECT_EQ(f16_bits_to_f32(0x7C00), INFINITY);
  EXPECT_EQ(f16_bits_to_f32(0xFC00), -INFINITY);
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(0xFC01)));
}

#if defined(__FLT16_MAX__)
// The compiler's own _Float16 -> float conversion is an independent oracle for all 65536.
TEST(Safetensors, F16AllPatternsMatchCompiler) {
  for (uint32_t b = 0; b < 65536; ++b) {
    uint16_t bits = uint16_t(b);
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    float expected = float(h);
    float got = f16_bits_to_f32(bits);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << b;
    } else {
      uint32_t eb, gb;
      std::memcpy(&eb, &expected, 4);
      std::memcpy(&gb, &got, 4);
      ASSERT_EQ(eb, gb) << "f16 bits 0x" << std::hex << b;
    }
  }
}
#endif

TEST_F(SafetensorsTest, WriteThenReadRoundTrip) {
  const float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-8f, -7.0f};
  const uint16_t bf16[4] = {0x3F80, 0xC000, 0x7F80, 0x3E80};
  const int64_t i64[2] = {-1, int64_t(1) << 40};
  const double f64 = 2.718281828459045;
  const uint8_t unused = 0;
  std::vector<TensorToWrite> tensors = {
      {"model.w", DType::F32, {2, 3}, f32},
      {"a.bf16", DType::BF16, {4}, bf16},
      {"ids", DType::I64, {2}, i64},
      {"empty", DType::U8, {0, 5}, &unused},
      {"scalar", DType::F64, {}, &f64},
  };
  const std::string file = path("rt.safetensors");
  Status s = write_safetensors(file, tensors, {{"format", "pt"}, {"step", "12"}});
  ASSERT_TRUE(s.is_ok()) << s.message();
  // Atomic write leaves no temporary behind.
  EXPECT_EQ(list_dir(), std::vector<std::string>{"rt.safetensors"});

  // Layout: header length is a multiple of 8, padded with spaces, metadata first.
  std::string bytes = read_bytes(file);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.rfind(R"({"__metadata__":{"format":"pt","step":"12"},"model.w":)", 0), 0u)
      << header;
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos);
  EXPECT_EQ(bytes.size(), 8 + n + 24 + 8 + 16 + 0 + 8);

  auto opened = SafetensorsFile::open(file);
  ASSERT_TRUE(opened.is_ok()) << opened.message();
  const SafetensorsFile &f = *opened.value();
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("step"), "12");
  ASSERT_EQ(f.tensors().size(), 5u);
  // Given order is kept.
  EXPECT_EQ(f.tensors()[0].name, "model.w");
  EXPECT_EQ(f.tensors()[1].name, "a.bf16");
  EXPECT_EQ(f.tensors()[4].name, "scalar");

  const TensorView *w = f.find("model.w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::F32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w->numel(), 6);
  EXPECT_EQ(w->nbytes, 24u);
  EXPECT_EQ(std::memcmp(w->data, f32, 24), 0);

  const TensorView *b = f.find("a.bf16");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(std::memcmp(b->data, bf16, 8), 0);
  float converted[4];
  ASSERT_TRUE(to_f32(*b, converted).is_ok());
  EXPECT_EQ(converted[0], 1.0f);
  EXPECT_EQ(converted[1], -2.0f);
  EXPECT_EQ(converted[2], INFINITY);
  EXPECT_EQ(converted[3], 0.25f);

  const TensorView *ids = f.find("ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ(std::memcmp(ids->data, i64, 16), 0);
  Status bad = to_f32(*ids, converted);
  ASSERT_FALSE(bad.is_ok());
  expect_contains(bad.message(), {"'ids'", "I64"});

  const TensorView *e = f.find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->numel(), 0);
  EXPECT_EQ(e->nbytes, 0u);

  const TensorView *sc = f.find("scalar");
  ASSERT_NE(sc, nullptr);
  EXPECT_EQ(sc->numel(), 1);
  float x;
  ASSERT_TRUE(to_f32(*sc, &x).is_ok());
  EXPECT_EQ(x, float(f64));

  EXPECT_EQ(f.find("missing"), nullptr);

  // from_memory parses the same bytes to the same views.
  auto mem = SafetensorsFile::from_memory(reinterpret_cast<const uint8_t *>(bytes.data()),
                                          bytes.size(), "mem");
  ASSERT_TRUE(mem.is_ok()) << mem.message();
  ASSERT_EQ(mem.value()->tensors().size(), 5u);
  EXPECT_EQ(std::memcmp(mem.value()->find("model.w")->data, f32, 24), 0);
}

TEST_F(SafetensorsTest, ExactBytesOfSmallFile) {
  // What the reference writer (safetensors.torch.save_file without metadata) produces.
  const float data[2] = {1.0f, 2.0f};
  const std::string file = path("small.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"a", DType::F32, {2}, data}}, {}).is_ok());
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  uint64_t n = header.size();
  std::string expected(reinterpret_cast<const char *>(&n), 8);
  expected += header;
  expected.append(reinterpret_cast<const char *>(data), 8);
  EXPECT_EQ(read_bytes(file), expected);
}

TEST_F(SafetensorsTest, RewritingHfFixtureIsByteIdentical) {
  // A file written by Python safetensors: reading it and writing it back in the same order
  // must reproduce every byte, including the header padding.
  const std::string fixture =
      std::string(PARALLORA_SOURCE_DIR) + "/tests/fixtures/onnx/tiny_llama.hf/model.safetensors";
  struct stat st;
  if (::stat(fixture.c_str(), &st) != 0)
    GTEST_SKIP() << "fixture absent: " << fixture;
  auto f = SafetensorsFile::open(fixture);
  ASSERT_TRUE(f.is_ok()) << f.message();
  std::vector<TensorToWrite> tensors;
  int64_t numel = 0;
  for (const TensorView &t : f.value()->tensors()) {
    tensors.push_back({t.name, t.dtype, t.shape, t.data});
    numel += t.numel();
  }
  EXPECT_EQ(numel, 106816);  // == LlamaConfig::num_parameters() of tiny-llama.json
  const std::string copy = path("copy.safetensors");
  ASSERT_TRUE(write_safetensors(copy, tensors, f.value()->metadata()).is_ok());
  EXPECT_EQ(read_bytes(copy), read_bytes(fixture));
}

TEST(Safetensors, OtherHfFixturesOpen) {
  const std::string fixtures = std::string(PARALLORA_SOURCE_DIR) + "/tests/fixtures/onnx/";
  struct stat st;
  if (::stat((fixtures + "tiny_llama_tied.hf").c_str(), &st) != 0)
    GTEST_SKIP() << "fixtures absent: " << fixtures;
  auto tied = WeightStore::open(fixtures + "tiny_llama_tied.hf");
  ASSERT_TRUE(tied.is_ok()) << tied.message();
  int64_t numel = 0;
  for (const std::string &name : tied->names())
    numel += tied->find(name)->numel();
  EXPECT_EQ(numel, 98624);  // == num_parameters() of tiny-llama-tied.json: no lm_head
  EXPECT_EQ(tied->find("lm_head.weight"), nullptr);

  auto adapter = SafetensorsFile::open(fixtures + "tiny_llama_lora.adapter/adapter_model.safetensors");
  ASSERT_TRUE(adapter.is_ok()) << adapter.message();
  EXPECT_FALSE(adapter.value()->tensors().empty());
}

// release() drops a tensor's mapped pages from the process (resident set) and a later read
// still sees the same bytes (faulted back in from the file).
long resident_kib() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

TEST_F(SafetensorsTest, ReleaseDropsTheMappedPagesAndKeepsTheBytes) {
  std::vector<float> big(size_t(16) << 20 >> 2);  // 16 MiB
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i % 9973) * 0.125f;
  const float small[3] = {1, 2, 3};
  const std::string file = path("big.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"big", DType::F32, {int64_t(big.size())}, big.data()},
                                       {"small", DType::F32, {3}, small}}, {})
                  .is_ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.is_ok()) << f.message();
  const TensorView *v = (*f)->find("big");
  ASSERT_NE(v, nullptr);
  auto sum = [&] {
    double s = 0;
    for (size_t i = 0; i < v->nbytes; i += 4096) s += v->data[i];
    return s;
  };
  const double first = sum();  // every page of the tensor is now resident
  const long before = resident_kib();
  (*f)->release(*v);
  const long after = resident_kib();
  EXPECT_GE(before - after, 12 * 1024) << "resident " << before << " KiB -> " << after << " KiB";
  EXPECT_EQ(sum(), first);
  EXPECT_EQ(std::memcmp(v->data, big.data(), v->nbytes), 0);
  EXPECT_EQ(std::memcmp((*f)->find("small")->data, small, sizeof small), 0);
  // A view from elsewhere (or a file read from memory) is left alone.
  TensorView foreign = *v;
  foreign.data = reinterpret_cast<const uint8_t *>(big.data());
  (*f)->release(foreign);
  EXPECT_EQ(big[12345], float(12345 % 9973) * 0.125f);
}

TEST_F(SafetensorsTest, WriteErrors) {
  const float data[4] = {};
  Status s = write_safetensors(path("x.safetensors"),
                               {{"t", DType::F32, {1}, data}, {"t", DType::F32, {1}, data}}, {});
  ASSERT_FALSE(s.is_ok());
  expect_contains(s.message(), {"'t'", "duplicate"});
  s = write_safetensors(path("x.safetensors"), {{"neg", DType::F32, {-1, 2}, data}}, {});
  ASSERT_FALSE(s.is_ok());
  expect_contains(s.message(), {"'neg'", "[-1, 2]"});
  s = write_safetensors(path("x.safetensors"), {{"null", DType::F32, {2}, nullptr}}, {});
  ASSERT_FALSE(s.is_ok());
  expect_contains(s.message(), {"'null'"});
  s = write_safetensors("/nonexistent-dir/x.safetensors", {{"t", DType::F32, {1}, data}}, {});
  ASSERT_FALSE(s.is_ok());
  expect_contains(s.message(), {"/nonexistent-dir/x.safetensors"});
  EXPECT_TRUE(list_dir().empty());
}

TEST_F(SafetensorsTest, OpenErrorsNameFileAndTensor) {
  struct Case {
    const char *what;
    std::string bytes;
    std::vector<std::string> parts;
  };
  uint64_t huge = 1000;
  std::string past_eof(reinterpret_cast<const char *>(&huge), 8);
  past_eof += "{}          ";
  const std::vector<Case> cases = {
      {"empty file", "", {"0 bytes", "truncated"}},
      {"short file", std::string("\x10\x00\x00", 3), {"3 bytes"}},
      {"header length past EOF", past_eof, {"header length 1000", "past the end", "20 bytes"}},
      {"malformed JSON", raw_file(R"({"a": {"dtype": "F32",)", 0), {"malformed JSON header at byte"}},
      {"not starting with brace", raw_file(R"(  {})", 0), {"'{'"}},
      {"header not object", raw_file("[1]", 0), {"'{'"}},
      {"bad dtype",
       raw_file(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2),
       {"tensor 'w'", "unknown dtype 'Q4'"}},
      {"missing dtype", raw_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "dtype"}},
      {"negative dim",
       raw_file(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "-1"}},
      {"fractional dim",
       raw_file(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
       {"tensor 'w'", "1.5"}},
      {"size mismatch",
       raw_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16),
       {"tensor 'w'", "12 bytes", "needs 16"}},
      {"offset past buffer",
       raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       {"tensor 'w'", "end 16", "8 bytes"}},
      {"begin after end",
       raw_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", 8),
       {"tensor 'w'", "begin 8", "end 4"}},
      {"offsets not a pair",
       raw_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", 8),
       {"tensor 'w'", "data_offsets"}},
      {"overlap",
       raw_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                24),
       {"tensor 'b'", "overlaps tensor 'a'"}},
      {"number overflow (nlohmann out_of_range)",
       raw_file(R"({"w":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}})", 4),
       {"malformed JSON header", "1e999"}},
      {"entry not object", raw_file(R"({"w":[1,2]})", 0), {"tensor 'w'", "not an object"}},
      {"metadata not strings", raw_file(R"({"__metadata__":{"step":3}})", 0),
       {"__metadata__", "'step'"}},
      {"dims overflow",
       raw_file(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                8),
       {"tensor 'w'", "overflows"}},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.what);
    const std::string file = path("bad.safetensors");
    write_bytes(file, c.bytes);
    auto f = SafetensorsFile::open(file);
    ASSERT_FALSE(f.is_ok());
    expect_contains(f.message(), {file});
    for (const std::string &part : c.parts)
      expect_contains(f.message(), {part});
  }
}

TEST_F(SafetensorsTest, TruncatedDataNamesTheTensor) {
  const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
  const std::string file = path("t.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"first", DType::F32, {4}, a}, {"second", DType::F32, {4}, b}},
                                {})
                  .is_ok());
  std::string bytes = read_bytes(file);
  write_bytes(file, bytes.substr(0, bytes.size() - 4));
  auto f = SafetensorsFile::open(file);
  ASSERT_FALSE(f.is_ok());
  expect_contains(f.message(), {file, "tensor 'second'", "past the data buffer"});

  auto missing = SafetensorsFile::open(path("nope.safetensors"));
  ASSERT_FALSE(missing.is_ok());
  expect_contains(missing.message(), {path("nope.safetensors")});
}

TEST_F(SafetensorsTest, ZeroSizedTensorsMayShareAnOffset) {
  std::string bytes = raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("e1":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                               R"("e2":{"dtype":"I8","shape":[3,0],"data_offsets":[4,4]},)"
                               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                               8);
  auto f = SafetensorsFile::from_memory(reinterpret_cast<const uint8_t *>(bytes.data()),
                                        bytes.size(), "mem");
  ASSERT_TRUE(f.is_ok()) << f.message();
  EXPECT_EQ(f.value()->tensors().size(), 4u);
}

TEST_F(SafetensorsTest, WeightStoreSingleFileAndDirectory) {
  const float w[3] = {1, 2, 3};
  ASSERT_TRUE(write_safetensors(path("model.safetensors"), {{"w", DType::F32, {3}, w}}, {}).is_ok());
  for (const std::string &p : {dir_, path("model.safetensors")}) {
    auto store = WeightStore::open(p);
    ASSERT_TRUE(store.is_ok()) << store.message();
    EXPECT_EQ(store->names(), std::vector<std::string>{"w"});
    const TensorView *t = store->find("w");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(std::memcmp(t->data, w, 12), 0);
    EXPECT_EQ(store->find("v"), nullptr);
  }
}

TEST_F(SafetensorsTest, WeightStoreSharded) {
  const float a[2] = {1, 2}, b[3] = {3, 4, 5}, c[1] = {6};
  ASSERT_TRUE(write_safetensors(path("model-00001-of-00002.safetensors"),
                                {{"layer.0.w", DType::F32, {2}, a}, {"layer.0.b", DType::F32, {1}, c}},
                                {{"format", "pt"}})
                  .is_ok());
  ASSERT_TRUE(write_safetensors(path("model-00002-of-00002.safetensors"),
                                {{"layer.1.w", DType::F32, {3}, b}}, {{"format", "pt"}})
                  .is_ok());
  write_bytes(path("model.safetensors.index.json"), R"({
    "metadata": {"total_size": 24},
    "weight_map": {
      "layer.1.w": "model-00002-of-00002.safetensors",
      "layer.0.w": "model-00001-of-00002.safetensors",
      "layer.0.b": "model-00001-of-00002.safetensors"
    }})");
  // A directory with an index prefers it even when model.safetensors also exists.
  ASSERT_TRUE(write_safetensors(path("model.safetensors"), {{"decoy", DType::F32, {1}, c}}, {}).is_ok());

  auto store = WeightStore::open(dir_);
  ASSERT_TRUE(store.is_ok()) << store.message();
  EXPECT_EQ(store->names(), (std::vector<std::string>{"layer.1.w", "layer.0.w", "layer.0.b"}));
  EXPECT_EQ(store->find("decoy"), nullptr);
  const TensorView *t1 = store->find("layer.1.w");
  ASSERT_NE(t1, nullptr);
  std::vector<float> values(3);
  ASSERT_TRUE(to_f32(*t1, values.data()).is_ok());
  EXPECT_EQ(values, (std::vector<float>{3, 4, 5}));
  const TensorView *t0 = store->find("layer.0.b");
  ASSERT_NE(t0, nullptr);
  EXPECT_EQ(std::memcmp(t0->data, c, 4), 0);

  // The store stays valid after being moved.
  WeightStore moved = std::move(store.value());
  ASSERT_NE(moved.find("layer.0.w"), nullptr);
  EXPECT_EQ(std::memcmp(moved.find("layer.0.w")->data, a, 8), 0);

  // Opening the index file directly works too.
  auto direct = WeightStore::open(path("model.safetensors.index.json"));
  ASSERT_TRUE(direct.is_ok()) << direct.message();
  EXPECT_EQ(direct->names().size(), 3u);
}

TEST_F(SafetensorsTest, WeightStoreShardErrors) {
  const float a[2] = {1, 2};
  ASSERT_TRUE(write_safetensors(path("shard1.safetensors"), {{"w", DType::F32, {2}, a}}, {}).is_ok());
  const std::string index = path("model.safetensors.index.json");

  write_bytes(index, R"({"weight_map": {"w": "shard1.safetensors", "v": "shard9.safetensors"}})");
  auto missing_shard = WeightStore::open(dir_);
  ASSERT_FALSE(missing_shard.is_ok());
  expect_contains(missing_shard.message(), {index, "'v'", "missing shard 'shard9.safetensors'"});

  write_bytes(index, R"({"weight_map": {"w": "shard1.safetensors", "u": "shard1.safetensors"}})");
  auto missing_tensor = WeightStore::open(dir_);
  ASSERT_FALSE(missing_tensor.is_ok());
  expect_contains(missing_tensor.message(), {index, "'u'", "shard1.safetensors", "no tensor"});

  write_bytes(index, R"({"metadata": {}})");
  auto no_map = WeightStore::open(dir_);
  ASSERT_FALSE(no_map.is_ok());
  expect_contains(no_map.message(), {index, "weight_map"});

  write_bytes(index, R"({"weight_map": {"w": "../elsewhere.safetensors"}})");
  auto escape = WeightStore::open(dir_);
  ASSERT_FALSE(escape.is_ok());
  expect_contains(escape.message(), {"'w'", "outside"});

  write_bytes(index, R"({"weight_map": )");
  auto malformed = WeightStore::open(dir_);
  ASSERT_FALSE(malformed.is_ok());
  expect_contains(malformed.message(), {index, "malformed JSON at byte"});

  // A broken shard reports the shard's own path.
  write_bytes(path("shard1.safetensors"), "xx");
  write_bytes(index, R"({"weight_map": {"w": "shard1.safetensors"}})");
  auto broken = WeightStore::open(dir_);
  ASSERT_FALSE(broken.is_ok());
  expect_contains(broken.message(), {path("shard1.safetensors")});
}

TEST_F(SafetensorsTest, WeightStoreEmptyDirectory) {
  auto store = WeightStore::open(dir_);
  ASSERT_FALSE(store.is_ok());
  expect_contains(store.message(), {dir_, "model.safetensors"});
}
