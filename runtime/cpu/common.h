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

namespace parallora::rt::cpu::detail {

std::string shape_str(const std::vector<int64_t> &shape);

/// Loops with less work than this (elements touched, roughly) run on the calling thread: a
/// parallel region costs more than it saves there, and much more on an oversubscribed machine.
/// Every kernel computes each output element with the same operations either way.
constexpr int64_t kParallelWork = int64_t(1) << 15;

/// "<kernel> (<loc>): <msg>".
Status fail(const KernelCall &call, const char *kernel, const std::string &msg);

/// Validates one kernel call. Every method returns false after recording the first error;
/// `status()` returns it. Usage:
///   Check ck(call, "rms_norm_fwd");
///   if (!ck.operands(2, 2, 1) || !ck.f32(call.in[0], "x")) return ck.status();
class Check {
public:
  Check(const KernelCall &call, const char *kernel) : call_(call), kernel_(kernel) {}

  /// in.size() in [nin_min, nin_max], out.size() == nout. Unless `allow_accumulate`, an
  /// `accumulate` attr other than 0 is rejected (the kernel cannot honour it).
  bool operands(size_t nin_min, size_t nin_max, size_t nout, bool allow_accumulate = false);
  /// Present and of the given element type.
  bool f32(const Tensor &t, const char *what);
  bool i32(const Tensor &t, const char *what);
  bool rank(const Tensor &t, const char *what, int rank);
  bool shape(const Tensor &t, const char *what, const std::vector<int64_t> &expected);
  /// (.., d) with rank >= 1 and d > 0; *rows = numel / d (the flattened leading dims).
  bool rows_of(const Tensor &t, const char *what, int64_t d, int64_t *rows);
  /// Same as rows_of, and the row count must equal `rows`.
  bool rows_eq(const Tensor &t, const char *what, int64_t d, int64_t rows);
  /// Same shape as `ref` (named ref_what).
  bool same_shape(const Tensor &t, const char *what, const Tensor &ref, const char *ref_what);
  /// The attr is present and numeric (int64 or double).
  bool num_attr(const char *name);
  /// A dimension that must be > 0.
  bool positive(int64_t v, const char *what);
  /// Records an error unless cond.
  bool expect(bool cond, const std::string &msg);

  Status status() const { return status_; }
  Status error(const std::string &msg) const { return fail(call_, kernel_, msg); }

private:
  bool set(const std::string &msg);
  const KernelCall &call_;
  const char *kernel_;
  Status status_;
};

/// Row-major C = alpha * op(A) op(B) + beta * C with op(A) (M,K), op(B) (K,N), via cblas_sgemm;
/// handles empty dimensions (K == 0 scales C by beta, beta == 0 means overwrite).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
           int64_t ldc);

/// Dot product of n floats (fp32 accumulation). Out of line on purpose: one compiled body,
/// so every caller (e.g. attention forward and both backward phases) rounds identically.
float dot(const float *a, const float *b, int64_t n);

} // namespace parallora::rt::cpu::detail
