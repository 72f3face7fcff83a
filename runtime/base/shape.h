//===- shape.h - tensor shapes as users read them ---------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace parallora {

/// "2x3x4"; "scalar" for rank 0. The spelling of shapes in runtime and plan messages.
inline std::string shape_str(const std::vector<int64_t> &shape) {
  if (shape.empty()) return "scalar";
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

/// Product of the dimensions (1 for a scalar).
inline int64_t shape_numel(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

} // namespace parallora
