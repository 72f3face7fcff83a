// Tests for runtime/io/gpu_metrics: NVML loaded with dlopen fails cleanly without a driver (the
// documented reason), with a library that does not exist, and with a library that is not NVML;
// where a driver exists, the sampler opens and measures windows. The data-sheet peaks for MFU.
#include "runtime/io/gpu_metrics.h"

#include <dlfcn.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

using namespace parallora::rt;

namespace {

bool driver_present() {
  void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h) dlclose(h);
  return h != nullptr;
}

TEST(NvmlSampler, DefaultLibrary) {
  std::string why = "unchanged";
  auto s = NvmlSampler::open(0, &why);
  if (!driver_present()) {
    // This machine (no NVIDIA driver): a clean failure with the documented reason.
    EXPECT_EQ(s, nullptr);
    EXPECT_EQ(why, "libnvidia-ml.so.1 not found (no NVIDIA driver)");
    return;
  }
  // A driver machine: device 0 opens, has a name, and a window gets at least one sample.
  ASSERT_NE(s, nullptr) << why;
  EXPECT_FALSE(s->device_name().empty());
  s->begin_window();
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  GpuUtilStats w = s->end_window();
  EXPECT_GE(w.samples, 1);
  EXPECT_GE(w.mean, 0.0);
  EXPECT_LE(w.mean, 100.0);
  EXPECT_GE(w.max, w.mean);
  EXPECT_GT(w.mem_used_max_bytes, 0.0);
  s->begin_window();
  GpuUtilStats shortw = s->end_window();  // shorter than a period: one sample taken at its end
  EXPECT_EQ(shortw.samples, 1);
  EXPECT_EQ(s->total().samples, w.samples + 1);
  // A device index past the last one fails with NVML's reason.
  std::string why2;
  EXPECT_EQ(NvmlSampler::open(1 << 20, &why2), nullptr);
  EXPECT_NE(why2.find("nvmlDeviceGetHandleByIndex_v2(1048576) failed"), std::string::npos) << why2;
}

TEST(NvmlSampler, MissingLibraryFailsCleanly) {
  std::string why;
  EXPECT_EQ(NvmlSampler::open(0, &why, "libdoesnotexist.so"), nullptr);
  EXPECT_EQ(why, "libdoesnotexist.so not found (no NVIDIA driver)");
  why.clear();
  EXPECT_EQ(NvmlSampler::open_by_pci_bus_id("0000:00:00.0", &why, "libdoesnotexist.so"), nullptr);
  EXPECT_EQ(why, "libdoesnotexist.so not found (no NVIDIA driver)");
  EXPECT_EQ(NvmlSampler::open(0, nullptr, "libdoesnotexist.so"), nullptr);  // why is optional
}

TEST(NvmlSampler, LibraryWithoutNvmlFailsCleanly) {
  std::string why;
  EXPECT_EQ(NvmlSampler::open(0, &why, "libm.so.6"), nullptr);
  EXPECT_EQ(why, "libm.so.6 lacks nvmlInit_v2 (not the NVML library)");
}

TEST(GpuPeak, DataSheetTable) {
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA H100 80GB HBM3"), 989);
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA H100 SXM5 80GB"), 989);
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA H100 PCIe"), 756);
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA H200"), 989);
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA A100-SXM4-80GB"), 312);
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA A100 80GB PCIe"), 312);
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA H100 NVL"), 0);
  EXPECT_EQ(dense_bf16_peak_tflops("NVIDIA GeForce RTX 4090"), 0);
  EXPECT_EQ(dense_bf16_peak_tflops(""), 0);
}

} // namespace
