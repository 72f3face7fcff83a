//===- comm_impl.h - helpers shared by the communicators (private) ---------===//
#pragma once

#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora::rt::comm_detail {

/// Axis bits of a group: dp = 1, tp = 2, pp = 4.
enum : unsigned { kDp = 1u, kTp = 2u, kPp = 4u };

/// Parses "dp,tp" (axes among dp, tp, pp; spaces ignored; "" = no axis) into axis bits. An
/// unknown or repeated axis is an error naming it.
StatusOr<unsigned> parse_group(const std::string &group);

/// "dp,tp" for the bits (dp,tp,pp order); "" for none.
std::string group_name(unsigned axes);

/// Product of the sizes of the axes in `axes`.
int group_size(const plan::Mesh &mesh, unsigned axes);

/// World ranks sharing `rank`'s coordinates on every axis not in `axes`, ascending.
std::vector<int> group_members(const plan::Mesh &mesh, int rank, unsigned axes);

/// "0,1,2" (at most 16 listed, then "...").
std::string rank_list(const std::vector<int> &ranks);

/// "%g" of a duration in seconds.
std::string seconds_str(double s);

} // namespace parallora::rt::comm_detail
