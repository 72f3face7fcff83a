// libFuzzer target for label-mask files (runtime/io/example_data.h). Input byte 0 picks the row
// layout and shuffle, byte 1 the sequence length (1 + byte); the rest is the mask file. The token file next
// to it is synthesised with as many tokens as the mask's header claims (when that is small), so the
// checks past the count are reached. A mask file that opens must lay out and serve every row:
// labels are ignore_index or the token at that position, positions and segments restart as
// documented. Crashes, sanitizer reports and thrown exceptions are bugs.
#include "runtime/io/example_data.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tests/fuzz/fuzz_files.h"

using namespace parallora;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  const bool packed = data[0] & 1, shuffle = data[0] & 2;
  const int64_t seq_len = 1 + data[1];  // 1 .. 256
  const uint64_t seed = data[0];
  data += 2;
  size -= 2;
  uint64_t n = 3;  // tokens of the synthesised token file: the mask header's count when small
  if (size >= 16) std::memcpy(&n, data + 8, 8);
  if (n > 4096) n = 3;
  std::vector<uint8_t> tok(1024 + 2 * n, 0);
  const int32_t header[3] = {20240520, 1, int32_t(n)};
  std::memcpy(tok.data(), header, sizeof header);
  for (uint64_t i = 0; i < n; ++i) tok[1024 + 2 * i] = uint8_t(i * 7 + 1);  // ids < 256
  const std::string dir = fuzz::scratch_dir();
  fuzz::put_file(dir + "/x.bin", tok.data(), tok.size(), true);
  fuzz::put_file(dir + "/x.mask", data, size, true);

  auto tf = rt::TokenFile::open(dir + "/x.bin", "auto");
  if (!tf) std::abort();  // we wrote a valid token file
  auto mf = rt::LabelMaskFile::open(dir + "/x.mask", *tf);
  if (!mf) {
    if (mf.message().empty()) std::abort();  // every failure says why
    return 0;
  }
  auto l = rt::ExampleLoader::create(&*tf, &*mf, seq_len, packed ? rt::RowLayout::Packed : rt::RowLayout::Padded,
                                     seed, shuffle, -100);
  if (!l) {
    if (mf->longest <= seq_len) std::abort();  // only an over-long example is refused
    return 0;
  }
  rt::ExampleBatch b;
  for (int round = 0; round < 3; ++round) {
    (*l)->next(2, &b);
    for (size_t i = 0; i < b.labels.size(); ++i) {
      if (b.labels[i] != -100 && b.labels[i] != b.input_ids[i]) std::abort();
      const size_t t = i % size_t(seq_len);
      if (t == 0 && (b.position_ids[i] != 0 || b.segment_ids[i] != 0 || b.labels[i] != -100)) std::abort();
      if (t > 0 && b.segment_ids[i] != b.segment_ids[i - 1] && b.position_ids[i] != 0) std::abort();
    }
  }
  return 0;
}
