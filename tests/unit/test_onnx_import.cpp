//===- test_onnx_import.cpp - ONNX import of real torch exports -----------===//
//
// Fixtures come from scripts/reference/make_onnx_fixtures.py (torch 2.15 dynamo exporter,
// transformers 5, peft): tiny LlamaForCausalLM models, optimised and unoptimised exports, a
// dynamic-shape export, tied embeddings and a PEFT LoRA model. The HF safetensors saved
// next to them are the ground truth for which weight is which.
//
//===----------------------------------------------------------------------===//
#include <cstdio>
#include <fstream>
#include <set>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include "frontend/onnx/onnx_graph.h"
#include "frontend/onnx/onnx_importer.h"
#include "runtime/base/safetensors.h"
#include "models/llama_builder.h"
#include "ir/Dialect.h"
#include "mlir/IR/Diagnostics.h"
#include "tests/unit/structural_hash.h"

using namespace mlir;
using namespace parallora;

namespace {

const std::string kFixtures = std::string(PARALLORA_SOURCE_DIR) + "/tests/fixtures/onnx/";

struct Imported {
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module;
  OnnxImportReport report;
  std::string errors;
};

std::unique_ptr<Imported> import(const std::string &file, int64_t batch = -1, int64_t seq = -1) {
  auto r = std::make_unique<Imported>();
  ScopedDiagnosticHandler h(&r->ctx, [&](Diagnostic &d) {
    r->errors += d.str() + "\n";
    return success();
  });
  OnnxImportOptions o;
  o.batch = batch;
  o.seq_len = seq;
  auto m = import_onnx(r->ctx, file, o, &r->report);
  if (succeeded(m)) r->module = std::move(*m);
  return r;
}

std::map<std::string, pl::ParamOp> params(ModuleOp m) {
  std::map<std::string, pl::ParamOp> p;
  m.walk([&](pl::ParamOp op) { p[op.getName().str()] = op; });
  return p;
}

template <typename OpT> int count(ModuleOp m) {
  int n = 0;
  m.walk([&](OpT) { ++n; });
  return n;
}

TEST(OnnxImport, RaisesOptimisedExportToLlamaBlocks) {
  auto r = import(kFixtures + "tiny_llama.onnx");
  ASSERT_TRUE(r->module) << r->errors;
  ModuleOp m = *r->module;
  EXPECT_EQ(count<pl::EmbeddingOp>(m), 1);
  EXPECT_EQ(count<pl::RMSNormOp>(m), 5);
  EXPECT_EQ(count<pl::LinearOp>(m), 15);
  EXPECT_EQ(count<pl::RopeOp>(m), 4);
  EXPECT_EQ(count<pl::AttentionOp>(m), 2);
  EXPECT_EQ(count<pl::SwigluOp>(m), 2);
  EXPECT_EQ(count<pl::AddOp>(m), 4);
  EXPECT_EQ(count<pl::GenericOp>(m), 0);
  EXPECT_TRUE(r->report.generic_nodes.empty());
  m.walk([&](pl::AttentionOp a) {
    EXPECT_TRUE(a.getCausal());
    EXPECT_NEAR(a.getScale().convertToDouble(), 0.25, 1e-6); // 1/sqrt(16)
    EXPECT_EQ(a.getKey().getType().cast<RankedTensorType>().getShape()[1], 2); // GQA: 2 kv heads
  });
  m.walk([&](pl::RopeOp r) { EXPECT_DOUBLE_EQ(r.getTheta().convertToDouble(), 10000.0); });
  auto p = params(m);
  EXPECT_EQ(p.size(), 2u * 9 + 3);
  ASSERT_TRUE(p.count("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_EQ(p["model.layers.1.self_attn.k_proj.weight"].getType().cast<RankedTensorType>().getShape(),
            llvm::ArrayRef<int64_t>({32, 64}));
  EXPECT_TRUE(p.count("lm_head.weight"));
  for (auto &[name, op] : p) EXPECT_FALSE(op.getTrainable()) << name;
  auto cfg = m->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  ASSERT_TRUE(cfg);
  EXPECT_EQ(cfg.getAs<IntegerAttr>("num_hidden_layers").getInt(), 2);
  EXPECT_EQ(cfg.getAs<IntegerAttr>("num_key_value_heads").getInt(), 2);
  EXPECT_EQ(cfg.getAs<IntegerAttr>("intermediate_size").getInt(), 128);
  EXPECT_FALSE(cfg.getAs<BoolAttr>("tie_word_embeddings").getValue());
}

// Every parameter named by role must carry exactly the HF weight of that name: read it back
// through its ONNX source (+ transpose) and compare with the safetensors HF saved.
TEST(OnnxImport, RoleNamesMatchHuggingFaceWeights) {
  for (std::string file : {"tiny_llama.onnx", "tiny_llama_noopt.onnx"}) {
    auto r = import(kFixtures + file);
    ASSERT_TRUE(r->module) << r->errors;
    auto graph = onnx_import::OnnxGraph::load(kFixtures + file, {});
    ASSERT_TRUE(graph) << graph.message();
    auto store = WeightStore::open(kFixtures + "tiny_llama.hf");
    ASSERT_TRUE(store) << store.message();
    int checked = 0;
    for (auto &[name, op] : params(*r->module)) {
      const TensorView *hf = store->find(name);
      ASSERT_NE(hf, nullptr) << file << ": HF checkpoint has no " << name;
      std::vector<float> want(hf->numel());
      ASSERT_TRUE(to_f32(*hf, want.data()));
      const auto *src = (*graph)->value(op->getAttrOfType<StringAttr>("pl.source").str());
      ASSERT_TRUE(src && src->constant);
      onnx_import::ConstValue c = *src->constant;
      onnx_import::Shape shape = src->shape;
      if (auto perm = op->getAttrOfType<DenseI64ArrayAttr>("pl.source_perm")) {
        std::vector<int64_t> composed;
        onnx_import::Shape s2;
        for (int64_t d : perm.asArrayRef()) {
          composed.push_back(c.perm.empty() ? d : c.perm[d]);
          s2.push_back(shape[d]);
        }
        c.perm = composed;
        shape = s2;
      }
      auto got = (*graph)->materialize(c, src->type, shape);
      ASSERT_TRUE(got);
      ASSERT_EQ(got->shape, hf->shape) << name;
      double worst = 0;
      for (size_t k = 0; k < want.size(); ++k) worst = std::max(worst, std::fabs(got->f[k] - want[k]));
      EXPECT_EQ(worst, 0.0) << file << ": " << name;
      ++checked;
    }
    EXPECT_EQ(checked, 21) << file;
  }
}

TEST(OnnxImport, UnoptimisedExportFoldsShapeSubgraphsToTheSameIR) {
  auto opt = import(kFixtures + "tiny_llama.onnx");
  auto raw = import(kFixtures + "tiny_llama_noopt.onnx");
  ASSERT_TRUE(opt->module) << opt->errors;
  ASSERT_TRUE(raw->module) << raw->errors;
  EXPECT_GT(raw->report.onnx_nodes, 400); // Range/CumSum/GatherND/... mask and rope subgraphs
  EXPECT_EQ(count<pl::GenericOp>(*raw->module), 0);
  EXPECT_EQ(test_util::op_counts(*opt->module), test_util::op_counts(*raw->module));
  EXPECT_EQ(test_util::module_hash(*opt->module), test_util::module_hash(*raw->module));
}

TEST(OnnxImport, DynamicExportNeedsAndAcceptsBatchAndSeqLen) {
  auto missing = import(kFixtures + "tiny_llama_dynamic.onnx");
  EXPECT_FALSE(missing->module);
  EXPECT_NE(missing->errors.find("symbolic dim"), std::string::npos) << missing->errors;
  EXPECT_NE(missing->errors.find("--batch"), std::string::npos) << missing->errors;
  auto fixed = import(kFixtures + "tiny_llama_dynamic.onnx", 2, 16);
  ASSERT_TRUE(fixed->module) << fixed->errors;
  auto opt = import(kFixtures + "tiny_llama.onnx");
  EXPECT_EQ(test_util::module_hash(*opt->module), test_util::module_hash(*fixed->module));
  auto other = import(kFixtures + "tiny_llama_dynamic.onnx", 3, 32);
  ASSERT_TRUE(other->module) << other->errors;
  other->module->walk([&](pl::AttentionOp a) {
    EXPECT_EQ(a.getType().cast<RankedTensorType>().getShape(), llvm::ArrayRef<int64_t>({3, 4, 32, 16}));
    EXPECT_TRUE(a.getCausal());
  });
}

TEST(OnnxImport, TiedEmbeddingsShareOneParameter) {
  auto r = import(kFixtures + "tiny_llama_tied.onnx");
  ASSERT_TRUE(r->module) << r->errors;
  auto p = params(*r->module);
  EXPECT_FALSE(p.count("lm_head.weight"));
  ASSERT_TRUE(p.count("model.embed_tokens.weight"));
  EXPECT_EQ(std::distance(p["model.embed_tokens.weight"]->getUses().begin(),
                          p["model.embed_tokens.weight"]->getUses().end()), 2);
  auto cfg = r->module->getOperation()->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
  EXPECT_TRUE(cfg.getAs<BoolAttr>("tie_word_embeddings").getValue());
  EXPECT_EQ(cfg.getAs<IntegerAttr>("num_key_value_heads").getInt(), 4);
}

TEST(OnnxImport, RecognisesPeftLoraAdapters) {
  auto r = import(kFixtures + "tiny_llama_lora.onnx");
  ASSERT_TRUE(r->module) << r->errors;
  std::set<std::string> modules;
  r->module->walk([&](pl::LoraLinearOp l) {
    modules.insert(l.getModule().str());
    EXPECT_EQ(l.getRank(), 4);
    EXPECT_DOUBLE_EQ(l.getAlpha().convertToDouble(), 8.0);
    EXPECT_DOUBLE_EQ(l.getScaling().convertToDouble(), 2.0);
  });
  EXPECT_EQ(modules, (std::set<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                            "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj",
                                            "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"}));
  EXPECT_EQ(count<pl::LinearOp>(*r->module), 15 - 6);
  auto p = params(*r->module);
  ASSERT_TRUE(p.count("model.layers.1.mlp.down_proj.lora_A.weight"));
  EXPECT_TRUE(p["model.layers.1.mlp.down_proj.lora_A.weight"].getTrainable());
  EXPECT_EQ(p["model.layers.1.mlp.down_proj.lora_A.weight"].getType().cast<RankedTensorType>().getShape(),
            llvm::ArrayRef<int64_t>({4, 128}));
  EXPECT_EQ(p["model.layers.1.mlp.down_proj.lora_B.weight"].getType().cast<RankedTensorType>().getShape(),
            llvm::ArrayRef<int64_t>({64, 4}));
  EXPECT_FALSE(p["model.layers.1.mlp.down_proj.weight"].getTrainable());
}

// The HF-config path (models/llama_builder) and the ONNX path must give the same graph.
TEST(OnnxImport, MatchesTheIRBuiltFromTheHFConfig) {
  for (auto [onnx_file, hf_dir] : {std::pair<std::string, std::string>{"tiny_llama.onnx", "tiny_llama.hf"},
                                   {"tiny_llama_noopt.onnx", "tiny_llama.hf"},
                                   {"tiny_llama_tied.onnx", "tiny_llama_tied.hf"}}) {
    auto r = import(kFixtures + onnx_file);
    ASSERT_TRUE(r->module) << r->errors;
    auto cfg = load_llama_config(kFixtures + hf_dir + "/config.json");
    ASSERT_TRUE(cfg) << cfg.message();
    OwningOpRef<ModuleOp> built = build_llama_module(r->ctx, *cfg, 2, 16);
    ASSERT_TRUE(built);
    EXPECT_EQ(test_util::op_counts(*built), test_util::op_counts(*r->module)) << onnx_file;
    EXPECT_EQ(test_util::module_hash(*built), test_util::module_hash(*r->module)) << onnx_file;
    std::set<std::string> a, b;
    for (auto &[n, op] : params(*built)) a.insert(n);
    for (auto &[n, op] : params(*r->module)) b.insert(n);
    EXPECT_EQ(a, b) << onnx_file;
    // The config recovered from the graph agrees with config.json on every key it has.
    auto from_graph = r->module->getOperation()->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
    auto from_cfg = built->getOperation()->getAttrOfType<DictionaryAttr>(pl::kModelAttr);
    for (NamedAttribute kv : from_graph) EXPECT_EQ(kv.getValue(), from_cfg.get(kv.getName())) << kv.getName().str();
  }
}

// ---------------------------------------------------------------- bad input

std::string temp_path(const std::string &name) { return ::testing::TempDir() + name; }

void write_model(const onnx::ModelProto &m, const std::string &path) {
  std::ofstream os(path, std::ios::binary);
  m.SerializeToOstream(&os);
}

onnx::ModelProto tiny_graph(const std::string &op_type, int64_t k_a, int64_t k_b) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto *opset = m.add_opset_import();
  opset->set_version(18);
  auto *g = m.mutable_graph();
  auto add_input = [&](const std::string &name, std::vector<int64_t> dims) {
    auto *in = g->add_input();
    in->set_name(name);
    auto *tt = in->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto_DataType_FLOAT);
    for (int64_t d : dims) tt->mutable_shape()->add_dim()->set_dim_value(d);
  };
  add_input("x", {2, k_a});
  add_input("y", {k_b, 3});
  auto *n = g->add_node();
  n->set_name("the_node");
  n->set_op_type(op_type);
  n->add_input("x");
  n->add_input("y");
  n->add_output("z");
  g->add_output()->set_name("z");
  return m;
}

