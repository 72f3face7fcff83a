//===- safetensors.cpp - safetensors reader/writer and sharded weight stores -===//
//
// Validation follows the reference implementation (safetensors/src/tensor.rs): the header
// must fit in the file and be at most 100 MB, every dtype must be known, every shape
// non-negative, every [begin, end) inside the byte buffer and exactly numel * dtype_size
// long, and no two tensors may share bytes. Everything is checked before a view is handed
// out, so callers never bounds-check again.
//
//===----------------------------------------------------------------------===//
#include "runtime/base/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp assumes a little-endian host (safetensors data is little-endian)"
#endif

namespace parallora {
namespace {

// Header order matters to the writer ("keep the given order") and reads better in errors.
using ojson = nlohmann::ordered_json;

// The reference implementation refuses headers above 100 MB (MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeInfo {
  DType dtype;
  const char *name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::F64, "F64", 8}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2}, {DType::I8, "I8", 1},   {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};

/// numel * elem_size with overflow checks; false when the product does not fit in size_t.
bool byte_count(const std::vector<int64_t> &shape, size_t elem_size, size_t &out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, uint64_t(d), &n))
      return false;
  }
  if (n > uint64_t(INT64_MAX))
    return false;
  uint64_t bytes;
  if (__builtin_mul_overflow(n, uint64_t(elem_size), &bytes) || bytes > SIZE_MAX)
    return false;
  out = size_t(bytes);
  return true;
}

std::string shape_string(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// Reads a JSON integer that must be >= 0 and fit in int64.
bool non_negative_int(const ojson &v, int64_t &out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(INT64_MAX))
      return false;
    out = int64_t(u);
    return true;
  }
  if (v.is_number_integer()) {
    out = v.get<int64_t>();
    return out >= 0;
  }
  return false;
}

bool read_text_file(const std::string &path, std::string &out) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return false;
  std::ostringstream text;
  text << in.rdbuf();
  out = text.str();
  return !in.bad();
}

bool is_directory(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string parent_dir(const std::string &path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos)
    return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool ends_with(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

} // namespace

// ------------------------------------------------------------------ dtypes

const char *dtype_name(DType dtype) {
  for (const DTypeInfo &info : kDTypes)
    if (info.dtype == dtype)
      return info.name;
  return "?";
}

size_t dtype_size(DType dtype) {
  for (const DTypeInfo &info : kDTypes)
    if (info.dtype == dtype)
      return info.size;
  return 0;
}

bool dtype_from_name(const std::string &name, DType &out) {
  for (const DTypeInfo &info : kDTypes)
    if (name == info.name) {
      out = info.dtype;
      return true;
    }
  return false;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

// ------------------------------------------------------------------ SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (mapping_)
    ::munmap(mapping_, size_);
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status::error(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::error(path + ": not a regular file");
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = size_t(st.st_size);
  if (file->size_ > 0) {
    void *base = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return Status::error(path + ": mmap failed: " + std::strerror(err));
    }
    file->mapping_ = base;
    file->bytes_ = static_cast<const uint8_t *>(base);
  }
  ::close(fd);  // the mapping keeps the file alive
  Status s = file->parse();
  if (!s.is_ok())
    return s;
  return file;
}

StatusOr<std::unique_ptr<SafetensorsFile>>
SafetensorsFile::from_memory(const uint8_t *bytes, size_t size, const std::string &origin) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = origin;
  file->owned_.assign(bytes, bytes + size);
  file->bytes_ = file->owned_.data();
  file->size_ = size;
  Status s = file->parse();
  if (!s.is_ok())
    return s;
  return file;
}

