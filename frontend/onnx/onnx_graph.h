//===- onnx_graph.h - an ONNX model loaded, shape-inferred and folded -----===//
//
// Loading is the half of ONNX import that needs no MLIR:
//   1. parse the ModelProto (size- and truncation-checked), memory-map external data
//      (`location`/`offset`/`length` relative to the model file, bounds-checked);
//   2. fix symbolic input dims (the graph's own, or --batch/--seq-len);
//   3. infer every value's type and shape and fold every node whose inputs are constant
//      (the exporter's Shape/Range/Where/... subgraphs, the causal mask, RoPE's cos/sin).
// A transpose of a weight is folded lazily (a permuted view of the initializer) so a 1B
// model's weights are never copied at import.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "frontend/onnx/host_tensor.h"
#include "runtime/base/status.h"

namespace onnx {
class ModelProto;
class NodeProto;
class AttributeProto;
} // namespace onnx

namespace parallora::onnx_import {

struct LoadOptions {
  int64_t batch = -1;   // value for a symbolic first input dim (-1: keep the graph's)
  int64_t seq_len = -1; // value for a symbolic second input dim
  int64_t micro_batches = 1;  // batch = --batch / micro_batches (names the flags in errors)
  /// Largest constant (elements) that folding may materialise.
  int64_t fold_limit = int64_t(1) << 24;
};

/// An initializer's bytes: inside the protobuf or in a memory-mapped external file.
struct Initializer {
  std::string name;
  int32_t type = 0;
  Shape shape;
  const uint8_t *data = nullptr;
  size_t nbytes = 0;
};

/// A compile-time constant: either materialised, or a permuted view of an initializer.
struct ConstValue {
  std::shared_ptr<const HostTensor> host;
  const Initializer *source = nullptr;
  std::vector<int64_t> perm; // result dim d = source dim perm[d]; empty = identity
  bool is_lazy() const { return host == nullptr; }
};

struct Node {
  const onnx::NodeProto *proto = nullptr;
  std::string name, op_type, domain;
  std::vector<std::string> inputs, outputs;
  int index = 0;
  /// "node 'name' (OpType)" for messages.
  std::string describe() const;
};

struct ValueInfo {
  int32_t type = 0;
  Shape shape;
  bool shape_known = false;
  std::optional<ConstValue> constant;
  const Node *producer = nullptr;
  std::vector<const Node *> users;
};

class OnnxGraph {
public:
  static StatusOr<std::unique_ptr<OnnxGraph>> load(const std::string &path,
                                                   const LoadOptions &options);
  ~OnnxGraph();

  const std::string &path() const { return path_; }
  const std::vector<Node> &nodes() const { return nodes_; }
  const std::vector<std::string> &inputs() const { return inputs_; }
  const std::vector<std::string> &outputs() const { return outputs_; }
  int64_t opset() const { return opset_; }
  int64_t fold_limit() const { return fold_limit_; }
  const ValueInfo *value(const std::string &name) const;
  const Node *producer(const std::string &name) const;
  bool is_const(const std::string &name) const;
  /// The constant's data, materialised (copies a lazy weight view).
  StatusOr<HostTensor> materialize(const std::string &name) const;
  StatusOr<HostTensor> materialize(const ConstValue &c, int32_t type, const Shape &shape) const;
  /// Scalar value of a constant with one element, if `name` is one.
  std::optional<double> scalar(const std::string &name) const;
  /// Attribute lookup on a node.
  const onnx::AttributeProto *attr(const Node &n, const std::string &name) const;
  int64_t attr_int(const Node &n, const std::string &name, int64_t dflt) const;
  std::vector<int64_t> attr_ints(const Node &n, const std::string &name) const;

  /// Runs `nodes` (a subgraph of layout ops) on host tensors bound to `bindings`; used to
  /// verify what a matched subgraph computes on a probe input.
  StatusOr<HostTensor> evaluate(const std::vector<const Node *> &nodes,
                                std::map<std::string, HostTensor> bindings,
                                const std::string &output) const;

private:
  OnnxGraph();
  Status parse(const std::string &path, const LoadOptions &options);
  Status infer_and_fold(const LoadOptions &options);

  std::string path_;
  std::unique_ptr<onnx::ModelProto> model_;
  std::vector<std::pair<void *, size_t>> mappings_;
  std::vector<std::unique_ptr<uint8_t[]>> owned_;
  std::vector<std::unique_ptr<Initializer>> initializers_;
  std::vector<Node> nodes_;
  std::map<std::string, ValueInfo> values_;
  std::vector<std::string> inputs_, outputs_;
  int64_t opset_ = 0;
  int64_t fold_limit_ = int64_t(1) << 24;
};

/// Result of evaluating one node: types, shapes and (when all inputs were constant) data.
struct EvalResult {
  int32_t type = 0;
  Shape shape;
  bool shape_known = false;
  std::optional<HostTensor> data;
};

/// One kernel per ONNX op for shapes and folding. `inputs[k]` is null for an absent optional
/// input; `data[k]` is null when that input is not a compile-time constant.
Status eval_onnx_node(const OnnxGraph &g, const Node &n,
                      const std::vector<const ValueInfo *> &inputs,
                      const std::vector<const HostTensor *> &data,
                      std::vector<EvalResult> &results);

} // namespace parallora::onnx_import