TEST(OnnxImportErrors, TruncatedFileIsRejected) {
  std::ifstream in(kFixtures + "tiny_llama.onnx", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::string path = temp_path("truncated.onnx");
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size() / 2));
  auto r = import(path);
  EXPECT_FALSE(r->module);
  EXPECT_NE(r->errors.find("not a valid ONNX model"), std::string::npos) << r->errors;
  EXPECT_NE(r->errors.find(path), std::string::npos) << r->errors;
}

TEST(OnnxImportErrors, MissingExternalDataNamesTheFile) {
  std::string path = temp_path("no_data.onnx");
  std::ifstream in(kFixtures + "tiny_llama.onnx", std::ios::binary);
  std::ofstream(path, std::ios::binary) << in.rdbuf();
  std::remove((path + ".data").c_str());
  auto r = import(path);
  EXPECT_FALSE(r->module);
  EXPECT_NE(r->errors.find("tiny_llama.onnx.data"), std::string::npos) << r->errors;
  EXPECT_NE(r->errors.find("cannot be opened"), std::string::npos) << r->errors;
}

TEST(OnnxImportErrors, UnknownOpNamesNodeAndType) {
  std::string path = temp_path("unknown_op.onnx");
  write_model(tiny_graph("FancyNewOp", 4, 4), path);
  auto r = import(path);
  EXPECT_FALSE(r->module);
  EXPECT_NE(r->errors.find("the_node"), std::string::npos) << r->errors;
  EXPECT_NE(r->errors.find("FancyNewOp"), std::string::npos) << r->errors;
  EXPECT_NE(r->errors.find("not supported"), std::string::npos) << r->errors;
}

