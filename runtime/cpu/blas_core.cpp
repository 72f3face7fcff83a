//===- blas_core.cpp - the OpenBLAS kernel set in use ----------------------===//
#include "runtime/cpu/blas_core.h"

// OpenBLAS's own accessor, weak so another CBLAS still links.
extern "C" char *openblas_get_corename(void) __attribute__((weak));

namespace parallora::rt::cpu {

std::string openblas_core() {
  if (!openblas_get_corename) return "";
  const char *n = openblas_get_corename();
  return n ? n : "";
}

} // namespace parallora::rt::cpu
