//===- device_timer.cu - kernel times from CUDA events ---------------------===//
#include "runtime/cuda/device_timer.h"

#include <vector>

#include "runtime/cuda/common.cuh"

namespace parallora::rt::cuda {
namespace {

class CudaEventTimer final : public DeviceTimer {
public:
  ~CudaEventTimer() override {
    for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);
    if (ref_) (void)cudaEventDestroy(ref_);
  }

  int64_t mark() override {
    if (broken_ || graph::capturing()) return -1;
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      if (cudaEventCreate(&e) != cudaSuccess) return fail();
      events_.push_back(e);
    }
    if (cudaEventRecord(events_[used_], stream()) != cudaSuccess) return fail();
    return static_cast<int64_t>(used_++);
  }

  Status resolve(std::vector<int64_t> *ns) override {
    ns->assign(used_, 0);
    if (used_ == 0) return Status::ok();
    const size_t n = used_;
    used_ = 0;
    if (!ref_)
      if (Status s = cuda_status(cudaEventCreate(&ref_), "cudaEventCreate (trace)"); !s) return s;
    if (Status s = cuda_status(cudaEventRecord(ref_, stream()), "cudaEventRecord (trace)"); !s) return s;
    if (Status s = cuda_status(cudaEventSynchronize(ref_), "cudaEventSynchronize (trace)"); !s) return s;
    const int64_t host_ref = TraceRecorder::now_ns();
    for (size_t i = 0; i < n; ++i) {
      float ms = 0;
      if (Status s = cuda_status(cudaEventElapsedTime(&ms, events_[i], ref_), "cudaEventElapsedTime (trace)"); !s)
        return s;
      (*ns)[i] = host_ref - static_cast<int64_t>(static_cast<double>(ms) * 1e6);
    }
    return Status::ok();
  }

private:
  int64_t fail() {
    broken_ = true;  // stop marking (the kernels fall back to host times); the error is not fatal
    (void)cudaGetLastError();
    return -1;
  }

  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
  cudaEvent_t ref_ = nullptr;
  bool broken_ = false;
};

} // namespace

std::unique_ptr<DeviceTimer> make_device_timer() { return std::make_unique<CudaEventTimer>(); }

} // namespace parallora::rt::cuda
