//===- example_data.cpp - label-mask files and the example loader ----------===//
#include "runtime/io/example_data.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>

namespace parallora::rt {
namespace {

constexpr size_t kHeaderBytes = 1024;

uint32_t u32_at(const uint8_t *p, int i) {
  p += 4 * i;
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint64_t u64_at(const uint8_t *p, int i) { return uint64_t(u32_at(p, i)) | uint64_t(u32_at(p, i + 1)) << 32; }

std::string example_name(int64_t e) { return "example " + std::to_string(e + 1); }  // 1-based, as the summary counts

} // namespace

std::string label_mask_path(const std::string &token_path) {
  const std::string ext = ".bin";
  if (token_path.size() > ext.size() && token_path.compare(token_path.size() - ext.size(), ext.size(), ext) == 0)
    return token_path.substr(0, token_path.size() - ext.size()) + ".mask";
  return token_path + ".mask";
}

StatusOr<LabelMaskFile> LabelMaskFile::open(const std::string &path, const TokenFile &tokens) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error("cannot open label-mask file " + path + ": " + std::strerror(errno));
  auto bytes = std::make_shared<std::vector<uint8_t>>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::vector<uint8_t> &b = *bytes;
  const std::string where = "label-mask file " + path;
  if (b.size() < kHeaderBytes)
    return Status::error(where + ": " + std::to_string(b.size()) + " bytes, shorter than its 1024-byte header");
  const uint8_t *h = b.data();
  if (u32_at(h, 0) != kLabelMaskMagic)
    return Status::error(where + ": not a label-mask file (magic " + std::to_string(u32_at(h, 0)) + ", expected " +
                         std::to_string(kLabelMaskMagic) + "; scripts/prepare_data.py writes them)");
  if (u32_at(h, 1) != kLabelMaskVersion)
    return Status::error(where + ": format version " + std::to_string(u32_at(h, 1)) + ", this lora-run reads version " +
                         std::to_string(kLabelMaskVersion) + " (prepare the data again with this scripts/prepare_data.py)");
  const uint64_t n = u64_at(h, 2), docs = u64_at(h, 4);
  if (int64_t(n) != tokens.num_tokens())
    return Status::error(where + " describes " + std::to_string(n) + " tokens but its token file " + tokens.path +
                         " holds " + std::to_string(tokens.num_tokens()) +
                         ": the two files are not from one prepare_data.py run");
  const uint64_t padded = (n + 7) / 8 * 8;
  const uint64_t want = kHeaderBytes + padded + 8 * (docs + 1);
  if (docs > (uint64_t(1) << 40) || b.size() != want)
    return Status::error(where + ": " + std::to_string(b.size()) + " bytes, but a header of " + std::to_string(n) +
                         " tokens and " + std::to_string(docs) + " examples needs " + std::to_string(want) +
                         " (truncated or not written by prepare_data.py)");
  LabelMaskFile f;
  f.path = path;
  f.vocab_size = u32_at(h, 6);
  f.flags = u32_at(h, 7);
  f.pad_id = u32_at(h, 8);
  f.bytes_ = bytes;
  f.mask_ = h + kHeaderBytes;
  f.starts_ = reinterpret_cast<const int64_t *>(h + kHeaderBytes + padded);  // 8-aligned offset of a vector's data
  f.num_examples_ = int64_t(docs);
  if (docs == 0) return Status::error(where + ": holds no example");
  if (f.starts_[0] != 0 || f.starts_[docs] != int64_t(n))
    return Status::error(where + ": the example boundaries run from " + std::to_string(f.starts_[0]) + " to " +
                         std::to_string(f.starts_[docs]) + ", expected 0 to " + std::to_string(n));
  if (f.vocab_size > 0 && int64_t(tokens.max_token()) >= int64_t(f.vocab_size))
    return Status::error(tokens.path + ": holds token id " + std::to_string(tokens.max_token()) +
                         ", outside the vocabulary of " + std::to_string(f.vocab_size) + " recorded in " + path);
  int64_t trained = 0;
  for (int64_t e = 0; e < int64_t(docs); ++e) {
    const int64_t s = f.starts_[e], t = f.starts_[e + 1];
    if (t <= s)
      return Status::error(where + ": " + example_name(e) + " is empty (boundaries " + std::to_string(s) + ", " +
                           std::to_string(t) + ")");
    int64_t here = 0;
    for (int64_t i = s; i < t; ++i) {
      const uint8_t m = f.mask_[i];
      if (m > 1)
        return Status::error(where + ": " + example_name(e) + ": mask byte " + std::to_string(m) + " at token " +
                             std::to_string(i) + " (expected 0 or 1)");
      // The first token of an example is never a target (nothing of the example precedes it).
      here += i > s ? m : 0;
    }
    if (here == 0)
      return Status::error(where + ": " + example_name(e) + " (tokens " + std::to_string(s) + ".." + std::to_string(t) +
                           ") has no trained token: its loss would be 0/0 (prepare_data.py drops such examples)");
    trained += here;
    f.longest = std::max(f.longest, t - s);
  }
  f.num_trained = trained;
  return f;
}

StatusOr<std::unique_ptr<ExampleLoader>> ExampleLoader::create(const TokenFile *tokens, const LabelMaskFile *mask,
                                                               int64_t seq_len, RowLayout layout, uint64_t seed,
                                                               bool shuffle, int32_t ignore_index) {
  std::unique_ptr<ExampleLoader> l(new ExampleLoader());
  l->tokens_ = tokens;
  l->mask_ = mask;
  l->seq_len_ = seq_len;
  l->ignore_ = ignore_index;
  l->seed_ = seed;
  l->shuffle_ = shuffle;
  int64_t used = 0;  // tokens in the open row (packed)
  for (int64_t e = 0; e < mask->num_examples(); ++e) {
    const int64_t len = mask->example_length(e);
    if (len > seq_len)
      return Status::error(mask->path + ": " + example_name(e) + " has " + std::to_string(len) +
                           " tokens, more than the plan's seq_len " + std::to_string(seq_len) +
                           " (prepare with --max-seq-len " + std::to_string(seq_len) + ")");
    l->real_tokens_ += len;
    if (layout == RowLayout::Packed && !l->rows_.empty() && used + len <= seq_len) {
      l->rows_.back().second = e + 1;
      used += len;
    } else {
      l->rows_.push_back({e, e + 1});
      used = len;
    }
  }
  return l;
}

int64_t ExampleLoader::row_at(uint64_t epoch, uint64_t k) {
  if (!shuffle_) return int64_t(k);
  if (order_epoch_ != epoch) {
    // SequenceLoader's order rule (token_data.h), over rows instead of fixed windows.
    const int64_t n = num_rows();
    order_.resize(size_t(n));
    std::iota(order_.begin(), order_.end(), int64_t(0));
    std::mt19937_64 g(seed_ * 1000003ULL + epoch);
    for (int64_t i = n - 1; i > 0; --i) std::swap(order_[size_t(i)], order_[size_t(uniform_below(g, uint64_t(i) + 1))]);
    order_epoch_ = epoch;
  }
  return order_[size_t(k)];
}

void ExampleLoader::fill_row(int64_t row, int64_t r, ExampleBatch *out) const {
  const int64_t T = seq_len_;
  int32_t *ids = out->input_ids.data() + r * T, *lab = out->labels.data() + r * T;
  int32_t *pos = out->position_ids.data() + r * T, *seg = out->segment_ids.data() + r * T;
  int64_t t = 0;
  int32_t segment = 0;
  for (int64_t e = rows_[size_t(row)].first; e < rows_[size_t(row)].second; ++e, ++segment) {
    const int64_t s = mask_->example_start(e), len = mask_->example_length(e);
    for (int64_t i = 0; i < len; ++i, ++t) {
      const int32_t id = int32_t(tokens_->token(s + i));
      ids[t] = id;
      lab[t] = i > 0 && mask_->trained(s + i) ? id : ignore_;
      pos[t] = int32_t(i);
      seg[t] = segment;
    }
  }
  for (int32_t i = 0; t < T; ++t, ++i) {  // padding: one more segment, never a target
    ids[t] = int32_t(mask_->pad_id);
    lab[t] = ignore_;
    pos[t] = i;
    seg[t] = segment;
  }
}

void ExampleLoader::next(int64_t n_rows, ExampleBatch *out) {
  const size_t numel = size_t(n_rows * seq_len_);
  for (auto *v : {&out->input_ids, &out->labels, &out->position_ids, &out->segment_ids}) v->resize(numel);
  const uint64_t n = uint64_t(num_rows());
  for (int64_t r = 0; r < n_rows; ++r) {
    restore(pos_);  // normalise index into later epochs
    fill_row(row_at(pos_.epoch, pos_.index), r, out);
    ++pos_.index;
  }
  if (n > 0) restore(pos_);
}

void ExampleLoader::restore(DataPosition pos) {
  pos_ = pos;
  const uint64_t n = uint64_t(num_rows());
  if (n > 0 && pos_.index >= n) {
    pos_.epoch += pos_.index / n;
    pos_.index %= n;
  }
}

} // namespace parallora::rt