TEST(OnnxImportErrors, InconsistentShapesNameNodeAndSizes) {
  std::string path = temp_path("bad_matmul.onnx");
  write_model(tiny_graph("MatMul", 4, 5), path);
  auto r = import(path);
  EXPECT_FALSE(r->module);
  EXPECT_NE(r->errors.find("the_node"), std::string::npos) << r->errors;
  EXPECT_NE(r->errors.find("[2,4] x [5,3]"), std::string::npos) << r->errors;
}

TEST(OnnxImportErrors, ExternalDataPastEndOfFile) {
  std::string dir = temp_path("short_data/");
  std::system(("mkdir -p " + dir).c_str());
  std::ifstream in(kFixtures + "tiny_llama.onnx", std::ios::binary);
  std::ofstream(dir + "tiny_llama.onnx", std::ios::binary) << in.rdbuf();
  std::ifstream din(kFixtures + "tiny_llama.onnx.data", std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(din)), {});
  std::ofstream(dir + "tiny_llama.onnx.data", std::ios::binary).write(data.data(), std::streamsize(data.size() - 100));
  auto r = import(dir + "tiny_llama.onnx");
  EXPECT_FALSE(r->module);
  EXPECT_NE(r->errors.find("past the end"), std::string::npos) << r->errors;
}

} // namespace
