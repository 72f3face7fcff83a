//===- param_roles.cpp - HF names, layers and config from graph structure -===//
#include "frontend/onnx/param_roles.h"

#include <map>
#include <set>

#include "ir/Dialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

using namespace mlir;

namespace parallora {
namespace {

Operation *def(Value v) { return v ? v.getDefiningOp() : nullptr; }
template <typename OpT> OpT def_as(Value v) { return llvm::dyn_cast_or_null<OpT>(def(v)); }

// Follows transpose/reshape/rope producers back to the projection (linear or lora_linear).
Operation *projection_of(Value v) {
  while (Operation *op = def(v)) {
    if (isa<pl::RopeOp, pl::TransposeOp, pl::ReshapeOp>(op)) { v = op->getOperand(0); continue; }
    if (isa<pl::LinearOp, pl::LoraLinearOp>(op)) return op;
    return nullptr;
  }
  return nullptr;
}
// The single user of `v` of type OpT following transpose/reshape users.
Operation *user_through_layout(Value v, llvm::function_ref<bool(Operation *)> want) {
  for (int hops = 0; hops < 4; ++hops) {
    Operation *next = nullptr;
    for (Operation *u : v.getUsers()) {
      if (want(u)) return u;
      if (isa<pl::TransposeOp, pl::ReshapeOp>(u)) next = u;
    }
    if (!next) return nullptr;
    v = next->getResult(0);
  }
  return nullptr;
}

class RoleNamer {
public:
  explicit RoleNamer(ModuleOp m) : b_(m.getContext()), module_(m) {}

  void name_projection(Operation *op, const std::string &module_path, int64_t layer) {
    if (!op) return;
    set_param(op->getOperand(1), module_path + ".weight");
    if (auto lora = dyn_cast<pl::LoraLinearOp>(op)) {
      lora.setModuleAttr(b_.getStringAttr(module_path));
      set_param(lora.getLoraA(), module_path + ".lora_A.weight", true);
      set_param(lora.getLoraB(), module_path + ".lora_B.weight", true);
      lora_modules_.push_back(module_path);
    }
    if (layer >= -1) layer_start_[op] = layer;
  }
  void set_param(Value v, const std::string &name, bool trainable = false) {
    auto p = def_as<pl::ParamOp>(v);
    if (!p) return;
    p.setNameAttr(b_.getStringAttr(name));
    if (trainable) {
      p.setTrainableAttr(b_.getUnitAttr());
      p.setInitAttr(b_.getStringAttr("checkpoint"));
    }
  }

