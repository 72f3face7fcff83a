//===- graph_dot.cpp - Graphviz picture of a `pl` module ------------------===//
#include "tools/lora-compile/graph_dot.h"

#include <map>
#include <string>
#include <vector>

#include "ir/Dialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"

using namespace mlir;

namespace parallora {
namespace {
std::string type_str(Type t) {
  auto rt = t.dyn_cast<RankedTensorType>();
  if (!rt) return "";
  std::string s;
  for (int64_t d : rt.getShape()) s += (s.empty() ? "" : "x") + (ShapedType::isDynamic(d) ? std::string("?") : std::to_string(d));
  return s;
}
std::string escape(const std::string &s) {
  std::string r;
  for (char c : s) { if (c == '"' || c == '\\') r += '\\'; r += c; }
  return r;
}
} // namespace

void write_graph_dot(ModuleOp module, std::ostream &os) {
  auto func = module.lookupSymbol<func::FuncOp>("forward");
  os << "digraph pl {\n  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\", fontsize=10];\n"
     << "  edge [fontname=\"Helvetica\", fontsize=8, color=\"#666666\"];\n";
  std::map<Operation *, std::string> ids;
  std::map<int64_t, std::vector<Operation *>> by_layer;
  int next = 0;
  for (Operation &op : func.getBody().front()) {
    ids[&op] = "n" + std::to_string(next++);
    int64_t layer = -1;
    if (auto a = op.getAttrOfType<IntegerAttr>(pl::kLayerAttr)) layer = a.getInt();
    by_layer[layer].push_back(&op);
  }
  os << "  input [label=\"input_ids\", shape=oval, fillcolor=\"#ffffff\"];\n";
  for (auto &[layer, ops] : by_layer) {
    if (layer >= 0)
      os << "  subgraph cluster_layer" << layer << " {\n    label=\"decoder layer " << layer
         << "\"; style=\"rounded\"; color=\"#8899bb\";\n";
    for (Operation *op : ops) {
      std::string label, fill = "#eef3fb", shape = "box";
      if (auto p = dyn_cast<pl::ParamOp>(op)) {
        std::string name = p.getName().str();
        label = name.substr(name.rfind('.', name.size() - 8) + 1) + "\\n" + type_str(p.getType());
        fill = p.getTrainable() ? "#c8f0c8" : "#f2f2f2";
        shape = "note";
      } else if (isa<func::ReturnOp>(op)) {
        label = "logits";
        shape = "oval";
        fill = "#ffffff";
      } else if (auto l = dyn_cast<pl::LoraLinearOp>(op)) {
        label = "lora_linear r=" + std::to_string(l.getRank()) + "\\n" + escape(l.getModule().str());
        fill = "#c8f0c8";
      } else {
        label = op->getName().stripDialect().str();
        if (auto loc = op->getLoc().dyn_cast<NameLoc>()) label += "\\n" + escape(loc.getName().str());
        if (auto g = dyn_cast<pl::GenericOp>(op)) { label = "onnx." + g.getOpType().str(); fill = "#fde2c8"; }
        if (isa<pl::AttentionOp>(op)) fill = "#fff1b8";
      }
      os << (layer >= 0 ? "    " : "  ") << ids[op] << " [label=\"" << label << "\", shape=" << shape
         << ", fillcolor=\"" << fill << "\"];\n";
    }
    if (layer >= 0) os << "  }\n";
  }
  for (Operation &op : func.getBody().front()) {
    for (Value v : op.getOperands()) {
      std::string src = v.getDefiningOp() ? ids[v.getDefiningOp()] : "input";
      os << "  " << src << " -> " << ids[&op] << " [label=\"" << type_str(v.getType()) << "\"];\n";
    }
  }
  os << "}\n";
}

} // namespace parallora
