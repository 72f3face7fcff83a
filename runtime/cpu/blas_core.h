//===- blas_core.h - which library and kernels the CPU GEMMs use ----------===//
//
// The CPU GEMMs (runtime/cpu/gemm.cpp) run on oneDNN (dnnl_sgemm) when the build found it, else
// on OpenBLAS. PARALLORA_CPU_GEMM=onednn|openblas or set_gemm_library (lora-run --cpu-gemm)
// chooses; lora-run's run header prints gemm_library_description().
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

enum class GemmLibrary { kOneDnn, kOpenBlas };

/// Whether this build can use `lib` (OpenBLAS always; oneDNN when CMake found libdnnl).
bool gemm_library_available(GemmLibrary lib);

/// Chooses the library for every later GEMM: "auto" (or "": PARALLORA_CPU_GEMM, else oneDNN
/// when built in), "onednn" or "openblas". Returns "" or the reason it cannot.
std::string set_gemm_library(const std::string &name);

GemmLibrary gemm_library();

/// "oneDNN 2.6.3 (avx512)" or "OpenBLAS Haswell": what the run header prints.
std::string gemm_library_description();

} // namespace parallora::rt::cpu
