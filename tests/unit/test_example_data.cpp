//===- test_example_data.cpp - label-mask files, example rows, BatchSource ===//
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/io/example_data.h"

namespace parallora::rt {
namespace {

struct Files {
  std::string dir, bin, mask;
};

/// Writes an llm.c uint16 token file and a label-mask file (the format of example_data.h) for
/// `docs` (token ids) and `masks` (0/1 per token); `version` / `count_delta` break the header.
Files write_pair(const std::string &name, const std::vector<std::vector<uint16_t>> &docs,
                 const std::vector<std::vector<uint8_t>> &masks, uint32_t version = 1, int64_t count_delta = 0) {
  Files f;
  f.dir = ::testing::TempDir();
  f.bin = f.dir + "/" + name + ".bin";
  f.mask = f.dir + "/" + name + ".mask";
  std::vector<uint16_t> toks;
  std::vector<uint8_t> mask;
  std::vector<int64_t> starts{0};
  for (size_t d = 0; d < docs.size(); ++d) {
    toks.insert(toks.end(), docs[d].begin(), docs[d].end());
    mask.insert(mask.end(), masks[d].begin(), masks[d].end());
    starts.push_back(int64_t(toks.size()));
  }
  std::vector<int32_t> h(256, 0);
  h[0] = 20240520, h[1] = 1, h[2] = int32_t(toks.size());
  std::ofstream b(f.bin, std::ios::binary);
  b.write(reinterpret_cast<const char *>(h.data()), 1024);
  b.write(reinterpret_cast<const char *>(toks.data()), std::streamsize(toks.size() * 2));
  std::vector<uint32_t> m(256, 0);
  const uint64_t n = toks.size() + uint64_t(count_delta), nd = docs.size();
  m[0] = kLabelMaskMagic, m[1] = version, m[2] = uint32_t(n), m[4] = uint32_t(nd), m[6] = 256, m[8] = 7;
  std::ofstream o(f.mask, std::ios::binary);
  o.write(reinterpret_cast<const char *>(m.data()), 1024);
  mask.resize((mask.size() + 7) / 8 * 8, 0);
  o.write(reinterpret_cast<const char *>(mask.data()), std::streamsize(mask.size()));
  o.write(reinterpret_cast<const char *>(starts.data()), std::streamsize(starts.size() * 8));
  return f;
}

// Three examples of 3, 4 and 2 tokens; the answers are their last tokens.
const std::vector<std::vector<uint16_t>> kDocs = {{10, 11, 12}, {20, 21, 22, 23}, {30, 31}};
const std::vector<std::vector<uint8_t>> kMasks = {{0, 0, 1}, {0, 0, 1, 1}, {0, 1}};

TEST(ExampleData, PaddedRows) {
  Files f = write_pair("padded", kDocs, kMasks);
  auto tf = TokenFile::open(f.bin, "auto");
  ASSERT_TRUE(tf.is_ok()) << tf.message();
  auto mf = LabelMaskFile::open(f.mask, *tf);
  ASSERT_TRUE(mf.is_ok()) << mf.message();
  EXPECT_EQ(mf->num_examples(), 3);
  EXPECT_EQ(mf->num_trained, 4);
  auto l = ExampleLoader::create(&*tf, &*mf, 5, RowLayout::Padded, 0, false, -100);
  ASSERT_TRUE(l.is_ok()) << l.message();
  ASSERT_EQ((*l)->num_rows(), 3);
  ExampleBatch b;
  (*l)->next(2, &b);
  EXPECT_EQ(b.input_ids, (std::vector<int32_t>{10, 11, 12, 7, 7, 20, 21, 22, 23, 7}));
  EXPECT_EQ(b.labels, (std::vector<int32_t>{-100, -100, 12, -100, -100, -100, -100, 22, 23, -100}));
  EXPECT_EQ(b.position_ids, (std::vector<int32_t>{0, 1, 2, 0, 1, 0, 1, 2, 3, 0}));
  EXPECT_EQ(b.segment_ids, (std::vector<int32_t>{0, 0, 0, 1, 1, 0, 0, 0, 0, 1}));
  // Wraps into the next epoch; position() / restore() resume the same rows.
  DataPosition p = (*l)->position();
  (*l)->next(2, &b);
  EXPECT_EQ(b.input_ids[0], 30);
  EXPECT_EQ(b.input_ids[5], 10);
  (*l)->restore(p);
  ExampleBatch again;
  (*l)->next(2, &again);
  EXPECT_EQ(again.input_ids, b.input_ids);
  EXPECT_EQ((*l)->position().epoch, 1u);
}

TEST(ExampleData, PackedRows) {
  Files f = write_pair("packed", kDocs, kMasks);
  auto tf = TokenFile::open(f.bin, "auto");
  auto mf = LabelMaskFile::open(f.mask, *tf);
  ASSERT_TRUE(mf.is_ok()) << mf.message();
  // seq_len 7: next-fit puts examples 0 + 1 (3 + 4) in row 0, example 2 in row 1.
  auto l = ExampleLoader::create(&*tf, &*mf, 7, RowLayout::Packed, 0, false, -100);
  ASSERT_TRUE(l.is_ok()) << l.message();
  ASSERT_EQ((*l)->num_rows(), 2);
  ExampleBatch b;
  (*l)->next(2, &b);
  EXPECT_EQ(b.input_ids, (std::vector<int32_t>{10, 11, 12, 20, 21, 22, 23, 30, 31, 7, 7, 7, 7, 7}));
  // Example 1's first token (20) is not a target even though the previous token is real.
  EXPECT_EQ(b.labels, (std::vector<int32_t>{-100, -100, 12, -100, -100, 22, 23, -100, 31, -100, -100, -100, -100, -100}));
  EXPECT_EQ(b.position_ids, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4}));
  EXPECT_EQ(b.segment_ids, (std::vector<int32_t>{0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1}));
  // Shuffled order: a permutation of the rows, the same for the same seed.
  auto s1 = ExampleLoader::create(&*tf, &*mf, 7, RowLayout::Packed, 3, true, -100);
  auto s2 = ExampleLoader::create(&*tf, &*mf, 7, RowLayout::Packed, 3, true, -100);
  ExampleBatch x, y;
  (*s1)->next(4, &x);
  (*s2)->next(4, &y);
  EXPECT_EQ(x.input_ids, y.input_ids);
}

