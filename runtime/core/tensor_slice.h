//===- tensor_slice.h - copy a tensor-parallel slice out of / into a whole tensor ---===//
//
// A slice is one [start, size] per dim of a row-major f32 tensor of shape `full` (plan::Buffer::
// slice). Used to load sharded parameters (executor), to assemble whole adapters from the ranks'
// shards and to split an --init-adapter into shards (lora-run).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace parallora::rt {

using Slice = std::vector<std::pair<int64_t, int64_t>>;

/// dst (the slice's elements, row-major) = the slice of `whole`.
void take_slice(const float *whole, const std::vector<int64_t> &full, const Slice &slice, float *dst);
/// The slice of `whole` = src (the slice's elements, row-major).
void paste_slice(const float *src, const std::vector<int64_t> &full, const Slice &slice, float *whole);

} // namespace parallora::rt
