//===- device_util.cuh - helpers of the pointwise / loss / optimizer kernels ---===//
//
// Host side: operand validation with the CPU kernels' wording (a header-only copy of
// runtime/cpu/common.h's Check, so the CUDA library does not depend on the CPU one) and
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

namespace parallora::rt::cuda::util {

//===--------------------------------------------------------------------===//
// Operand validation (same messages as runtime/cpu/common.cpp)
//===--------------------------------------------------------------------===//

inline std::string shape_str(const std::vector<int64_t> &shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

/// "<kernel> (<loc>): <msg>".
inline Status fail(const KernelCall &call, const char *kernel, const std::string &msg) {
  std::string loc = call.instr && !call.instr->loc.empty() ? call.instr->loc : "?";
  return Status::error(std::string(kernel) + " (" + loc + "): " + msg);
}

/// Records the first contract violation of one call; every method returns false after it.
class Check {
public:
  Check(const KernelCall &call, const char *kernel) : call_(call), kernel_(kernel) {}

  bool operands(size_t nin_min, size_t nin_max, size_t nout, bool allow_accumulate = false) {
    size_t nin = call_.in.size();
    if (nin < nin_min || nin > nin_max) {
      std::string want = nin_min == nin_max
                             ? std::to_string(nin_min)
                             : std::to_string(nin_min) + " to " + std::to_string(nin_max);
      return set("expected " + want + " inputs, got " + std::to_string(nin));
    }
    if (call_.out.size() != nout)
      return set("expected " + std::to_string(nout) + " outputs, got " +
                 std::to_string(call_.out.size()));
    if (!allow_accumulate && call_.attr_i("accumulate", 0) != 0)
      return set("attr accumulate = " + std::to_string(call_.attr_i("accumulate", 0)) +
                 " is not supported by this kernel");
    return true;
  }
  bool f32(const Tensor &t, const char *what) { return typed(t, what, plan::ElemType::F32); }
  bool i32(const Tensor &t, const char *what) { return typed(t, what, plan::ElemType::I32); }
  bool rank(const Tensor &t, const char *what, int r) {
    if (t.rank() == r) return true;
    return set(std::string(what) + " must have rank " + std::to_string(r) + ", got shape " +
               shape_str(t.shape));
  }
  bool shape(const Tensor &t, const char *what, const std::vector<int64_t> &expected) {
    if (t.shape == expected) return true;
    return set(std::string(what) + " has shape " + shape_str(t.shape) + ", expected " +
               shape_str(expected));
  }
  bool rows_of(const Tensor &t, const char *what, int64_t d, int64_t *rows) {
    if (t.rank() < 1)
      return set(std::string(what) + " must have rank >= 1, got shape " + shape_str(t.shape));
    if (d <= 0)
      return set(std::string(what) + ": last dim must be positive, got shape " +
                 shape_str(t.shape));
    if (t.dim(-1) != d)
      return set(std::string(what) + " has shape " + shape_str(t.shape) +
                 ", expected last dim " + std::to_string(d));
    *rows = t.numel() / d;
    return true;
  }
  bool same_shape(const Tensor &t, const char *what, const Tensor &ref, const char *ref_what) {
    if (t.shape == ref.shape) return true;
    return set(std::string(what) + " has shape " + shape_str(t.shape) +
               ", expected the shape of " + ref_what + " " + shape_str(ref.shape));
  }
  bool num_attr(const char *name) {
    const plan::Instr *in = call_.instr;
    if (in) {
      auto it = in->attrs.find(name);
      if (it != in->attrs.end()) {
        if (std::holds_alternative<int64_t>(it->second) ||
            std::holds_alternative<double>(it->second))
          return true;
        return set(std::string("attr ") + name + " must be a number");
      }
    }
    return set(std::string("missing required attr ") + name);
  }
  bool positive(int64_t v, const char *what) {
    if (v > 0) return true;
    return set(std::string(what) + " must be positive, got " + std::to_string(v));
  }
  bool expect(bool cond, const std::string &msg) { return cond || set(msg); }

  Status status() const { return status_; }
  Status error(const std::string &msg) const { return fail(call_, kernel_, msg); }

private:
  static const char *dtype_name(plan::ElemType t) {
    return t == plan::ElemType::F32 ? "f32" : t == plan::ElemType::I32 ? "i32" : "?";
  }
  bool typed(const Tensor &t, const char *what, plan::ElemType want) {
    if (!t.present()) return expect(false, std::string("operand ") + what + " is absent");
    return expect(t.dtype == want, std::string("operand ") + what + " must be " +
                                       dtype_name(want) + ", got " + dtype_name(t.dtype));
  }
  bool set(const std::string &msg) {
    if (status_.is_ok()) status_ = fail(call_, kernel_, msg);
    return false;
  }
  const KernelCall &call_;
  const char *kernel_;
  Status status_;
};

//===--------------------------------------------------------------------===//
// Managed scratch
//===--------------------------------------------------------------------===//

/// A grow-only cudaMallocManaged buffer. Growing waits for the stream first (a queued kernel
/// may still use the old block). Never freed (lives as long as the process / thread).
/// Declare instances `static thread_local` in the .cu that uses them: ranks run as processes,
/// but a test driving several ranks from threads of one process must not share scratch.
class ManagedScratch {
public:
  /// At least `bytes` bytes (never null on success, even for 0 bytes).
  template <typename T> StatusOr<T *> get(size_t count) {
    size_t bytes = count * sizeof(T);
    if (bytes == 0) bytes = sizeof(T);
    if (bytes > bytes_) {
      if (ptr_) {
        if (Status s = sync_stream(); !s) return s;
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
