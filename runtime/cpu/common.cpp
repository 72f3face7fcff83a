//===- common.cpp - shared helpers of the CPU kernels ---------------------===//
#include "runtime/cpu/common.h"

// OpenBLAS's thread-count accessors, declared weak (before cblas.h declares them) so a build
// against another CBLAS still links; SerialBlas is then a no-op.
extern "C" void openblas_set_num_threads(int num_threads) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

#include <cblas.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <sstream>

namespace parallora::rt::cpu::detail {

SerialBlas::SerialBlas(bool active) {
  if (!active || !openblas_get_num_threads || !openblas_set_num_threads) return;
  const int n = openblas_get_num_threads();
  if (n <= 1) return;
  saved_ = n;
  openblas_set_num_threads(1);
}

SerialBlas::~SerialBlas() {
  if (saved_ > 0) openblas_set_num_threads(saved_);
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
           int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

} // namespace parallora::rt::cpu::detail
