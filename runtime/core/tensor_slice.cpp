//===- tensor_slice.cpp ----------------------------------------------------===//
#include "runtime/core/tensor_slice.h"

#include <cstring>

namespace parallora::rt {
namespace {

/// Calls fn(offset in the whole tensor, offset in the slice, row length) for every contiguous row
/// of the slice, in row-major order.
template <typename Fn> void for_each_row(const std::vector<int64_t> &full, const Slice &slice, Fn fn) {
  const size_t rank = full.size();
  if (rank == 0) {
    fn(0, 0, 1);
    return;
  }
  for (size_t d = 0; d < rank; ++d)
    if (slice[d].second == 0) return;
  std::vector<int64_t> stride(rank, 1);
  for (size_t d = rank - 1; d > 0; --d) stride[d - 1] = stride[d] * full[d];
  std::vector<int64_t> idx(rank, 0);  // over the leading rank-1 dims
  const int64_t row = slice[rank - 1].second;
  int64_t done = 0;
  while (true) {
    int64_t off = slice[rank - 1].first;
    for (size_t d = 0; d + 1 < rank; ++d) off += (slice[d].first + idx[d]) * stride[d];
    fn(off, done, row);
    done += row;
    int64_t d = static_cast<int64_t>(rank) - 2;
    for (; d >= 0; --d) {
      if (++idx[d] < slice[d].second) break;
      idx[d] = 0;
    }
    if (d < 0) break;
  }
}

} // namespace

void take_slice(const float *whole, const std::vector<int64_t> &full, const Slice &slice, float *dst) {
  for_each_row(full, slice, [&](int64_t off, int64_t at, int64_t n) { std::memcpy(dst + at, whole + off, sizeof(float) * n); });
}

void paste_slice(const float *src, const std::vector<int64_t> &full, const Slice &slice, float *whole) {
  for_each_row(full, slice, [&](int64_t off, int64_t at, int64_t n) { std::memcpy(whole + off, src + at, sizeof(float) * n); });
}

} // namespace parallora::rt
