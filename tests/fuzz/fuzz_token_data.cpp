// libFuzzer target for token files (runtime/io/token_data.h). Input byte 0 picks the format
// (auto, llmc, u16, u32), bytes 1..3 the sequence length, vocabulary and loader flags; the
// rest is the file, opened through TokenFile::open (mmap). A file that opens must serve every
// token: check_vocab and a few SequenceLoader::next calls (shuffled or not, after a restore)
// read all of it. Crashes, sanitizer reports and thrown exceptions are bugs.
#include "runtime/io/token_data.h"

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "tests/fuzz/fuzz_files.h"

using namespace parallora;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  static const char *kFormats[] = {"auto", "llmc", "u16", "u32"};
  const std::string format = kFormats[data[0] & 3];
  const int64_t seq_len = 1 + data[1] % 32;
  const int64_t vocab = 1 + int64_t(data[2]) * 257;  // 1 .. 65536: both outcomes happen
  const bool shuffle = data[3] & 1;
  const uint64_t restore_index = data[3] >> 1;
  const std::string path = fuzz::scratch_dir() + "/tokens.bin";
  fuzz::put_file(path, data + 4, size - 4, true);

  auto file = rt::TokenFile::open(path, format);
  if (!file) {
    if (file.message().empty()) std::abort();  // every failure says why
    return 0;
  }
  const rt::TokenFile &tf = *file;
  if (tf.token_size() != 2 && tf.token_size() != 4) std::abort();
  if (tf.num_tokens() < 0 || uint64_t(tf.num_tokens()) * uint64_t(tf.token_size()) > size)
    std::abort();
  uint32_t mx = 0;
  for (int64_t i = 0; i < tf.num_tokens(); ++i) mx = std::max(mx, tf.token(i));
  if (mx != tf.max_token()) std::abort();

  rt::SequenceLoader loader(&tf, seq_len, /*seed=*/data[1], shuffle);
  Status vs = loader.check_vocab(vocab);
  if (vs.is_ok() != (int64_t(mx) < vocab)) std::abort();
  loader.restore(rt::DataPosition{0, restore_index});
  std::vector<int32_t> batch(size_t(3 * seq_len));
  for (int round = 0; round < 3; ++round) {
    Status st = loader.next(3, batch.data());
    if (st.is_ok() != (loader.num_sequences() > 0)) std::abort();
    if (!st.is_ok()) break;
    if (loader.position().index >= uint64_t(loader.num_sequences())) std::abort();
  }
  return 0;
}