TEST(ExampleData, Errors) {
  auto open = [](const Files &f) -> Status {
    auto tf = TokenFile::open(f.bin, "auto");
    if (!tf) return tf.status();
    auto mf = LabelMaskFile::open(f.mask, *tf);
    return mf ? Status::ok() : mf.status();
  };
  auto expect = [](const Status &s, const std::string &needle) {
    ASSERT_FALSE(s.is_ok()) << "expected: " << needle;
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  };
  expect(open(write_pair("v2", kDocs, kMasks, 2)), "v2.mask: format version 2, this lora-run reads version 1");
  expect(open(write_pair("len", kDocs, kMasks, 1, 3)), "describes 12 tokens but its token file");
  expect(open(write_pair("none", kDocs, {{0, 0, 1}, {1, 0, 0, 0}, {0, 1}})),
         "none.mask: example 2 (tokens 3..7) has no trained token");
  expect(open(write_pair("byte", kDocs, {{0, 0, 1}, {0, 0, 2, 1}, {0, 1}})), "example 2: mask byte 2 at token 5");
  Files f = write_pair("long", kDocs, kMasks);
  auto tf = TokenFile::open(f.bin, "auto");
  auto mf = LabelMaskFile::open(f.mask, *tf);
  auto l = ExampleLoader::create(&*tf, &*mf, 3, RowLayout::Padded, 0, false, -100);
  expect(l.status(), "long.mask: example 2 has 4 tokens, more than the plan's seq_len 3 (prepare with --max-seq-len 3)");
  EXPECT_EQ(label_mask_path("d/x.bin"), "d/x.mask");
  EXPECT_EQ(label_mask_path("d/x.tok"), "d/x.tok.mask");
}

} // namespace
} // namespace parallora::rt
