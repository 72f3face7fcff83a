// libFuzzer target for the safetensors parser. Any input must either parse into views that
// lie inside the input, or fail with a Status; crashes, ASan reports and thrown exceptions
// are bugs. SafetensorsFile::open() runs the same parser over a mapped file.
#include "runtime/base/safetensors.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  auto file = parallora::SafetensorsFile::from_memory(data, size, "fuzz");
  if (!file.is_ok()) {
    if (file.message().empty())
      std::abort();  // every failure must say why
    return 0;
  }
  uint64_t checksum = 0;
  for (const parallora::TensorView &t : file.value()->tensors()) {
    // Touch every byte so ASan catches a view that escapes the buffer.
    for (size_t i = 0; i < t.nbytes; ++i)
      checksum += t.data[i];
    if (t.nbytes != size_t(t.numel()) * parallora::dtype_size(t.dtype))
      std::abort();
    if (t.numel() <= (1 << 16) && (t.dtype == parallora::DType::F32 ||
                                   t.dtype == parallora::DType::F16 ||
                                   t.dtype == parallora::DType::BF16 ||
                                   t.dtype == parallora::DType::F64)) {
      float *out = static_cast<float *>(std::malloc(size_t(t.numel()) * sizeof(float) + 1));
      if (!parallora::to_f32(t, out).is_ok())
        std::abort();
      std::free(out);
    }
    if (file.value()->find(t.name) == nullptr)
      std::abort();
  }
  volatile uint64_t sink = checksum;
  (void)sink;
  return 0;
}
