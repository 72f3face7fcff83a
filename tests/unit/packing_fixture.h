//===- packing_fixture.h - the packed batch and its tiny LoRA plan (shared) -===//
//
// What test_packing_hf and test_packing_strategies share: the packed batch of
// tests/fixtures/train/packing (scripts/reference/make_packing_fixtures.py: two rows packing
// five examples and padding, with HF's logits and adapter gradients), read from its safetensors
// file, and the plan it runs on: the tiny LLaMA of tests/fixtures/onnx/tiny_llama.hf with LoRA
// rank 4 on every projection, compiled with or without --pack-sequences, for one device or a
// dp x tp x pp mesh.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/base/safetensors.h"
#include "runtime/plan/plan.h"

namespace parallora::test_util {

/// The packed batch's shape: (kPackB, kPackT) tokens.
constexpr int64_t kPackB = 2, kPackT = 16;

/// The tiny LLaMA's HF export (config.json, model.safetensors) in the source tree.
std::string tiny_llama_dir();
/// tests/fixtures/train/packing in the source tree.
std::string packing_fixture_dir();

struct TinyLoraPlanOptions {
  bool packing = true;        // --pack-sequences: position_ids and segment_ids inputs
  std::optional<double> lr;   // AdamW's learning rate; absent: the train pipeline's default
  int64_t dp = 1, tp = 1, pp = 1;  // a mesh of more than one rank runs the parallel pipeline
};

/// The tiny LLaMA + LoRA (rank 4, alpha 8, every projection) lowered to a plan for a global
/// batch of kPackB rows in one micro-batch; a compile failure is a test failure.
plan::Plan compile_tiny_lora(const TinyLoraPlanOptions &opts);

/// A safetensors file's tensors as host vectors; a missing file or tensor is a test failure
/// (and an empty vector).
struct SafetensorsFixture {
  std::unique_ptr<SafetensorsFile> file;

  static SafetensorsFixture open(const std::string &path);
  std::vector<float> f32(const std::string &name) const;
  std::vector<int32_t> i32(const std::string &name) const;
};

/// The packed batch (input_ids, labels, position_ids, segment_ids; HF's logits and gradients).
inline SafetensorsFixture packing_batch() { return SafetensorsFixture::open(packing_fixture_dir() + "/batch.safetensors"); }

} // namespace parallora::test_util
