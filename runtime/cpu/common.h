//===- common.h - shared helpers of the CPU kernels (private to runtime/cpu) -===//
//
// Operand validation that turns every contract violation into a Status naming the kernel,
// the instruction's loc and the mismatching sizes, plus the GEMM (gemm.cpp).
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

/// C = alpha op(A) op(B) + beta C, row-major (cblas_sgemm's arguments). oneDNN or OpenBLAS
/// (blas_core.h), cut into tiles by the shape alone, so the result does not depend on the
/// thread count (gemm.cpp).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
           int64_t ldc);

/// While alive (and `active`), sgemm calls of this thread run their tiles one after another on
/// this thread, and a pthread OpenBLAS runs single-threaded (its previous count is restored by
/// the destructor). For kernels that parallelise around their GEMMs themselves. Create it
/// outside parallel regions (inside one, sgemm is serial anyway).
class SerialBlas {
public:
  explicit SerialBlas(bool active);
  ~SerialBlas();
  SerialBlas(const SerialBlas &) = delete;
  SerialBlas &operator=(const SerialBlas &) = delete;

private:
  bool active_ = false;
  int saved_ = 0;  // OpenBLAS threads to restore; 0: nothing to restore
};

} // namespace parallora::rt::cpu::detail
