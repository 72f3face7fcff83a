//===- gemm.cpp - the CPU GEMMs: oneDNN or OpenBLAS, in tiles fixed by shape --------===//
//
// Every GEMM of the CPU kernels goes through detail::sgemm (row-major, as cblas_sgemm).
//
// Library. oneDNN's dnnl_sgemm (Debian libdnnl) when the build found it, else OpenBLAS's
// cblas_sgemm; PARALLORA_CPU_GEMM=onednn|openblas (or lora-run --cpu-gemm) chooses. oneDNN
// generates its kernels for the CPU it runs on (AVX-512 where there is AVX-512) and does not read
// OPENBLAS_CORETYPE, which pins OpenBLAS to one kernel set (docs/benchmarks.md, "CPU levers").
//
// Tiles. A GEMM is cut into tiles by its shape alone: at most kMaxTiles, each of at least
// kTileWork multiply-adds, along M (whole rows of C) when M has at least 32 rows per tile, else
// along N. Each tile is one single-threaded library call, and the tiles run on the OpenMP team
// (or one after another inside a parallel region, or under SerialBlas). The reduction over K is
// never split and no tile boundary depends on the thread count, so C is the same bit for bit
// with 1, 2 or 64 threads. (Both libraries split K on their own when left to thread a skinny
// GEMM: oneDNN 2.6 gave different bits with 1 and 8 threads for 16 x 256 x 8192.) The price:
// one GEMM uses at most kMaxTiles threads (measured on 2 cores, 8 tiles cost ~5% against 2).
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/blas_core.h"
#include "runtime/cpu/common.h"

// OpenBLAS's thread accessors, declared weak (before cblas.h declares them) so a build against
// another CBLAS still links.
extern "C" void openblas_set_num_threads(int num_threads) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
extern "C" int openblas_get_parallel(void) __attribute__((weak));

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef PARALLORA_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace parallora::rt::cpu {

namespace {

// -1: not chosen yet (resolved from PARALLORA_CPU_GEMM on first use).
std::atomic<int> g_library{-1};

GemmLibrary default_library() {
  const char *v = std::getenv("PARALLORA_CPU_GEMM");
  if (v && std::strcmp(v, "openblas") == 0) return GemmLibrary::kOpenBlas;
  return gemm_library_available(GemmLibrary::kOneDnn) ? GemmLibrary::kOneDnn : GemmLibrary::kOpenBlas;
}

thread_local int t_serial = 0;  // > 0 while a SerialBlas is alive on this thread

} // namespace

bool gemm_library_available(GemmLibrary lib) {
#ifdef PARALLORA_HAVE_ONEDNN
  (void)lib;
  return true;
#else
  return lib == GemmLibrary::kOpenBlas;
#endif
}

std::string set_gemm_library(const std::string &name) {
  if (name.empty() || name == "auto") {
    const char *v = std::getenv("PARALLORA_CPU_GEMM");
    if (v && *v && std::strcmp(v, "auto") != 0) {  // the environment's choice, checked like the flag's
      const std::string err = set_gemm_library(v);
      return err.empty() ? "" : "PARALLORA_CPU_GEMM=" + std::string(v) + ": " + err;
    }
    g_library.store(int(default_library()));
    return "";
  }
  GemmLibrary lib;
  if (name == "onednn") lib = GemmLibrary::kOneDnn;
  else if (name == "openblas") lib = GemmLibrary::kOpenBlas;
  else return "unknown GEMM library '" + name + "' (choose auto, onednn or openblas)";
  if (!gemm_library_available(lib))
    return "this build has no oneDNN (install libdnnl-dev and rebuild: scripts/install_deps.sh, scripts/build.sh)";
  g_library.store(int(lib));
  return "";
}

GemmLibrary gemm_library() {
  int v = g_library.load();
  if (v < 0) {
    v = int(default_library());
    g_library.store(v);
  }
  return GemmLibrary(v);
}

std::string gemm_library_description() {
#ifdef PARALLORA_HAVE_ONEDNN
  if (gemm_library() == GemmLibrary::kOneDnn) {
    const dnnl_version_t *ver = dnnl_version();
    std::string isa;
    switch (dnnl_get_effective_cpu_isa()) {
      case dnnl_cpu_isa_sse41: isa = "sse4.1"; break;
      case dnnl_cpu_isa_avx: isa = "avx"; break;
      case dnnl_cpu_isa_avx2: isa = "avx2"; break;
      case dnnl_cpu_isa_avx512_core: isa = "avx512"; break;
      case dnnl_cpu_isa_avx512_core_vnni: isa = "avx512 vnni"; break;
      case dnnl_cpu_isa_avx512_core_bf16: isa = "avx512 bf16"; break;
      default: isa = "isa " + std::to_string(int(dnnl_get_effective_cpu_isa())); break;
    }
    return "oneDNN " + std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch) + " (" + isa + ")";
  }
#endif
  const std::string core = openblas_core();
  return core.empty() ? "CBLAS" : "OpenBLAS " + core;
}