  LogicalResult run(std::vector<std::string> &lora_modules) {
    auto func = module_.lookupSymbol<func::FuncOp>("forward");
    SmallVector<pl::AttentionOp> attns;
    func.walk([&](pl::AttentionOp a) { attns.push_back(a); });
    std::map<std::string, Attribute> config;
    int64_t layer = 0;
    for (pl::AttentionOp a : attns) {
      std::string pre = "model.layers." + std::to_string(layer);
      Operation *q = projection_of(a.getQuery()), *k = projection_of(a.getKey()), *v = projection_of(a.getValue());
      name_projection(q, pre + ".self_attn.q_proj", -2);
      name_projection(k, pre + ".self_attn.k_proj", -2);
      name_projection(v, pre + ".self_attn.v_proj", -2);
      if (q) if (auto norm = def_as<pl::RMSNormOp>(q->getOperand(0))) {
        set_param(norm.getWeight(), pre + ".input_layernorm.weight");
        layer_start_[norm] = layer;
        config["rms_norm_eps"] = norm.getEpsAttr();
      }
      Operation *o = user_through_layout(a.getResult(), [](Operation *u) { return isa<pl::LinearOp, pl::LoraLinearOp>(u); });
      name_projection(o, pre + ".self_attn.o_proj", -2);
      if (o) {
        for (Operation *add : o->getResult(0).getUsers()) {
          if (!isa<pl::AddOp>(add)) continue;
          for (Operation *u : add->getResult(0).getUsers()) {
            auto norm = dyn_cast<pl::RMSNormOp>(u);
            if (!norm) continue;
            set_param(norm.getWeight(), pre + ".post_attention_layernorm.weight");
            for (Operation *g : norm.getResult().getUsers()) {
              for (Operation *sw : g->getResult(0).getUsers()) {
                auto swiglu = dyn_cast<pl::SwigluOp>(sw);
                if (!swiglu) continue;
                name_projection(def(swiglu.getGate()), pre + ".mlp.gate_proj", -2);
                name_projection(def(swiglu.getUp()), pre + ".mlp.up_proj", -2);
                if (auto gate = def(swiglu.getGate()))
                  config["intermediate_size"] = b_.getI64IntegerAttr(gate->getResult(0).getType().cast<RankedTensorType>().getShape().back());
                for (Operation *d : swiglu.getResult().getUsers())
                  if (isa<pl::LinearOp, pl::LoraLinearOp>(d)) name_projection(d, pre + ".mlp.down_proj", -2);
                break;
              }
            }
          }
        }
      }
      if (layer == 0) {
        auto qt = a.getQuery().getType().cast<RankedTensorType>(), kt = a.getKey().getType().cast<RankedTensorType>();
        config["num_attention_heads"] = b_.getI64IntegerAttr(qt.getShape()[1]);
        config["num_key_value_heads"] = b_.getI64IntegerAttr(kt.getShape()[1]);
        config["head_dim"] = b_.getI64IntegerAttr(qt.getShape()[3]);
        if (auto rope = def_as<pl::RopeOp>(a.getQuery())) config["rope_theta"] = rope.getThetaAttr();
      }
      ++layer;
    }
    config["num_hidden_layers"] = b_.getI64IntegerAttr(layer);

    // Embedding, final norm, head.
    pl::ParamOp embed;
    func.walk([&](pl::EmbeddingOp e) {
      if (embed) return;
      embed = def_as<pl::ParamOp>(e.getTable());
      set_param(e.getTable(), "model.embed_tokens.weight");
      auto tt = e.getTable().getType().cast<RankedTensorType>();
      config["vocab_size"] = b_.getI64IntegerAttr(tt.getShape()[0]);
      config["hidden_size"] = b_.getI64IntegerAttr(tt.getShape()[1]);
    });
    bool tied = false;
    auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
    if (ret.getNumOperands() == 1) {
      if (auto head = def_as<pl::LinearOp>(ret.getOperand(0))) {
        auto hp = def_as<pl::ParamOp>(head.getWeight());
        if (hp && embed && hp->getAttr("pl.source") == embed->getAttr("pl.source") &&
            hp->getAttr("pl.source_perm") == embed->getAttr("pl.source_perm") && hp != embed) {
          head.getWeightMutable().assign(embed.getResult());
          hp.erase();
          tied = true;
        } else {
          set_param(head.getWeight(), "lm_head.weight");
        }
        head_ = head;
        if (auto norm = def_as<pl::RMSNormOp>(head.getInput())) {
          set_param(norm.getWeight(), "model.norm.weight");
          final_norm_ = norm;
        }
      }
    }
    config["tie_word_embeddings"] = b_.getBoolAttr(tied);

    // pl.layer: walk in program order; an input_layernorm opens its layer, the final norm
    // closes the last one. Parameters take the layer of their first user.
    int64_t current = -1;
    for (Operation &op : func.getBody().front()) {
      if (auto it = layer_start_.find(&op); it != layer_start_.end() && it->second >= 0) current = it->second;
      if (&op == final_norm_) current = -1;
      if (isa<pl::ParamOp>(op) || isa<func::ReturnOp>(op)) continue;
      op.setAttr(pl::kLayerAttr, b_.getI64IntegerAttr(current));
    }
    for (Operation &op : func.getBody().front()) {
      if (!isa<pl::ParamOp>(op)) continue;
      int64_t l = -1;
      for (Operation *u : op.getResult(0).getUsers())
        if (auto a = u->getAttrOfType<IntegerAttr>(pl::kLayerAttr)) { l = a.getInt(); break; }
      op.setAttr(pl::kLayerAttr, b_.getI64IntegerAttr(l));
    }
    // Unique names: a parameter no role claimed keeps its ONNX name.
    std::set<std::string> seen;
    bool dup = false;
    func.walk([&](pl::ParamOp p) {
      if (!seen.insert(p.getName().str()).second) {
        p.emitError() << "two parameters are named '" << p.getName() << "' after role naming";
        dup = true;
      }
    });
    if (dup) return failure();
    SmallVector<NamedAttribute> entries;
    for (auto &[k, v] : config) entries.push_back(b_.getNamedAttr(k, v));
    module_->setAttr(pl::kModelAttr, b_.getDictionaryAttr(entries));
    lora_modules = lora_modules_;
    return success();
  }

private:
  OpBuilder b_;
  ModuleOp module_;
  std::map<Operation *, int64_t> layer_start_;
  std::vector<std::string> lora_modules_;
  Operation *final_norm_ = nullptr;
  Operation *head_ = nullptr;
};

} // namespace

LogicalResult name_params_by_role(ModuleOp module, std::vector<std::string> &lora_modules) {
  return RoleNamer(module).run(lora_modules);
}

} // namespace parallora
