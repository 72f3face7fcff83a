// libFuzzer target for PEFT adapter directories (runtime/io/peft_adapter.h). The input is split
// (fuzz_files.h) into adapter_config.json and adapter_model.safetensors in a scratch directory,
// which read_peft_adapter_with_shapes reads. Every tensor it returns must be 2-d with as many
// floats as its shape says; crashes, sanitizer reports and thrown exceptions are bugs.
#include "runtime/io/peft_adapter.h"

#include <cstdint>
#include <cstdlib>

#include "tests/fuzz/fuzz_files.h"

using namespace parallora;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string &dir = fuzz::scratch_dir();
  fuzz::write_files(dir, {"adapter_config.json", "adapter_model.safetensors"}, data, size);
  plan::LoraInfo info;
  auto adapter = rt::read_peft_adapter_with_shapes(dir, &info);
  if (!adapter) {
    if (adapter.message().empty()) std::abort();  // every failure says why
    return 0;
  }
  if (adapter->empty() || info.rank <= 0) std::abort();
  for (const auto &[name, t] : *adapter) {
    if (name.empty() || t.shape.size() != 2 || t.shape[0] < 0 || t.shape[1] < 0) std::abort();
    if (uint64_t(t.shape[0]) * uint64_t(t.shape[1]) != t.data.size()) std::abort();
  }
  return 0;
}
