//===- gpu_metrics.cpp - GPU utilization through NVML (dlopen) -------------===//
#include "runtime/io/gpu_metrics.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <type_traits>

namespace parallora::rt {
namespace {

// The NVML ABI, declared by hand (no nvml.h in this project): nvmlReturn_t is an int enum with
// NVML_SUCCESS = 0, nvmlDevice_t an opaque pointer.
using nvmlReturn_t = int;
using nvmlDevice_t = void *;
struct nvmlUtilization_t {
  unsigned int gpu;     // percent of time a kernel was running over the last sample period
  unsigned int memory;  // percent of time device memory was read or written
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr unsigned kNameBufferSize = 96;  // NVML_DEVICE_NAME_V2_BUFFER_SIZE

} // namespace

struct NvmlSampler::Api {
  void *lib = nullptr;
  bool initialised = false;
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  nvmlReturn_t (*by_index)(unsigned int, nvmlDevice_t *) = nullptr;
  nvmlReturn_t (*by_pci)(const char *, nvmlDevice_t *) = nullptr;  // optional
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t *) = nullptr;
  nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t *) = nullptr;
  nvmlReturn_t (*name)(nvmlDevice_t, char *, unsigned int) = nullptr;
  const char *(*error_string)(nvmlReturn_t) = nullptr;  // optional

  std::string error(const char *what, nvmlReturn_t r) const {
    std::string s = std::string(what) + " failed: ";
    const char *text = error_string ? error_string(r) : nullptr;
    s += text ? text : "unknown error";
    return s + " (NVML error " + std::to_string(r) + ")";
  }
  ~Api() {
    if (initialised && shutdown) shutdown();
    if (lib) dlclose(lib);
  }
};

std::unique_ptr<NvmlSampler> NvmlSampler::open(int device_index, std::string *why, const std::string &library,
                                               int period_ms) {
  return open_impl(device_index, nullptr, why, library, period_ms);
}

std::unique_ptr<NvmlSampler> NvmlSampler::open_by_pci_bus_id(const std::string &bus_id, std::string *why,
                                                             const std::string &library, int period_ms) {
  return open_impl(-1, &bus_id, why, library, period_ms);
}

std::unique_ptr<NvmlSampler> NvmlSampler::open_impl(int device_index, const std::string *bus_id, std::string *why,
                                                    const std::string &library, int period_ms) {
  auto failed = [&](const std::string &msg) -> std::unique_ptr<NvmlSampler> {
    if (why) *why = msg;
    return nullptr;
  };
  auto api = std::make_unique<Api>();
  dlerror();
  api->lib = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!api->lib) {
    const char *e = dlerror();
    std::string err = e ? e : "";
    if (err.empty() || err.find("No such file") != std::string::npos ||
        err.find("cannot open shared object") != std::string::npos)
      return failed(library + " not found (no NVIDIA driver)");
    return failed(library + " cannot be loaded: " + err);
  }
  auto sym = [&](const char *name) { return dlsym(api->lib, name); };
  std::string missing;
  auto need = [&](auto &fn, const char *name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(sym(name));
    if (!fn && missing.empty()) missing = name;
  };
  need(api->init, "nvmlInit_v2");
  need(api->shutdown, "nvmlShutdown");
  need(api->by_index, "nvmlDeviceGetHandleByIndex_v2");
  need(api->utilization, "nvmlDeviceGetUtilizationRates");
  need(api->memory, "nvmlDeviceGetMemoryInfo");
  need(api->name, "nvmlDeviceGetName");
  if (!missing.empty()) return failed(library + " lacks " + missing + " (not the NVML library)");
  api->by_pci = reinterpret_cast<decltype(api->by_pci)>(sym("nvmlDeviceGetHandleByPciBusId_v2"));
  api->error_string = reinterpret_cast<decltype(api->error_string)>(sym("nvmlErrorString"));

  if (nvmlReturn_t r = api->init(); r != 0) return failed(api->error("nvmlInit_v2", r));
  api->initialised = true;
  nvmlDevice_t dev = nullptr;
  if (bus_id) {
    if (!api->by_pci) return failed(library + " lacks nvmlDeviceGetHandleByPciBusId_v2");
    if (nvmlReturn_t r = api->by_pci(bus_id->c_str(), &dev); r != 0)
      return failed(api->error(("nvmlDeviceGetHandleByPciBusId_v2(" + *bus_id + ")").c_str(), r));
  } else {
    if (device_index < 0) return failed("GPU index " + std::to_string(device_index) + " is negative");
    if (nvmlReturn_t r = api->by_index(static_cast<unsigned>(device_index), &dev); r != 0)
      return failed(api->error(("nvmlDeviceGetHandleByIndex_v2(" + std::to_string(device_index) + ")").c_str(), r));
  }
  char name[kNameBufferSize] = {0};
  if (nvmlReturn_t r = api->name(dev, name, kNameBufferSize); r != 0) return failed(api->error("nvmlDeviceGetName", r));
  nvmlUtilization_t u{};
  if (nvmlReturn_t r = api->utilization(dev, &u); r != 0)
    return failed(api->error("nvmlDeviceGetUtilizationRates", r));

  std::unique_ptr<NvmlSampler> s(new NvmlSampler());
  s->api_ = std::move(api);
  s->device_ = dev;
  s->name_ = name;
  s->period_ms_ = std::max(1, period_ms);
  s->thread_ = std::thread([p = s.get()] { p->loop(); });
  return s;
}

