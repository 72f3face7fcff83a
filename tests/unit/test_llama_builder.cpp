//===- test_llama_builder.cpp - models/llama_builder on tiny configs -------===//
//
// Builds tiny LLaMA graphs (GQA 4 q heads / 2 kv heads, tied and untied, with and without
// llama3 rope scaling, static and dynamic shapes) and checks them against the contract in
// docs/ir.md: op counts, param names and shapes, parameter count, layer tags, locations.
// Set PARALLORA_PRINT_IR=1 to print the 1-layer module (the example in docs/ir.md).
//
//===----------------------------------------------------------------------===//
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "frontend/hf_config.h"
#include "ir/Dialect.h"
#include "models/llama_builder.h"
#include "passes/lora/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace parallora;

namespace {

constexpr int64_t kDyn = ShapedType::kDynamic;

/// V=128, D=32, I=64, L=2, 4 query heads / 2 kv heads of 8: GQA with group size 2.
LlamaConfig tiny(bool tied = false, bool llama3_rope = false) {
  LlamaConfig c;
  c.vocab_size = 128;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = tied;
  if (llama3_rope) c.rope_scaling = RopeScaling{"llama3", 32.0, 1.0, 4.0, 128};
  return c;
}

// Hand-computed parameter counts of tiny():
//   per layer: q 32*32 + k 16*32 + v 16*32 + o 32*32 + gate/up/down 3*32*64 + 2 norms 2*32 = 9280
//   total: embed 128*32 + 2 layers + final norm 32 (+ lm_head 128*32 unless tied)
constexpr int64_t kTinyUntiedParams = 4096 + 2 * 9280 + 32 + 4096;  // 26784
constexpr int64_t kTinyTiedParams = 4096 + 2 * 9280 + 32;            // 22688

struct Built {
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module;
  func::FuncOp forward;
  std::map<std::string, int> counts;                   // op name -> count in @forward
  std::map<std::string, std::vector<int64_t>> params;  // param name -> shape
  std::map<std::string, pl::ParamOp> param_ops;