Status SafetensorsFile::parse() {
  const std::string &p = path_;
  if (size_ < 8)
    return Status::error(p + ": file is " + std::to_string(size_) +
                         " bytes, too short for the 8-byte header length (truncated?)");
  uint64_t header_len;
  std::memcpy(&header_len, bytes_, 8);
  if (header_len > size_ - 8)
    return Status::error(p + ": header length " + std::to_string(header_len) +
                         " runs past the end of the file (" + std::to_string(size_) +
                         " bytes; truncated?)");
  if (header_len > kMaxHeaderBytes)
    return Status::error(p + ": header length " + std::to_string(header_len) +
                         " exceeds the 100 MB limit");
  const char *header_begin = reinterpret_cast<const char *>(bytes_ + 8);
  if (header_len == 0 || header_begin[0] != '{')
    return Status::error(p + ": header does not start with '{'");

  ojson header;
  try {
    header = ojson::parse(header_begin, header_begin + header_len);
  } catch (const ojson::parse_error &e) {
    return Status::error(p + ": malformed JSON header at byte " + std::to_string(e.byte) + ": " +
                         e.what());
  } catch (const ojson::exception &e) {  // e.g. out_of_range 406: a number like 1e999
    return Status::error(p + ": malformed JSON header: " + e.what());
  }
  if (!header.is_object())
    return Status::error(p + ": header is not a JSON object");

  const uint8_t *buffer = bytes_ + 8 + header_len;
  const size_t buffer_size = size_ - 8 - size_t(header_len);
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [begin, end) per tensor

  for (const auto &item : header.items()) {
    const std::string &name = item.key();
    const ojson &entry = item.value();
    if (name == "__metadata__") {
      if (!entry.is_object())
        return Status::error(p + ": __metadata__ must be an object of strings");
      for (const auto &kv : entry.items()) {
        if (!kv.value().is_string())
          return Status::error(p + ": __metadata__ key '" + kv.key() + "' is not a string");
        metadata_[kv.key()] = kv.value().get<std::string>();
      }
      continue;
    }
    const std::string where = p + ": tensor '" + name + "': ";
    if (!entry.is_object())
      return Status::error(where + "entry is not an object");

    TensorView view;
    view.name = name;
    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string())
      return Status::error(where + "missing or non-string 'dtype'");
    if (!dtype_from_name(dtype_it->get<std::string>(), view.dtype))
      return Status::error(where + "unknown dtype '" + dtype_it->get<std::string>() + "'");

    auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array())
      return Status::error(where + "missing or non-array 'shape'");
    for (const ojson &d : *shape_it) {
      int64_t dim;
      if (!non_negative_int(d, dim))
        return Status::error(where + "shape entry " + d.dump() + " is not a non-negative integer");
      view.shape.push_back(dim);
    }

    auto off_it = entry.find("data_offsets");
    int64_t begin, end;
    if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2 ||
        !non_negative_int((*off_it)[0], begin) || !non_negative_int((*off_it)[1], end))
      return Status::error(where + "'data_offsets' must be [begin, end] of non-negative integers");
    if (begin > end)
      return Status::error(where + "data_offsets begin " + std::to_string(begin) +
                           " is after end " + std::to_string(end));
    if (uint64_t(end) > buffer_size)
      return Status::error(where + "data_offsets end " + std::to_string(end) +
                           " is past the data buffer (" + std::to_string(buffer_size) + " bytes)");
    size_t expected;
    if (!byte_count(view.shape, dtype_size(view.dtype), expected))
      return Status::error(where + "shape " + shape_string(view.shape) + " overflows");
    if (uint64_t(end - begin) != expected)
      return Status::error(where + "data_offsets span " + std::to_string(end - begin) +
                           " bytes but shape " + shape_string(view.shape) + " of " +
                           dtype_name(view.dtype) + " needs " + std::to_string(expected));
    view.data = buffer + begin;
    view.nbytes = expected;
    by_name_[name] = tensors_.size();
    tensors_.push_back(std::move(view));
    ranges.push_back({begin, end});
  }

  // Overlap check: walk the tensors by start offset; each must start at or after the
  // furthest end seen so far.
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  int64_t furthest_end = 0;
  size_t furthest = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    size_t i = order[k];
    if (k > 0 && ranges[i].first < furthest_end)
      return Status::error(p + ": tensor '" + tensors_[i].name + "' (bytes " +
                           std::to_string(ranges[i].first) + ".." +
                           std::to_string(ranges[i].second) + ") overlaps tensor '" +
                           tensors_[furthest].name + "' (ending at " +
                           std::to_string(furthest_end) + ")");
    if (ranges[i].second >= furthest_end) {
      furthest_end = ranges[i].second;
      furthest = i;
    }
  }
  return Status::ok();
}

