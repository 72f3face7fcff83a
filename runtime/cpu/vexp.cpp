//===- vexp.cpp - exp_shifted, cloned for AVX-512 / AVX2 / SSE2 -----------===//
//
// The build has no -march (the binary runs on any x86-64); GCC's target_clones builds this
// loop once per instruction set and picks one when the program loads. With -ffp-contract=off
// no clone fuses a multiply-add, so all of them compute vexp's operations in vexp's order.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/vexp.h"

namespace parallora::rt::cpu::detail {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void exp_shifted(const float *x, float m, float *e, int64_t n) {
  for (int64_t i = 0; i < n; ++i) e[i] = vexp(x[i] - m);
}

} // namespace parallora::rt::cpu::detail
