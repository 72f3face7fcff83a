//===- llama_builder.cpp - LlamaConfig -> canonical `pl` IR ----------------===//
//
// Emits LlamaForCausalLM.forward op by op in Hugging Face's order (modeling_llama.py), so the
// printed IR reads like the PyTorch code. docs/ir.md states the contract; the ONNX importer
// raises HF exports to the same DAG and tests/unit/test_onnx_import.cpp compares the two.
//
//===----------------------------------------------------------------------===//
#include "models/llama_builder.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "ir/Dialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Diagnostics.h"
#include "llvm/ADT/Twine.h"

using namespace mlir;

namespace parallora {
namespace {

constexpr int64_t kOutsideLayers = -1;

/// "normal(0.0,0.02)": the init spec HF's _init_weights uses for Linear and Embedding weights.
std::string normal_init(double std) {
  // Shortest spelling that reads back exactly (Python's repr: 0.02, not 0.0200000000000000004).
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, std);
    if (std::strtod(buf, nullptr) == std) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return "normal(0.0," + s + ")";
}

class LlamaBuilder {
public:
  LlamaBuilder(MLIRContext &ctx, const LlamaConfig &c, int64_t batch, int64_t seq)
      : b_(&ctx), c_(c), B_(batch), T_(seq), f32_(b_.getF32Type()) {}

  OwningOpRef<ModuleOp> build() {
    OwningOpRef<ModuleOp> module = ModuleOp::create(loc("model"));
    (*module)->setAttr(pl::kModelAttr, model_attr());
    b_.setInsertionPointToEnd(module->getBody());

    auto ids_type = RankedTensorType::get({B_, T_}, b_.getI64Type());
    auto logits_type = tensor({B_, T_, c_.vocab_size});
    auto func = b_.create<func::FuncOp>(loc("model"), "forward", b_.getFunctionType({ids_type}, {logits_type}));
    b_.setInsertionPointToStart(func.addEntryBlock());

    const int64_t D = c_.hidden_size, V = c_.vocab_size;
    layer_ = kOutsideLayers;
    // (V, D) token embedding; also the LM head's weight when the embeddings are tied.
    Value embed_w = param("model.embed_tokens.weight", {V, D}, normal_init(c_.initializer_range));
    Value h = tag(b_.create<pl::EmbeddingOp>(loc("model.embed_tokens"), tensor({B_, T_, D}),
                                             func.getArgument(0), embed_w));
    for (int64_t i = 0; i < c_.num_hidden_layers; ++i) h = decoder_layer(i, h);

    layer_ = kOutsideLayers;
    Value n = rms_norm("model.norm", h);
    Value head_w = c_.tie_word_embeddings ? embed_w : param("lm_head.weight", {V, D}, normal_init(c_.initializer_range));
    Value logits = tag(b_.create<pl::LinearOp>(loc("lm_head"), logits_type, n, head_w, Value()));
    b_.create<func::ReturnOp>(loc("lm_head"), logits);
    return module;
  }

private:
  Location loc(const Twine &path) { return NameLoc::get(b_.getStringAttr(path)); }
  RankedTensorType tensor(ArrayRef<int64_t> shape) { return RankedTensorType::get(shape, f32_); }

  /// Tags `op` with the current layer and returns its result.
  Value tag(Operation *op) {
    op->setAttr(pl::kLayerAttr, b_.getI64IntegerAttr(layer_));
    return op->getResult(0);
  }

  /// A frozen base parameter, emitted right before its first use; located at its module path.
  Value param(const std::string &name, ArrayRef<int64_t> shape, const std::string &init) {
    StringRef module_path = StringRef(name).rsplit('.').first;
    return tag(b_.create<pl::ParamOp>(loc(module_path), tensor(shape), b_.getStringAttr(name), UnitAttr(),
                                      b_.getStringAttr(init)));
  }

  Value rms_norm(const std::string &path, Value x) {
    Value w = param(path + ".weight", {c_.hidden_size}, "ones");
    return tag(b_.create<pl::RMSNormOp>(loc(path), x.getType(), x, w, b_.getF64FloatAttr(c_.rms_norm_eps)));
  }

  /// torch.nn.Linear(in, out): weight (out, in), optional bias (out).
  Value linear(const std::string &path, Value x, int64_t in, int64_t out, bool bias) {
    Value w = param(path + ".weight", {out, in}, normal_init(c_.initializer_range));
    Value b = bias ? param(path + ".bias", {out}, "zeros") : Value();
    return tag(b_.create<pl::LinearOp>(loc(path), tensor({B_, T_, out}), x, w, b));
  }

  /// (B, T, H*Dh) -> view (B, T, H, Dh) -> transpose(1, 2) -> (B, H, T, Dh).
  Value split_heads(const std::string &path, Value x, int64_t heads) {
    const int64_t Dh = c_.head_dim;
    Value r = tag(b_.create<pl::ReshapeOp>(loc(path), tensor({B_, T_, heads, Dh}), x));
    return tag(b_.create<pl::TransposeOp>(loc(path), tensor({B_, heads, T_, Dh}), r, b_.getDenseI64ArrayAttr({0, 2, 1, 3})));
  }

  Value rope(const std::string &path, Value x) {
    DictionaryAttr scaling;
    if (const auto &rs = c_.rope_scaling)
      scaling = b_.getDictionaryAttr({
          b_.getNamedAttr("factor", b_.getF64FloatAttr(rs->factor)),
          b_.getNamedAttr("low_freq_factor", b_.getF64FloatAttr(rs->low_freq_factor)),
          b_.getNamedAttr("high_freq_factor", b_.getF64FloatAttr(rs->high_freq_factor)),
          b_.getNamedAttr("original_max_position_embeddings", b_.getI64IntegerAttr(rs->original_max_position_embeddings)),
      });
    return tag(b_.create<pl::RopeOp>(loc(path), x.getType(), x, b_.getF64FloatAttr(c_.rope_theta), scaling, Value()));
  }

