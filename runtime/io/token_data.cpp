//===- token_data.cpp - llm.c token files and the sequence loader ---------===//
#include "runtime/io/token_data.h"

#include <cerrno>
#include <cstring>
#include <numeric>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace parallora::rt {

namespace {

constexpr int32_t kMagicU16 = 20240520;
constexpr int32_t kVersionU16 = 1;
constexpr int32_t kMagicU32 = 20240801;
constexpr int32_t kVersionU32 = 7;
constexpr size_t kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * 4;

int32_t read_i32(const uint8_t *p) {
  uint32_t v = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
  int32_t out;
  std::memcpy(&out, &v, 4);
  return out;
}

} // namespace

struct TokenFile::Mapping {
  void *base = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (base) munmap(base, size);
  }
};

uint32_t TokenFile::token(int64_t i) const {
  if (token_size_ == 2) {
    const uint8_t *p = tokens_ + i * 2;
    return uint32_t(p[0]) | uint32_t(p[1]) << 8;
  }
  const uint8_t *p = tokens_ + i * 4;
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

StatusOr<TokenFile> TokenFile::open(const std::string &path, const std::string &format) {
  if (format != "auto" && format != "llmc" && format != "u16" && format != "u32")
    return Status::error("unknown data format '" + format + "' (expected auto, llmc, u16 or u32)");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error("cannot open token file " + path + ": " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return Status::error("cannot stat token file " + path + ": " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::error("token file " + path + " is not a regular file");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = size_t(st.st_size);
  if (mapping->size > 0) {
    void *base = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      return Status::error("cannot mmap token file " + path + ": " + std::strerror(e));
    }
    mapping->base = base;
  }
  ::close(fd);
  const uint8_t *bytes = static_cast<const uint8_t *>(mapping->base);
  const size_t size = mapping->size;

  TokenFile tf;
  tf.path = path;
  tf.mapping_ = mapping;

  bool magic_ok = false;
  int32_t magic = 0, version = 0;
  if (size >= kHeaderBytes) {
    magic = read_i32(bytes);
    version = read_i32(bytes + 4);
    magic_ok = magic == kMagicU16 || magic == kMagicU32;
  }
  if (format == "llmc" || (format == "auto" && magic_ok)) {
    if (size < kHeaderBytes)
      return Status::error("token file " + path + " is " + std::to_string(size) +
                           " bytes, shorter than the 1024-byte llm.c header");
    if (magic == kMagicU16 && version == kVersionU16) {
      tf.token_size_ = 2;
      tf.format = "llmc-u16";
    } else if (magic == kMagicU32 && version == kVersionU32) {
      tf.token_size_ = 4;
      tf.format = "llmc-u32";
    } else {
      return Status::error("token file " + path + ": bad llm.c header (magic " +
                           std::to_string(magic) + ", version " + std::to_string(version) +
                           "; expected magic 20240520 version 1 (uint16 tokens) or magic "
                           "20240801 version 7 (uint32 tokens))");
    }
    int32_t n = read_i32(bytes + 8);
    if (n < 0)
      return Status::error("token file " + path + ": negative token count " +
                           std::to_string(n) + " in the llm.c header");
    uint64_t expected = kHeaderBytes + uint64_t(n) * uint64_t(tf.token_size_);
    if (expected != size)
      return Status::error("token file " + path + ": size mismatch: the llm.c header says " +
                           std::to_string(n) + " tokens of " + std::to_string(tf.token_size_) +
                           " bytes, so expected " + std::to_string(expected) +
                           " bytes, but the file is " + std::to_string(size) + " bytes");
    tf.num_tokens_ = n;
    tf.tokens_ = bytes + kHeaderBytes;
  } else if (format == "auto") {
    return Status::error("token file " + path +
                         " has no llm.c header (magic 20240520 or 20240801); if it holds raw "
                         "tokens, pass --data-format u16 or --data-format u32");
  } else {
    tf.token_size_ = format == "u16" ? 2 : 4;
    tf.format = format;
    if (size % size_t(tf.token_size_) != 0)
      return Status::error("token file " + path + " is " + std::to_string(size) +
                           " bytes, not a multiple of the " + std::to_string(tf.token_size_) +
                           "-byte " + format + " token size");
    tf.num_tokens_ = int64_t(size / size_t(tf.token_size_));
    tf.tokens_ = bytes;
  }
  uint32_t mx = 0;
  for (int64_t i = 0; i < tf.num_tokens_; ++i) {
    uint32_t t = tf.token(i);
    if (t > mx) mx = t;
  }
  tf.max_token_ = mx;
  return tf;
}

uint64_t uniform_below(std::mt19937_64 &g, uint64_t n) {
  if (n <= 1) return 0;
  // Accept x < limit, where limit is the largest multiple of n that fits in 2^64.
  const uint64_t rem = (UINT64_MAX % n + 1) % n;  // 2^64 mod n
  const uint64_t limit = 0 - rem;                 // 2^64 - rem (0 means: accept everything)
  for (;;) {
    uint64_t x = g();
    if (limit == 0 || x < limit) return x % n;
  }
}

SequenceLoader::SequenceLoader(const TokenFile *file, int64_t seq_len, uint64_t seed, bool shuffle)
    : file_(file), seq_len_(seq_len), seed_(seed), shuffle_(shuffle) {
  num_sequences_ = (file_ && seq_len_ > 0) ? file_->num_tokens() / seq_len_ : 0;
}

void SequenceLoader::ensure_order(uint64_t epoch) {
  if (!shuffle_ || order_epoch_ == epoch) return;
  order_.resize(size_t(num_sequences_));
  std::iota(order_.begin(), order_.end(), int64_t(0));
  std::mt19937_64 g(seed_ * 1000003ULL + epoch);
  // Fisher-Yates: for i = n-1 down to 1, swap order[i] with order[j], j uniform in [0, i].
  for (int64_t i = num_sequences_ - 1; i > 0; --i) {
    int64_t j = int64_t(uniform_below(g, uint64_t(i) + 1));
    std::swap(order_[size_t(i)], order_[size_t(j)]);
  }
  order_epoch_ = epoch;
}

int64_t SequenceLoader::sequence_at(uint64_t epoch, uint64_t k) {
  if (!shuffle_) return int64_t(k);
  ensure_order(epoch);
  return order_[size_t(k)];
}

Status SequenceLoader::next(int64_t n_sequences, int32_t *out) {
  if (num_sequences_ == 0) {
    std::string name = file_ ? file_->path : std::string("<null>");
    int64_t have = file_ ? file_->num_tokens() : 0;
    return Status::error("token file " + name + " holds " + std::to_string(have) +
                         " tokens, fewer than one sequence of " + std::to_string(seq_len_) +
                         " tokens");
  }
  if (n_sequences < 0) return Status::error("SequenceLoader::next: negative sequence count");
  for (int64_t s = 0; s < n_sequences; ++s) {
    if (pos_.index >= uint64_t(num_sequences_)) {
      pos_.epoch += pos_.index / uint64_t(num_sequences_);
      pos_.index %= uint64_t(num_sequences_);
    }
    int64_t seq = sequence_at(pos_.epoch, pos_.index);
    int64_t base = seq * seq_len_;
    int32_t *dst = out + s * seq_len_;
    for (int64_t t = 0; t < seq_len_; ++t) dst[t] = int32_t(file_->token(base + t));
    ++pos_.index;
  }
  // Keep position() normalised: a finished epoch reads as the start of the next one.
  if (pos_.index >= uint64_t(num_sequences_)) {
    pos_.epoch += pos_.index / uint64_t(num_sequences_);
    pos_.index %= uint64_t(num_sequences_);
  }
  return Status::ok();
}

Status SequenceLoader::check_vocab(int64_t vocab) const {
  if (!file_) return Status::error("SequenceLoader: no token file");
  if (vocab <= 0) return Status::error("invalid vocabulary size " + std::to_string(vocab));
  if (int64_t(file_->max_token()) < vocab) return Status::ok();
  for (int64_t i = 0; i < file_->num_tokens(); ++i) {
    uint32_t t = file_->token(i);
    if (int64_t(t) >= vocab)
      return Status::error("token file " + file_->path + ": token " + std::to_string(i) +
                           " has id " + std::to_string(t) + ", outside the model's vocabulary of " +
                           std::to_string(vocab) + " (max id in the file: " +
                           std::to_string(file_->max_token()) + ")");
  }
  return Status::ok();
}

void SequenceLoader::restore(DataPosition pos) {
  pos_ = pos;
  if (num_sequences_ > 0 && pos_.index >= uint64_t(num_sequences_)) {
    pos_.epoch += pos_.index / uint64_t(num_sequences_);
    pos_.index %= uint64_t(num_sequences_);
  }
}

} // namespace parallora::rt
