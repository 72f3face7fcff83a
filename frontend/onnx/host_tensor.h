//===- host_tensor.h - small host tensors for import-time folding ---------===//
//
// The importer folds the exporter's shape subgraphs (Shape/Gather/Range/Where/...) and the
// position tables of RoPE on the host. Values are small, so they are stored widened: floats
// as double, integers and booleans as int64. Large weights are never copied into a
// HostTensor unless a fold needs them; see ConstValue in onnx_graph.h.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace parallora::onnx_import {

/// ONNX TensorProto data types we understand (values equal onnx::TensorProto_DataType).
enum OnnxType : int32_t {
  kUndefined = 0, kFloat = 1, kUint8 = 2, kInt8 = 3, kUint16 = 4, kInt16 = 5, kInt32 = 6,
  kInt64 = 7, kString = 8, kBool = 9, kFloat16 = 10, kDouble = 11, kUint32 = 12, kUint64 = 13,
  kBFloat16 = 16,
};
bool is_float_type(int32_t t);
bool is_int_type(int32_t t); // integers and bool
const char *onnx_type_name(int32_t t);

using Shape = std::vector<int64_t>; // -1 marks an unknown dim
int64_t numel(const Shape &s);
std::string shape_str(const Shape &s);

struct HostTensor {
  int32_t type = kFloat;
  Shape shape;
  std::vector<double> f;  // float types
  std::vector<int64_t> i; // integer and bool types

  bool is_float() const { return is_float_type(type); }
  int64_t size() const { return numel(shape); }
  double at_f(int64_t k) const { return is_float() ? f[k] : double(i[k]); }
  /// Element k as an integer. A float that is NaN, infinite or beyond int64 (an index no tensor
  /// has) becomes kBadIndex instead of an undefined conversion; callers range-check it.
  int64_t at_i(int64_t k) const {
    if (!is_float()) return i[k];
    const double v = f[k];
    return v >= -9.0e18 && v <= 9.0e18 ? int64_t(v) : kBadIndex;
  }
  static constexpr int64_t kBadIndex = -(int64_t(1) << 60);  // far out of range, no overflow when offset
  static HostTensor make(int32_t type, Shape shape);
  void set(int64_t k, double v); // stores into f or i according to type
};

} // namespace parallora::onnx_import
