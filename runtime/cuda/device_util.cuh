//===- device_util.cuh - helpers of the pointwise / loss / optimizer kernels ---===//
//
// Host side: operand validation (runtime/kernel_check.h, shared with the CPU kernels) and
// grow-only CUDA managed scratch buffers (host-visible, for the host-staged collectives and
// the data-dependent error words).
// Device side: deterministic block reductions (fixed thread-to-element assignment, fixed
// shuffle tree; no float atomics), so a result is bit-identical from run to run.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "runtime/cuda/common.cuh"
#include "runtime/kernel.h"
#include "runtime/kernel_check.h"

namespace parallora::rt::cuda::util {

//===--------------------------------------------------------------------===//
// Operand validation (same messages as runtime/cpu/common.cpp)
//===--------------------------------------------------------------------===//

using rt::shape_str;
using Check = rt::KernelCheck;  // runtime/kernel_check.h: the CPU kernels' class, same messages
inline Status fail(const KernelCall &call, const char *kernel, const std::string &msg) {
  return rt::kernel_error(call, kernel, msg);
}

//===--------------------------------------------------------------------===//
// Managed scratch
//===--------------------------------------------------------------------===//

/// A grow-only cudaMallocManaged buffer. Growing waits for the stream first (a queued kernel
/// may still use the old block). Never freed (lives as long as the process / thread). CUDA
/// graphs (graph.cuh): growing while capturing refuses the capture; once graphs exist the old
/// block is retired, not freed.
/// Declare instances `static thread_local` in the .cu that uses them: ranks run as processes,
/// but a test driving several ranks from threads of one process must not share scratch.
class ManagedScratch {
public:
  /// At least `bytes` bytes (never null on success, even for 0 bytes).
  template <typename T> StatusOr<T *> get(size_t count) {
    size_t bytes = count * sizeof(T);
    if (bytes == 0) bytes = sizeof(T);
    if (bytes > bytes_) {
      if (graph::capturing()) return graph::refuse_capture("a managed scratch buffer would grow");
      if (ptr_) {
        if (Status s = sync_stream(); !s) return s;
        if (graph::graphs_exist())
          graph::retire(ptr_, true);  // a captured graph may use it
        else
          cudaFree(ptr_);
        ptr_ = nullptr;
        bytes_ = 0;
      }
      size_t want = bytes < 256 ? 256 : bytes;
      if (Status s = cuda_status(cudaMallocManaged(&ptr_, want), "cudaMallocManaged (scratch)"); !s) {
        ptr_ = nullptr;
        return s;
      }
      bytes_ = want;
    }
    return static_cast<T *>(ptr_);
  }

private:
  void *ptr_ = nullptr;
  size_t bytes_ = 0;
};

/// "No error" value of an error word (the first bad index is recorded with atomicMin).
constexpr unsigned long long kNoError = ~0ull;

//===--------------------------------------------------------------------===//
// Device reductions
//===--------------------------------------------------------------------===//

/// Threads per block of the row kernels (a multiple of 32; fixed, so reductions group the
/// elements the same way on every run and every GPU).
constexpr int kRowThreads = 256;
/// Threads per block of the element-wise kernels.
constexpr int kEltThreads = 256;

struct SumOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
/// a > b ? a : b, the CPU kernels' comparison (keeps the left operand on ties / NaN).
struct MaxOp {
  template <typename T> __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};

/// Reduces one value per thread over the block and returns the result to every thread.
/// Order: a shuffle tree within each warp (offsets 16, 8, .., 1), then the same tree over the
/// warp results in warp 0. Deterministic for a fixed blockDim.x (a multiple of 32, <= 1024).
/// Safe to call several times in a row (it ends with a barrier).
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T warp_vals[32];
  __shared__ T result;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
  if (lane == 0) warp_vals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? warp_vals[lane] : identity;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
    if (lane == 0) result = v;
  }
  __syncthreads();
  const T r = result;
  __syncthreads();
  return r;
}

/// Grid-stride loop bounds for element-wise kernels.
#define PARALLORA_GRID_LOOP(i, n)                                                          \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);                \
       i += int64_t(blockDim.x) * gridDim.x)

} // namespace parallora::rt::cuda::util