namespace detail {

SerialBlas::SerialBlas(bool active) {
  if (!active) return;
  active_ = true;
  ++t_serial;
  // Only OpenBLAS's pthread build (parallel == 1) threads on its own; its OpenMP build follows
  // OpenMP's per-thread count, which serial_call sets (and openblas_set_num_threads would change
  // OpenMP's count for our loops too).
  if (!openblas_get_parallel || openblas_get_parallel() != 1) return;
  if (!openblas_get_num_threads || !openblas_set_num_threads) return;
  const int n = openblas_get_num_threads();
  if (n <= 1) return;
  saved_ = n;
  openblas_set_num_threads(1);
}

SerialBlas::~SerialBlas() {
  if (active_) --t_serial;
  if (saved_ > 0) openblas_set_num_threads(saved_);
}

namespace {

constexpr int64_t kMaxTiles = 8;
constexpr int64_t kTileWork = int64_t(1) << 21;  // multiply-adds

struct Tiling {
  int64_t tiles = 1;
  bool along_m = true;
};

// The cut of an M x N x K product: a function of the shape only.
Tiling tiling(int64_t M, int64_t N, int64_t K) {
  const double work = double(M) * double(N) * double(K);
  const int64_t want = std::min<int64_t>(kMaxTiles, std::max<int64_t>(1, int64_t(work / double(kTileWork))));
  Tiling t;
  if (want <= 1) return t;
  if (M >= 64) {
    t.tiles = std::min<int64_t>(want, M / 32);
  } else {
    t.along_m = false;
    t.tiles = std::min<int64_t>(want, std::max<int64_t>(1, N / 32));
  }
  return t;
}

// One single-threaded library call. OpenMP's thread count of this thread is 1 during the call:
// oneDNN and OpenBLAS's OpenMP build then run on the calling thread (a pthread OpenBLAS was made
// serial by a SerialBlas).
void serial_call(GemmLibrary lib, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                 int64_t ldc) {
  const int saved = omp_get_max_threads();
  if (saved != 1) omp_set_num_threads(1);
  bool done = false;
#ifdef PARALLORA_HAVE_ONEDNN
  // dnnl_sgemm fails only on arguments the kernels' checks already exclude; OpenBLAS then.
  done = lib == GemmLibrary::kOneDnn &&
         dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) == dnnl_success;
#else
  (void)lib;
#endif
  if (!done)
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
                static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
  if (saved != 1) omp_set_num_threads(saved);
}

} // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
           int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  const GemmLibrary lib = gemm_library();
  const Tiling t = tiling(M, N, K);
  auto tile = [&](int64_t i) {
    if (t.along_m) {
      const int64_t m0 = M * i / t.tiles, m1 = M * (i + 1) / t.tiles;
      const float *a = trans_a ? A + m0 : A + m0 * lda;
      serial_call(lib, trans_a, trans_b, m1 - m0, N, K, alpha, a, lda, B, ldb, beta, C + m0 * ldc, ldc);
    } else {
      const int64_t n0 = N * i / t.tiles, n1 = N * (i + 1) / t.tiles;
      const float *b = trans_b ? B + n0 * ldb : B + n0;
      serial_call(lib, trans_a, trans_b, M, n1 - n0, K, alpha, A, lda, b, ldb, beta, C + n0, ldc);
    }
  };
  const bool nested = omp_in_parallel();
  // Tiles one after another: one tile, inside a parallel region, under a caller's SerialBlas, or
  // one thread; else on the team.
  const bool in_turn = t.tiles == 1 || nested || t_serial > 0 || omp_get_max_threads() == 1;
  SerialBlas serial(!nested);  // pthread OpenBLAS: one thread per call (not from inside a region)
  if (in_turn) {
    for (int64_t i = 0; i < t.tiles; ++i) tile(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < t.tiles; ++i) tile(i);
}

} // namespace detail

} // namespace parallora::rt::cpu
