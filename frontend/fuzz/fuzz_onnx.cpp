//===- fuzz_onnx.cpp - libFuzzer target for the ONNX loader and folder ----===//
//
// Feeds arbitrary bytes through OnnxGraph::load: protobuf parsing, initializer checks,
// shape inference and constant folding. Any crash, sanitizer report or hang is a bug; a
// Status error is the expected outcome for most inputs.
//
//===----------------------------------------------------------------------===//
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "frontend/onnx/onnx_graph.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const std::string path = "/tmp/parallora_fuzz_onnx_" + std::to_string(getpid()) + ".onnx";
  FILE *f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  parallora::onnx_import::LoadOptions options;
  options.batch = 2;
  options.seq_len = 4;
  options.fold_limit = 1 << 16;
  auto graph = parallora::onnx_import::OnnxGraph::load(path, options);
  (void)graph;
  return 0;
}
