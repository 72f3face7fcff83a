//===- lower_hparams.cpp - model config and AdamW hyperparameters ----------===//
//
// The plan carries the model's config.json (rebuilt from pl.model) and the optimizer's
// hyperparameters and LR schedule (pl.train, written by --adamw).
//
//===----------------------------------------------------------------------===//
#include "passes/lower/lowering.h"

#include <nlohmann/json.hpp>

namespace parallora::lowering {

LogicalResult Lowering::read_model(plan::Plan &p) {
  auto model = module_->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  if (!model) return module_.emitError("lower: module has no pl.model attribute"), failure();
  nlohmann::json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  for (NamedAttribute a : model) {
    std::string k = a.getName().str();
    if (auto i = a.getValue().dyn_cast<IntegerAttr>()) {
      if (i.getType().isInteger(1)) j[k] = i.getValue().getBoolValue();
      else j[k] = i.getInt();
    } else if (auto f = a.getValue().dyn_cast<FloatAttr>()) j[k] = f.getValueAsDouble();
    else if (auto b = a.getValue().dyn_cast<BoolAttr>()) j[k] = b.getValue();
    else if (auto s = a.getValue().dyn_cast<StringAttr>()) j[k] = s.str();
  }
  if (j.contains("vocab_size")) p.vocab_size = j["vocab_size"].get<int64_t>();
  p.model_config_json = j.dump(2);
  return success();
}

LogicalResult Lowering::read_hparams(plan::Plan &p) {
  auto hp = module_->getAttrOfType<DictionaryAttr>(kTrainAttr);
  if (!hp) return module_.emitError("lower: module has no pl.train attribute (run --adamw)"), failure();
  auto f = [&](const char *k, double d) { return hp.get(k) ? attr_f64(hp.get(k)) : d; };
  p.hparams.lr = f("lr", p.hparams.lr);
  p.hparams.warmup_steps = static_cast<int64_t>(f("warmup_steps", 0));
  p.hparams.min_lr_ratio = f("min_lr_ratio", 0);
  p.hparams.total_steps = static_cast<int64_t>(f("total_steps", 0));
  p.hparams.weight_decay = f("weight_decay", 0);
  p.hparams.beta1 = f("beta1", 0.9);
  p.hparams.beta2 = f("beta2", 0.999);
  p.hparams.eps = f("eps", 1e-8);
  p.hparams.max_grad_norm = f("max_grad_norm", 1.0);
  if (auto s = hp.getAs<StringAttr>("schedule")) p.hparams.schedule = s.str();
  return success();
}

} // namespace parallora::lowering
