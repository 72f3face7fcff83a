//===- gpu_metrics.h - GPU utilization through NVML (dlopen), GPU peaks ----===//
//
// Plain C++, no CUDA or NVML headers: libnvidia-ml.so.1 (shipped with the NVIDIA driver, so it
// exists exactly where a driver exists) is loaded with dlopen at run time and the few functions
// used are declared here by hand (their C ABI is stable: nvmlInit_v2, nvmlShutdown,
// nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetHandleByPciBusId_v2, nvmlDeviceGetUtilizationRates,
// nvmlDeviceGetMemoryInfo, nvmlDeviceGetName). Without the library everything fails cleanly.
//
// NvmlSampler: a background thread samples the device's utilization every `period_ms`
// (default 100) while the sampler lives. NVML's "GPU utilization" is the percentage of time over
// the driver's last sample period (1/6 s to 1 s, device dependent) during which at least one
// kernel was running on the device (any process). Windows: begin_window() starts one (e.g. a
// training step), end_window() returns the mean and max of the samples taken in it; a window
// shorter than one period gets one sample taken at its end.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace parallora::rt {

/// Utilization statistics of a window (or the whole run).
struct GpuUtilStats {
  int64_t samples = 0;
  double mean = 0;  // mean GPU utilization in percent over the samples
  double max = 0;   // max GPU utilization in percent
  double mem_used_max_bytes = 0;  // max device memory used (nvmlDeviceGetMemoryInfo.used)
};

class NvmlSampler {
public:
  static constexpr const char *kDefaultLibrary = "libnvidia-ml.so.1";

  /// Loads `library`, initialises NVML and opens device `device_index` (NVML's index order: PCI
  /// bus order, which can differ from CUDA's; prefer open_by_pci_bus_id when the CUDA device is
  /// known). nullptr on any failure with `why` set; "libnvidia-ml.so.1 not found (no NVIDIA
  /// driver)" when the library cannot be loaded. Sampling starts at once.
  static std::unique_ptr<NvmlSampler> open(int device_index, std::string *why,
                                           const std::string &library = kDefaultLibrary, int period_ms = 100);
  /// Same, the device given by its PCI bus id ("0000:3b:00.0", cudaDeviceGetPCIBusId's form).
  static std::unique_ptr<NvmlSampler> open_by_pci_bus_id(const std::string &bus_id, std::string *why,
                                                         const std::string &library = kDefaultLibrary,
                                                         int period_ms = 100);
  ~NvmlSampler();
  NvmlSampler(const NvmlSampler &) = delete;
  NvmlSampler &operator=(const NvmlSampler &) = delete;

  /// The device's name as NVML reports it ("NVIDIA H100 80GB HBM3").
  const std::string &device_name() const { return name_; }

  /// Starts a window (discarding the samples of the previous one).
  void begin_window();
  /// The window's statistics (one synchronous sample when the thread took none in it); also
  /// adds them to the run's totals.
  GpuUtilStats end_window();
  /// Over every window ended so far (sample-weighted mean, max).
  GpuUtilStats total() const;

private:
  struct Api;
  NvmlSampler() = default;
  static std::unique_ptr<NvmlSampler> open_impl(int device_index, const std::string *bus_id, std::string *why,
                                                const std::string &library, int period_ms);
  bool sample(double *util, double *mem_used);
  void loop();

  std::unique_ptr<Api> api_;
  void *device_ = nullptr;
  std::string name_;
  int period_ms_ = 100;
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  GpuUtilStats window_, total_;
  double window_sum_ = 0, total_sum_ = 0;
};

/// The dense BF16 tensor-core peak (TFLOP/s, no sparsity) of a GPU from its data sheet, by
/// name: H100 SXM (names with "H100" and "SXM" or "HBM3") 989, H100 PCIe 756, H200 (and GH200)
/// 989, A100 312; 0 for any other name (unknown: MFU not reported).
double dense_bf16_peak_tflops(const std::string &gpu_name);

} // namespace parallora::rt