const TensorView *SafetensorsFile::find(const std::string &name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

// ------------------------------------------------------------------ WeightStore

Status WeightStore::add_file(std::unique_ptr<SafetensorsFile> file) {
  for (const TensorView &t : file->tensors()) {
    by_name_[t.name] = &t;
    names_.push_back(t.name);
  }
  files_.push_back(std::move(file));
  return Status::ok();
}

StatusOr<WeightStore> WeightStore::open(const std::string &path) {
  std::string index_path, single_path;
  if (is_directory(path)) {
    if (exists(path + "/model.safetensors.index.json"))
      index_path = path + "/model.safetensors.index.json";
    else if (exists(path + "/model.safetensors"))
      single_path = path + "/model.safetensors";
    else
      return Status::error(path +
                           ": directory holds neither model.safetensors nor "
                           "model.safetensors.index.json");
  } else if (ends_with(path, ".json")) {
    index_path = path;
  } else {
    single_path = path;
  }

  WeightStore store;
  if (!single_path.empty()) {
    auto file = SafetensorsFile::open(single_path);
    if (!file.is_ok())
      return file.status();
    store.add_file(std::move(file.value()));
    return store;
  }

  // Sharded checkpoint: the index maps each tensor to the shard file that holds it.
  std::string text;
  if (!read_text_file(index_path, text))
    return Status::error(index_path + ": cannot read index file");
  ojson index;
  try {
    index = ojson::parse(text);
  } catch (const ojson::parse_error &e) {
    return Status::error(index_path + ": malformed JSON at byte " + std::to_string(e.byte) + ": " +
                         e.what());
  } catch (const ojson::exception &e) {
    return Status::error(index_path + ": malformed JSON: " + e.what());
  }
  auto map_it = index.is_object() ? index.find("weight_map") : index.end();
  if (!index.is_object() || map_it == index.end() || !map_it->is_object())
    return Status::error(index_path + ": key 'weight_map' missing or not an object");

  const std::string dir = parent_dir(index_path);
  std::map<std::string, const SafetensorsFile *> shards;
  for (const auto &item : map_it->items()) {
    const std::string &tensor = item.key();
    if (!item.value().is_string())
      return Status::error(index_path + ": weight_map['" + tensor + "'] is not a string");
    const std::string shard = item.value().get<std::string>();
    if (shard.empty() || shard[0] == '/' || shard.find("..") != std::string::npos)
      return Status::error(index_path + ": weight_map['" + tensor + "'] names shard '" + shard +
                           "' outside the checkpoint directory");
    auto found = shards.find(shard);
    if (found == shards.end()) {
      const std::string shard_path = dir + "/" + shard;
      if (!exists(shard_path))
        return Status::error(index_path + ": weight_map['" + tensor + "'] names missing shard '" +
                             shard + "' (" + shard_path + ")");
      auto file = SafetensorsFile::open(shard_path);
      if (!file.is_ok())
        return file.status();
      found = shards.emplace(shard, file.value().get()).first;
      store.files_.push_back(std::move(file.value()));
    }
    const TensorView *view = found->second->find(tensor);
    if (!view)
      return Status::error(index_path + ": weight_map['" + tensor + "'] points at shard '" +
                           shard + "', which has no tensor of that name");
    store.by_name_[tensor] = view;
    store.names_.push_back(tensor);
  }
  return store;
}

void SafetensorsFile::release(const TensorView &v) const {
  if (!mapping_ || v.nbytes == 0 || v.data < bytes_ || v.data + v.nbytes > bytes_ + size_) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = uintptr_t(v.data) & ~(page - 1);
  const uintptr_t end = (uintptr_t(v.data) + v.nbytes + page - 1) & ~(page - 1);
  ::madvise(reinterpret_cast<void *>(begin), end - begin, MADV_DONTNEED);  // advice: errors change nothing
}

void WeightStore::release(const TensorView &v) const {
  for (const auto &f : files_) f->release(v);
}

const TensorView *WeightStore::find(const std::string &name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

// ------------------------------------------------------------------ conversion

float bf16_bits_to_f32(uint16_t bits) {
  // bfloat16 is the upper half of a float32.
  uint32_t wide = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &wide, 4);
  return f;
}

float f16_bits_to_f32(uint16_t bits) {
  const uint32_t sign = uint32_t(bits >> 15) << 31;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  uint32_t wide;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    float magnitude = std::ldexp(float(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31)
    wide = sign | 0x7f800000u | (mantissa << 13);  // inf, or nan keeping its payload
  else
    wide = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  float f;
  std::memcpy(&f, &wide, 4);
  return f;
}

Status to_f32(const TensorView &tensor, float *out) {
  const size_t n = size_t(tensor.numel());
  const uint8_t *src = tensor.data;
  switch (tensor.dtype) {
  case DType::F32:
    if (n)
      std::memcpy(out, src, n * 4);
    return Status::ok();
  case DType::F16:
  case DType::BF16: {
    const bool is_bf16 = tensor.dtype == DType::BF16;
    for (size_t i = 0; i < n; ++i) {
      uint16_t bits;
      std::memcpy(&bits, src + 2 * i, 2);
      out[i] = is_bf16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits);
    }
    return Status::ok();
  }
  case DType::F64:
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, src + 8 * i, 8);
      out[i] = float(d);
    }
    return Status::ok();
  default:
    return Status::error("tensor '" + tensor.name + "': cannot convert dtype " +
                         dtype_name(tensor.dtype) + " to float32 (supported: F32, F16, BF16, F64)");
  }
}

