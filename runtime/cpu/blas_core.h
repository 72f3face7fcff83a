//===- blas_core.h - which OpenBLAS kernels the CPU GEMMs use --------------===//
//
// OpenBLAS (DYNAMIC_ARCH) picks its kernel set from the CPU when it is loaded, or takes the one
// OPENBLAS_CORETYPE names. The set decides the GEMM speed (docs/benchmarks.md, "CPU levers": on
// an AVX-512 machine the AVX2 "Haswell" set ran SGEMM at half the speed of "Cooperlake"), so
// lora-run's run header names it.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <string>

namespace parallora::rt::cpu {

/// The OpenBLAS kernel set in use ("Haswell", "Cooperlake", ...), or "" when the CBLAS is not
/// OpenBLAS.
std::string openblas_core();

} // namespace parallora::rt::cpu
