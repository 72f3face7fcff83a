//===- inject_lora.cpp - --inject-lora: pl.linear -> pl.lora_linear --------===//
//
// Matches   %w = pl.param "<prefix>.<target>.weight" : (N, K)
//           %y = pl.linear %x, %w                      (no bias)
// and emits %A = pl.param "<prefix>.<target>.lora_A.weight" {trainable} : (r, K)
//           %B = pl.param "<prefix>.<target>.lora_B.weight" {trainable} : (N, r)
//           %y = pl.lora_linear %x, %w, %A, %B {rank, alpha, scaling, dropout, module}
// i.e. y = x W^T + scaling * (dropout(x) A^T) B^T with PEFT's key names and initialisation, so
// the adapters export to adapter_model.safetensors unchanged.
//
//===----------------------------------------------------------------------===//
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "ir/Dialect.h"
#include "passes/lora/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"

namespace parallora {
#define GEN_PASS_DEF_INJECTLORA
#include "passes/lora/Passes.h.inc"
} // namespace parallora

using namespace mlir;

namespace parallora {
namespace {

/// PEFT's kaiming_uniform_(a=math.sqrt(5)) for lora_A, spelled as weight_init.h parses it.
constexpr const char *kLoraAInit = "kaiming_uniform(a=2.23606797749979)";
constexpr const char *kAllLinear = "all-linear";

/// The HF module path of a linear ("model.layers.0.self_attn.q_proj"), from its weight param.
/// A head tied to the embedding reads the embedding's weight: its module is still "lm_head".
/// Empty when the weight is not a named param (nothing to name the adapter after).
std::string module_path(Value weight) {
  auto p = weight.getDefiningOp<pl::ParamOp>();
  if (!p) return "";
  if (llvm::any_of(weight.getUsers(), [](Operation *u) { return isa<pl::EmbeddingOp>(u); })) return "lm_head";
  StringRef name = p.getName();
  if (!name.consume_back(".weight")) return "";
  return name.str();
}

/// PEFT's target matching: the module path equals the target or ends with "." + target.
bool matches(StringRef path, StringRef target) {
  return path == target || path.endswith(("." + target).str());
}

/// 1.5, not 1.500000e+00: diagnostics repeat the value as the user wrote it.
std::string shortest(double v) {
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

class InjectLora : public impl::InjectLoraBase<InjectLora> {
public:
  using InjectLoraBase::InjectLoraBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    // Diagnostics about the options point at the first function, which has a source location.
    Operation *anchor = module;
    module.walk([&](func::FuncOp f) { anchor = f; return WalkResult::interrupt(); });

    if (rank <= 0) {
      anchor->emitError() << "inject-lora: rank = " << int64_t(rank) << " must be positive";
      return signalPassFailure();
    }
    if (!(dropout >= 0.0 && dropout < 1.0)) {
      anchor->emitError() << "inject-lora: dropout = " << shortest(dropout)
                          << " must be in [0, 1)";
      return signalPassFailure();
    }
    SmallVector<StringRef> targetList;
    StringRef(targets).split(targetList, ',', /*MaxSplit=*/-1, /*KeepEmpty=*/false);
    for (StringRef &t : targetList) t = t.trim();
    llvm::erase_if(targetList, [](StringRef t) { return t.empty(); });
    if (targetList.empty()) {
      anchor->emitError() << "inject-lora: targets = '" << std::string(targets) << "' names no module";
      return signalPassFailure();
    }
    const bool allLinear = llvm::is_contained(targetList, kAllLinear);

    // Which linears to rewrite; errors first, so a failing run leaves the IR untouched.
    SmallVector<std::pair<pl::LinearOp, std::string>> todo;
    std::set<std::string> leafNames;            // "q_proj", ... for the unknown-target message
    std::set<StringRef> matchedTargets;
    bool failed = false;
    module.walk([&](Operation *op) {
      std::string path;
      if (auto lin = dyn_cast<pl::LinearOp>(op)) path = module_path(lin.getWeight());
      else if (auto lora = dyn_cast<pl::LoraLinearOp>(op)) path = lora.getModule().str();
      else return;
      if (path.empty()) return;
      leafNames.insert(StringRef(path).rsplit('.').second.empty() ? path : StringRef(path).rsplit('.').second.str());

      bool selected = allLinear && path != "lm_head";
      for (StringRef t : targetList)
        if (t != kAllLinear && matches(path, t)) { selected = true; matchedTargets.insert(t); }
      if (!selected) return;
      if (isa<pl::LoraLinearOp>(op)) {
        // all-linear skips adapters that already exist; a named target must not hit one.
        if (allLinear && llvm::none_of(targetList, [&](StringRef t) { return t != kAllLinear && matches(path, t); }))
          return;
        op->emitError() << "inject-lora: '" << path << "' already has a LoRA adapter (pl.lora_linear); "
                        << "remove it from targets = '" << std::string(targets) << "'";
        failed = true;
        return;
      }
      auto lin = cast<pl::LinearOp>(op);
      if (lin.getBias()) {
        std::string bias = "its bias";
        if (auto bp = lin.getBias().getDefiningOp<pl::ParamOp>()) bias = "bias '" + bp.getName().str() + "'";
        lin.emitError() << "inject-lora: '" << path << "' has " << bias
                        << "; LoRA on a linear with bias is unsupported (pl.lora_linear has no bias operand)";
        failed = true;
        return;
      }
      todo.push_back({lin, path});
    });
    for (StringRef t : targetList) {
      if (t == kAllLinear || matchedTargets.count(t)) continue;
      anchor->emitError() << "inject-lora: target '" << t << "' matches no linear; the linear modules are: "
                          << llvm::join(leafNames, ", ");
      failed = true;
    }
    if (failed) return signalPassFailure();

    const double scaling = useRslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank);
    for (auto &[lin, path] : todo) rewrite(lin, path, scaling);
    freeze_base_params(module);
  }

private:
  void rewrite(pl::LinearOp lin, const std::string &path, double scaling) {
    OpBuilder b(lin);
    auto w = lin.getWeight().getType().cast<RankedTensorType>();  // (N, K)
    const int64_t N = w.getDimSize(0), K = w.getDimSize(1);
    Attribute layer = lin->getAttr(pl::kLayerAttr);
    auto adapterParam = [&](StringRef which, ArrayRef<int64_t> shape, StringRef init) {
      auto p = b.create<pl::ParamOp>(NameLoc::get(b.getStringAttr(path + "." + which.str())),
                                     RankedTensorType::get(shape, w.getElementType()),
                                     b.getStringAttr(path + "." + which.str() + ".weight"), b.getUnitAttr(),
                                     b.getStringAttr(init));
      if (layer) p->setAttr(pl::kLayerAttr, layer);
      return p.getResult();
    };
    Value A = adapterParam("lora_A", {rank, K}, kLoraAInit);  // (r, K)
    Value B = adapterParam("lora_B", {N, rank}, "zeros");     // (N, r): the adapter starts as a no-op
    auto lora = b.create<pl::LoraLinearOp>(lin.getLoc(), lin.getType(), lin.getInput(), lin.getWeight(), A, B,
                                           b.getI64IntegerAttr(rank), b.getF64FloatAttr(alpha),
                                           b.getF64FloatAttr(scaling), b.getF64FloatAttr(dropout),
                                           b.getStringAttr(path));
    // Keep discardable attributes (pl.layer, importer provenance).
    for (NamedAttribute a : lin->getAttrs())
      if (!lora->hasAttr(a.getName())) lora->setAttr(a.getName(), a.getValue());
    lin.replaceAllUsesWith(lora.getResult());
    lin.erase();
  }
};

} // namespace
} // namespace parallora