// ------------------------------------------------------------------ writer

namespace {

Status write_all(int fd, const void *data, size_t size, const std::string &path) {
  const char *p = static_cast<const char *>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return Status::error(path + ": write failed: " + std::strerror(errno));
    p += n;
    size -= size_t(n);
  }
  return Status::ok();
}

} // namespace

Status write_safetensors(const std::string &path, const std::vector<TensorToWrite> &tensors,
                         const std::map<std::string, std::string> &metadata) {
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson meta = ojson::object();
    for (const auto &kv : metadata)
      meta[kv.first] = kv.second;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  std::vector<size_t> sizes;
  uint64_t offset = 0;
  for (const TensorToWrite &t : tensors) {
    const std::string where = path + ": tensor '" + t.name + "': ";
    if (t.name.empty() || t.name == "__metadata__")
      return Status::error(path + ": invalid tensor name '" + t.name + "'");
    if (!seen.insert(t.name).second)
      return Status::error(where + "duplicate name");
    size_t nbytes;
    if (!byte_count(t.shape, dtype_size(t.dtype), nbytes))
      return Status::error(where + "shape " + shape_string(t.shape) + " is negative or overflows");
    if (nbytes > 0 && !t.data)
      return Status::error(where + "data is null");
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    sizes.push_back(nbytes);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return Status::error(tmp + ": cannot create: " + std::strerror(errno));
  Status s = write_all(fd, &header_len, 8, tmp);
  if (s.is_ok())
    s = write_all(fd, text.data(), text.size(), tmp);
  for (size_t i = 0; s.is_ok() && i < tensors.size(); ++i)
    if (sizes[i])
      s = write_all(fd, tensors[i].data, sizes[i], tmp);
  if (s.is_ok() && ::fsync(fd) != 0)
    s = Status::error(tmp + ": fsync failed: " + std::strerror(errno));
  if (::close(fd) != 0 && s.is_ok())
    s = Status::error(tmp + ": close failed: " + std::strerror(errno));
  if (s.is_ok() && ::rename(tmp.c_str(), path.c_str()) != 0)
    s = Status::error(path + ": rename from " + tmp + " failed: " + std::strerror(errno));
  if (!s.is_ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  // Make the rename itself durable; failure here leaves a complete file, so it is ignored.
  int dir_fd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return Status::ok();
}

} // namespace parallora
