//===- common.h - shared helpers of the CPU kernels (private to runtime/cpu) -===//
//
// Operand validation that turns every contract violation into a Status naming the kernel,
// the instruction's loc and the mismatching sizes, plus a cblas_sgemm wrapper.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/kernel.h"
#include "runtime/kernel_check.h"

namespace parallora::rt::cpu::detail {

using rt::shape_str;
using Check = rt::KernelCheck;
inline Status fail(const KernelCall &call, const char *kernel, const std::string &msg) {
  return rt::kernel_error(call, kernel, msg);
}

constexpr int64_t kParallelWork = int64_t(1) << 15;

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
           int64_t ldc);

/// While alive (and `active`), OpenBLAS runs single-threaded; the destructor restores its
/// previous thread count. For sgemm calls made from inside an OpenMP parallel region: the
/// pthreads OpenBLAS would otherwise start its own threads from every caller and oversubscribe
/// the cores. A no-op when the CBLAS is not OpenBLAS. Not reentrant across threads: create it
/// outside the parallel region (the kernels run one at a time).
class SerialBlas {
public:
  explicit SerialBlas(bool active);
  ~SerialBlas();
  SerialBlas(const SerialBlas &) = delete;
  SerialBlas &operator=(const SerialBlas &) = delete;

private:
  int saved_ = 0;  // 0: nothing to restore
};

} // namespace parallora::rt::cpu::detail
