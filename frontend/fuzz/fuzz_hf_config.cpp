// libFuzzer target for the config.json parser: any text must parse or fail with a Status
// (no exception escapes, no crash).
#include "frontend/hf_config.h"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  auto config = parallora::parse_llama_config(text, "fuzz.json", /*require_sizes=*/false);
  if (config.is_ok())
    (void)config->num_parameters();
  else if (config.message().find("fuzz.json") == std::string::npos)
    std::abort();  // every error names its origin
  return 0;
}
