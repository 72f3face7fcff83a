// libFuzzer target: the planner's device profile reader (passes/planner/device_profile.cpp) on
// arbitrary bytes must return a value or an error, never crash or throw.
#include <cstddef>
#include <cstdint>
#include <string>

#include "passes/planner/device_profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  auto p = parallora::planner::parse_device_profile(text, "fuzz.json");
  if (p.is_ok()) {
    (void)p->gemm_seconds(64, 64, 64, "bf16");
    (void)parallora::planner::device_profile_json(*p, {});
  }
  return 0;
}