NvmlSampler::~NvmlSampler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool NvmlSampler::sample(double *util, double *mem_used) {
  nvmlUtilization_t u{};
  if (api_->utilization(device_, &u) != 0) return false;
  *util = u.gpu;
  nvmlMemory_t m{};
  *mem_used = api_->memory(device_, &m) == 0 ? static_cast<double>(m.used) : 0.0;
  return true;
}

void NvmlSampler::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (cv_.wait_for(lock, std::chrono::milliseconds(period_ms_), [this] { return stop_; })) break;
    lock.unlock();
    double util = 0, mem = 0;
    bool ok = sample(&util, &mem);
    lock.lock();
    if (!ok) continue;
    window_.samples += 1;
    window_sum_ += util;
    window_.max = std::max(window_.max, util);
    window_.mem_used_max_bytes = std::max(window_.mem_used_max_bytes, mem);
  }
}

void NvmlSampler::begin_window() {
  std::lock_guard<std::mutex> lock(mu_);
  window_ = GpuUtilStats();
  window_sum_ = 0;
}

GpuUtilStats NvmlSampler::end_window() {
  std::unique_lock<std::mutex> lock(mu_);
  if (window_.samples == 0) {
    lock.unlock();
    double util = 0, mem = 0;
    bool ok = sample(&util, &mem);
    lock.lock();
    if (ok) {
      window_.samples = 1;
      window_sum_ = util;
      window_.max = util;
      window_.mem_used_max_bytes = std::max(window_.mem_used_max_bytes, mem);
    }
  }
  GpuUtilStats w = window_;
  w.mean = w.samples > 0 ? window_sum_ / static_cast<double>(w.samples) : 0.0;
  total_.samples += w.samples;
  total_sum_ += window_sum_;
  total_.max = std::max(total_.max, w.max);
  total_.mem_used_max_bytes = std::max(total_.mem_used_max_bytes, w.mem_used_max_bytes);
  window_ = GpuUtilStats();
  window_sum_ = 0;
  return w;
}

GpuUtilStats NvmlSampler::total() const {
  std::lock_guard<std::mutex> lock(mu_);
  GpuUtilStats t = total_;
  t.mean = t.samples > 0 ? total_sum_ / static_cast<double>(t.samples) : 0.0;
  return t;
}

double dense_bf16_peak_tflops(const std::string &gpu_name) {
  std::string n = gpu_name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  auto has = [&](const char *s) { return n.find(s) != std::string::npos; };
  if (has("H200")) return 989;  // H200 SXM, GH200: the H100 SXM's tensor cores
  if (has("H100")) {
    if (has("PCIE")) return 756;
    if (has("SXM") || has("HBM3")) return 989;
    return 0;  // NVL and other variants: not in the table
  }
  if (has("A100")) return 312;
  return 0;
}

} // namespace parallora::rt