  Value decoder_layer(int64_t i, Value h) {
    layer_ = i;
    const std::string p = "model.layers." + std::to_string(i);
    const std::string attn = p + ".self_attn", mlp = p + ".mlp";
    const int64_t D = c_.hidden_size, I = c_.intermediate_size, Dh = c_.head_dim;
    const int64_t Hq = c_.num_attention_heads, Hkv = c_.num_key_value_heads;

    // Self-attention block: h1 = h + o_proj(attention(rope(q), rope(k), v)).
    Value x = rms_norm(p + ".input_layernorm", h);
    Value q = split_heads(attn, linear(attn + ".q_proj", x, D, Hq * Dh, c_.attention_bias), Hq);
    Value k = split_heads(attn, linear(attn + ".k_proj", x, D, Hkv * Dh, c_.attention_bias), Hkv);
    Value v = split_heads(attn, linear(attn + ".v_proj", x, D, Hkv * Dh, c_.attention_bias), Hkv);
    q = rope(attn, q);
    k = rope(attn, k);
    // GQA: the attention op broadcasts each kv head over Hq / Hkv query heads (no repeat_kv op).
    Value a = tag(b_.create<pl::AttentionOp>(loc(attn), tensor({B_, Hq, T_, Dh}), q, k, v, b_.getUnitAttr(),
                                             b_.getF64FloatAttr(1.0 / std::sqrt(double(Dh))), Value()));
    a = tag(b_.create<pl::TransposeOp>(loc(attn), tensor({B_, T_, Hq, Dh}), a, b_.getDenseI64ArrayAttr({0, 2, 1, 3})));
    a = tag(b_.create<pl::ReshapeOp>(loc(attn), tensor({B_, T_, Hq * Dh}), a));
    Value o = linear(attn + ".o_proj", a, Hq * Dh, D, c_.attention_bias);
    Value h1 = tag(b_.create<pl::AddOp>(loc(p), h, o));

    // MLP block: h2 = h1 + down_proj(silu(gate_proj(y)) * up_proj(y)).
    Value y = rms_norm(p + ".post_attention_layernorm", h1);
    Value g = linear(mlp + ".gate_proj", y, D, I, c_.mlp_bias);
    Value u = linear(mlp + ".up_proj", y, D, I, c_.mlp_bias);
    Value s = tag(b_.create<pl::SwigluOp>(loc(mlp), g, u));
    Value d = linear(mlp + ".down_proj", s, I, D, c_.mlp_bias);
    return tag(b_.create<pl::AddOp>(loc(p), h1, d));
  }

  DictionaryAttr model_attr() {
    auto i64 = [&](int64_t v) { return b_.getI64IntegerAttr(v); };
    auto f64 = [&](double v) { return b_.getF64FloatAttr(v); };
    return b_.getDictionaryAttr({
        b_.getNamedAttr("vocab_size", i64(c_.vocab_size)),
        b_.getNamedAttr("hidden_size", i64(c_.hidden_size)),
        b_.getNamedAttr("intermediate_size", i64(c_.intermediate_size)),
        b_.getNamedAttr("num_hidden_layers", i64(c_.num_hidden_layers)),
        b_.getNamedAttr("num_attention_heads", i64(c_.num_attention_heads)),
        b_.getNamedAttr("num_key_value_heads", i64(c_.num_key_value_heads)),
        b_.getNamedAttr("head_dim", i64(c_.head_dim)),
        b_.getNamedAttr("rms_norm_eps", f64(c_.rms_norm_eps)),
        b_.getNamedAttr("rope_theta", f64(c_.rope_theta)),
        b_.getNamedAttr("tie_word_embeddings", b_.getBoolAttr(c_.tie_word_embeddings)),
        b_.getNamedAttr("max_position_embeddings", i64(c_.max_position_embeddings)),
    });
  }

  OpBuilder b_;
  const LlamaConfig &c_;
  int64_t B_, T_;
  Type f32_;
  int64_t layer_ = kOutsideLayers;
};

/// Sizes the graph's shapes depend on; errors name the key and its value.
LogicalResult check_config(MLIRContext &ctx, const LlamaConfig &c, int64_t batch, int64_t seq) {
  auto fail = [&](const Twine &msg) {
    emitError(UnknownLoc::get(&ctx)) << "build_llama_module: " << msg;
    return failure();
  };
  std::pair<const char *, int64_t> sizes[] = {
      {"vocab_size", c.vocab_size},           {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size}, {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads}, {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim}};
  for (auto &[key, v] : sizes)
    if (v <= 0 && !(v == 0 && StringRef(key) == "num_hidden_layers"))
      return fail(Twine(key) + " = " + Twine(v) + " must be positive");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    return fail("num_attention_heads = " + Twine(c.num_attention_heads) + " is not a multiple of num_key_value_heads = " +
                Twine(c.num_key_value_heads));
  for (int64_t d : {batch, seq})
    if (d <= 0 && !ShapedType::isDynamic(d))
      return fail("batch and seq_len must be positive or ShapedType::kDynamic (got batch = " + Twine(batch) +
                  ", seq_len = " + Twine(seq) + ")");
  return success();
}

} // namespace

OwningOpRef<ModuleOp> build_llama_module(MLIRContext &ctx, const LlamaConfig &config, int64_t batch,
                                         int64_t seq_len) {
  ctx.loadDialect<pl::PlDialect, func::FuncDialect>();
  if (failed(check_config(ctx, config, batch, seq_len))) return {};
  return LlamaBuilder(ctx, config, batch, seq_len).build();
}

} // namespace parallora
