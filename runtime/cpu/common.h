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

/// Dot product of n floats (fp32 accumulation). Out of line on purpose: one compiled body,
/// so every caller (e.g. attention forward and both backward phases) rounds identically.
float dot(const float *a, const float *b, int64_t n);

} // namespace parallora::rt::cpu::detail