  Built(const LlamaConfig &c, int64_t batch, int64_t seq) {
    module = build_llama_module(ctx, c, batch, seq);
    if (!module) return;
    forward = module->lookupSymbol<func::FuncOp>("forward");
    forward.walk([&](Operation *op) {
      if (op != forward.getOperation()) ++counts[op->getName().getStringRef().str()];
      if (auto p = dyn_cast<pl::ParamOp>(op)) {
        auto t = p.getType().cast<RankedTensorType>();
        params[p.getName().str()] = std::vector<int64_t>(t.getShape().begin(), t.getShape().end());
        param_ops[p.getName().str()] = p;
      }
    });
  }
  int count(const std::string &op) const { return counts.count(op) ? counts.at(op) : 0; }
  int64_t param_elements() const {
    int64_t n = 0;
    for (auto &[name, shape] : params) {
      int64_t e = 1;
      for (int64_t d : shape) e *= d;
      n += e;
    }
    return n;
  }
};

using Shape = std::vector<int64_t>;

TEST(LlamaBuilder, UntiedStaticShapesVerifyAndCountOps) {
  Built m(tiny(), 2, 8);
  ASSERT_TRUE(m.module);
  ASSERT_TRUE(succeeded(verify(*m.module)));
  const int L = 2;
  EXPECT_EQ(m.count("pl.linear"), 7 * L + 1);
  EXPECT_EQ(m.count("pl.rms_norm"), 2 * L + 1);
  EXPECT_EQ(m.count("pl.attention"), L);
  EXPECT_EQ(m.count("pl.rope"), 2 * L);
  EXPECT_EQ(m.count("pl.embedding"), 1);
  EXPECT_EQ(m.count("pl.swiglu"), L);
  EXPECT_EQ(m.count("pl.add"), 2 * L);
  EXPECT_EQ(m.count("pl.reshape"), 4 * L);
  EXPECT_EQ(m.count("pl.transpose"), 4 * L);
  EXPECT_EQ(m.count("pl.param"), 1 + 9 * L + 2);  // embed, 2 norms + 7 linears per layer, norm, head
  EXPECT_EQ(m.count("func.return"), 1);
  EXPECT_EQ(m.count("pl.lora_linear"), 0);

  auto ft = m.forward.getFunctionType();
  EXPECT_EQ(ft.getInput(0), RankedTensorType::get({2, 8}, IntegerType::get(&m.ctx, 64)));
  EXPECT_EQ(ft.getResult(0), RankedTensorType::get({2, 8, 128}, Float32Type::get(&m.ctx)));
}

TEST(LlamaBuilder, ParamNamesShapesAndInit) {
  Built m(tiny(), 2, 8);
  ASSERT_TRUE(m.module);
  EXPECT_EQ(m.params["model.embed_tokens.weight"], (Shape{128, 32}));
  EXPECT_EQ(m.params["model.norm.weight"], (Shape{32}));
  EXPECT_EQ(m.params["lm_head.weight"], (Shape{128, 32}));
  for (int i = 0; i < 2; ++i) {
    std::string p = "model.layers." + std::to_string(i);
    EXPECT_EQ(m.params[p + ".input_layernorm.weight"], (Shape{32}));
    EXPECT_EQ(m.params[p + ".post_attention_layernorm.weight"], (Shape{32}));
    EXPECT_EQ(m.params[p + ".self_attn.q_proj.weight"], (Shape{32, 32}));  // Hq*Dh x D
    EXPECT_EQ(m.params[p + ".self_attn.k_proj.weight"], (Shape{16, 32}));  // Hkv*Dh x D
    EXPECT_EQ(m.params[p + ".self_attn.v_proj.weight"], (Shape{16, 32}));
    EXPECT_EQ(m.params[p + ".self_attn.o_proj.weight"], (Shape{32, 32}));
    EXPECT_EQ(m.params[p + ".mlp.gate_proj.weight"], (Shape{64, 32}));
    EXPECT_EQ(m.params[p + ".mlp.up_proj.weight"], (Shape{64, 32}));
    EXPECT_EQ(m.params[p + ".mlp.down_proj.weight"], (Shape{32, 64}));
  }
  EXPECT_EQ(m.params.size(), 21u);
  EXPECT_EQ(m.param_ops["model.layers.0.self_attn.q_proj.weight"].getInit(), "normal(0.0,0.02)");
  EXPECT_EQ(m.param_ops["model.embed_tokens.weight"].getInit(), "normal(0.0,0.02)");
  EXPECT_EQ(m.param_ops["model.norm.weight"].getInit(), "ones");
  for (auto &[name, p] : m.param_ops) EXPECT_FALSE(p.getTrainable()) << name << " is a base weight";
}

TEST(LlamaBuilder, ParameterCountMatchesConfigAndHandFormula) {
  Built untied(tiny(false), 2, 8);
  Built tied(tiny(true), 2, 8);
  ASSERT_TRUE(untied.module && tied.module);
  EXPECT_EQ(untied.param_elements(), kTinyUntiedParams);
  EXPECT_EQ(tiny(false).num_parameters(), kTinyUntiedParams);
  EXPECT_EQ(tied.param_elements(), kTinyTiedParams);
  EXPECT_EQ(tiny(true).num_parameters(), kTinyTiedParams);

  LlamaConfig biased = tiny();
  biased.attention_bias = biased.mlp_bias = true;
  Built b(biased, 2, 8);
  ASSERT_TRUE(b.module);
  ASSERT_TRUE(succeeded(verify(*b.module)));
  EXPECT_EQ(b.params["model.layers.1.self_attn.k_proj.bias"], (Shape{16}));
  EXPECT_EQ(b.params["model.layers.1.mlp.down_proj.bias"], (Shape{32}));
  EXPECT_EQ(b.param_ops["model.layers.1.mlp.down_proj.bias"].getInit(), "zeros");
  // biases per layer: q 32 + k 16 + v 16 + o 32 + gate 64 + up 64 + down 32 = 256
  EXPECT_EQ(b.param_elements(), kTinyUntiedParams + 2 * 256);
  EXPECT_EQ(b.param_elements(), biased.num_parameters());
}

TEST(LlamaBuilder, TiedEmbeddingIsOneParamUsedTwice) {
  Built m(tiny(true), 2, 8);
  ASSERT_TRUE(m.module);
  ASSERT_TRUE(succeeded(verify(*m.module)));
  EXPECT_EQ(m.params.count("lm_head.weight"), 0u);
  EXPECT_EQ(m.count("pl.param"), 1 + 9 * 2 + 1);
  pl::ParamOp e = m.param_ops["model.embed_tokens.weight"];
  ASSERT_TRUE(e);
  std::vector<Operation *> users(e->getUsers().begin(), e->getUsers().end());
  ASSERT_EQ(users.size(), 2u);
  EXPECT_TRUE(llvm::any_of(users, [](Operation *u) { return isa<pl::EmbeddingOp>(u); }));
  // The head: the linear whose result is returned.
  auto head = m.forward.getBody().front().getTerminator()->getOperand(0).getDefiningOp<pl::LinearOp>();
  ASSERT_TRUE(head);
  EXPECT_EQ(head.getWeight(), e.getResult());
  auto attr = m.module->getOperation()->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  EXPECT_EQ(attr.getAs<BoolAttr>("tie_word_embeddings").getValue(), true);
}

TEST(LlamaBuilder, RopeScalingOnlyWithLlama3Config) {
  Built plain(tiny(), 2, 8);
  Built scaled(tiny(false, true), 2, 8);
  ASSERT_TRUE(plain.module && scaled.module);
  ASSERT_TRUE(succeeded(verify(*scaled.module)));
  plain.forward.walk([](pl::RopeOp r) {
    EXPECT_FALSE(r.getRopeScaling().has_value());
    EXPECT_EQ(r.getTheta().convertToDouble(), 500000.0);
  });
  int n = 0;
  scaled.forward.walk([&](pl::RopeOp r) {
    ++n;
    ASSERT_TRUE(r.getRopeScaling().has_value());
    DictionaryAttr d = *r.getRopeScaling();
    EXPECT_EQ(d.size(), 4u);
    EXPECT_EQ(d.getAs<FloatAttr>("factor").getValueAsDouble(), 32.0);
    EXPECT_EQ(d.getAs<FloatAttr>("low_freq_factor").getValueAsDouble(), 1.0);
    EXPECT_EQ(d.getAs<FloatAttr>("high_freq_factor").getValueAsDouble(), 4.0);
    EXPECT_EQ(d.getAs<IntegerAttr>("original_max_position_embeddings").getInt(), 128);
  });
  EXPECT_EQ(n, 4);
}

TEST(LlamaBuilder, DynamicBatchAndSeq) {
  Built m(tiny(), kDyn, kDyn);
  ASSERT_TRUE(m.module);
  ASSERT_TRUE(succeeded(verify(*m.module)));
  auto ft = m.forward.getFunctionType();
  EXPECT_EQ(ft.getInput(0), RankedTensorType::get({kDyn, kDyn}, IntegerType::get(&m.ctx, 64)));
  EXPECT_EQ(ft.getResult(0), RankedTensorType::get({kDyn, kDyn, 128}, Float32Type::get(&m.ctx)));
  m.forward.walk([](pl::AttentionOp a) {
    EXPECT_EQ(a.getType().cast<RankedTensorType>().getShape(), (llvm::ArrayRef<int64_t>{kDyn, 4, kDyn, 8}));
    EXPECT_TRUE(a.getCausal());
    EXPECT_DOUBLE_EQ(a.getScale().convertToDouble(), 1.0 / std::sqrt(8.0));
  });
  Built half(tiny(), kDyn, 16);
  ASSERT_TRUE(half.module);
  EXPECT_EQ(half.forward.getFunctionType().getInput(0),
            RankedTensorType::get({kDyn, 16}, IntegerType::get(&half.ctx, 64)));
}

TEST(LlamaBuilder, LayerTagsLocationsAndParamPlacement) {
  Built m(tiny(), 2, 8);
  ASSERT_TRUE(m.module);
  Block &body = m.forward.getBody().front();
  for (Operation &op : body) {
    auto loc = op.getLoc().dyn_cast<NameLoc>();
    EXPECT_TRUE(loc) << op.getName().getStringRef().str() << " has no NameLoc";
    if (isa<func::ReturnOp>(op)) continue;
    auto layer = op.getAttrOfType<IntegerAttr>(pl::kLayerAttr);
    ASSERT_TRUE(layer) << op.getName().getStringRef().str() << " has no pl.layer";
    std::string path = loc ? loc.getName().str() : "";
    if (path.rfind("model.layers.", 0) == 0)
      EXPECT_EQ(layer.getInt(), std::stoi(path.substr(13))) << path;
    else
      EXPECT_EQ(layer.getInt(), -1) << path;
    // Each param is emitted right before its first use (only other params in between).
    if (auto p = dyn_cast<pl::ParamOp>(op)) {
      Operation *next = op.getNextNode();
      while (next && isa<pl::ParamOp>(next)) next = next->getNextNode();
      ASSERT_TRUE(next);
      EXPECT_TRUE(llvm::is_contained(next->getOperands(), p.getResult())) << p.getName().str();
      EXPECT_EQ(path + ".weight", p.getName().str());
    }
    if (auto l = dyn_cast<pl::LinearOp>(op)) {
      if (path != "lm_head") EXPECT_EQ(path + ".weight", l.getWeight().getDefiningOp<pl::ParamOp>().getName().str());
    }
  }
  auto model = m.module->getOperation()->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  ASSERT_TRUE(model);
  EXPECT_EQ(model.size(), 11u);
  EXPECT_EQ(model.getAs<IntegerAttr>("num_key_value_heads").getInt(), 2);
  EXPECT_EQ(model.getAs<IntegerAttr>("head_dim").getInt(), 8);
  EXPECT_EQ(model.getAs<FloatAttr>("rms_norm_eps").getValueAsDouble(), 1e-5);
  EXPECT_EQ(model.getAs<IntegerAttr>("max_position_embeddings").getInt(), 256);
}

TEST(LlamaBuilder, RejectsInconsistentConfig) {
  LlamaConfig c = tiny();
  c.num_key_value_heads = 3;
  MLIRContext ctx;
  std::string msg;
  ScopedDiagnosticHandler h(&ctx, [&](Diagnostic &d) { msg = d.str(); return success(); });
  EXPECT_FALSE(build_llama_module(ctx, c, 2, 8));
  EXPECT_NE(msg.find("num_key_value_heads = 3"), std::string::npos) << msg;
}

TEST(LlamaBuilder, LoraPipelineOnBuiltModel) {
  Built m(tiny(), 2, 8);
  ASSERT_TRUE(m.module);
  PassManager pm(&m.ctx);
  InjectLoraOptions o;
  o.rank = 4;
  o.alpha = 8;
  buildLoraPassPipeline(pm, o);
  ASSERT_TRUE(succeeded(pm.run(*m.module)));
  ASSERT_TRUE(succeeded(verify(*m.module)));
  int lora = 0, trainable = 0;
  m.module->walk([&](pl::LoraLinearOp l) {
    ++lora;
    EXPECT_EQ(l.getScaling().convertToDouble(), 2.0);
  });
  m.module->walk([&](pl::ParamOp p) { trainable += p.getTrainable(); });
  EXPECT_EQ(lora, 4);       // q_proj and v_proj of 2 layers
  EXPECT_EQ(trainable, 8);  // A and B of each
}

TEST(LlamaBuilder, PrintOneLayerModel) {
  LlamaConfig c = tiny();
  c.num_hidden_layers = 1;
  Built m(c, 2, 8);
  ASSERT_TRUE(m.module);
  ASSERT_TRUE(succeeded(verify(*m.module)));
  if (std::getenv("PARALLORA_PRINT_IR")) {
    m.module->print(llvm::outs());
    llvm::outs().flush();
  }
}

} // namespace
