//===- matmul.cu - linear_fwd, linear_bwd_input, lora_linear_fwd/bwd (cuBLASLt) ---===//
//
// Same operands, checks and GEMM sequence as runtime/cpu/matmul.cpp, with each row-major
// sgemm done by cublasLtMatmul in fp32 (CUBLAS_COMPUTE_32F: no TF32, no reduced precision).
//
// Row-major -> column-major: a row-major (R x C) matrix with leading dimension ld is the
// column-major (C x R) matrix with the same ld. So row-major C = op(A) op(B) (M x N) is
// computed as column-major C^T = op(B)^T op(A)^T: m = N, n = M, k = K, cuBLAS's A operand is
// our B (transposed iff trans_b), its B operand is our A (transposed iff trans_a).
//
// One cuBLASLt handle and one 32 MiB workspace per process, created on first use. The chosen
// algorithm (cublasLtMatmulAlgoGetHeuristic, best result) is cached with its descriptors per
// (m, n, k, transa, transb, lda, ldb, ldc, pointer alignments of A/B/C): a training step
// repeats the same few shapes, so the heuristic runs once per shape.
//
// Bias: a broadcast kernel writes the bias rows into y, then the GEMM adds with beta = 1 (the
// CPU twin's order). The BIAS epilogue would save that pass (a later optimization).
// LoRA temporaries (x A^T and dy B, M x r) live in a stream-ordered grow-only device scratch.
//
//===----------------------------------------------------------------------===//
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "runtime/cuda/common.cuh"
#include "runtime/cuda/device_util.cuh"
#include "runtime/cuda/kernels_impl.h"

namespace parallora::rt::cuda::impl {

using util::Check;

namespace {

/// Check::rows_eq of runtime/cpu/common.h (same message): rows_of, and the row count must match.
struct RowsEq {
  Check &ck;
  bool operator()(const Tensor &t, const char *what, int64_t d, int64_t rows) const {
    int64_t r = 0;
    if (!ck.rows_of(t, what, d, &r)) return false;
    return ck.expect(r == rows, std::string(what) + " has shape " + util::shape_str(t.shape) + " (" +
                                    std::to_string(r) + " rows of " + std::to_string(d) + "), expected " +
                                    std::to_string(rows) + " rows");
  }
};

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

Status lt_status(cublasStatus_t st, const char *what) {
  if (st == CUBLAS_STATUS_SUCCESS) return Status::ok();
  return Status::error(std::string(what) + ": " + cublasLtGetStatusString(st));
}

struct GemmKey {
  int64_t m, n, k, lda, ldb, ldc;
  int transa, transb;
  uint32_t align_a, align_b, align_c;
  bool operator<(const GemmKey &o) const {
    return std::tie(m, n, k, lda, ldb, ldc, transa, transb, align_a, align_b, align_c) <
           std::tie(o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.transa, o.transb, o.align_a, o.align_b, o.align_c);
  }
};

struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

/// The process's cuBLASLt state (never destroyed: kernels may run until exit).
struct Lt {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  void *workspace = nullptr;
  Status init_status;
  std::map<GemmKey, GemmPlan> plans;
};

Lt &lt() {
  static Lt *state = [] {
    auto *s = new Lt();
    s->init_status = lt_status(cublasLtCreate(&s->handle), "cublasLtCreate");
    if (s->init_status)
      s->init_status = cuda_status(cudaMalloc(&s->workspace, kWorkspaceBytes), "cudaMalloc (cuBLASLt workspace)");
    return s;
  }();
  return *state;
}

uint32_t alignment(const void *p) {
  uintptr_t v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 4 && (v % a) != 0) a >>= 1;
  return a;
}

Status make_plan(Lt &s, const GemmKey &key, GemmPlan *out) {
  GemmPlan p;
  const cublasOperation_t ta = key.transa ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = key.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  Status st = lt_status(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  if (st) st = lt_status(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  if (st) st = lt_status(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  // Stored (pre-op) shapes, column-major: A is (m x k) or (k x m) when transposed, etc.
  const uint64_t a_rows = key.transa ? key.k : key.m, a_cols = key.transa ? key.m : key.k;
  const uint64_t b_rows = key.transb ? key.n : key.k, b_cols = key.transb ? key.k : key.n;
  if (st) st = lt_status(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, a_rows, a_cols, key.lda), "layout A");
  if (st) st = lt_status(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, b_rows, b_cols, key.ldb), "layout B");
  if (st) st = lt_status(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, key.m, key.n, key.ldc), "layout C");
  cublasLtMatmulPreference_t pref = nullptr;
  if (st) st = lt_status(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  if (st) {
    size_t ws = kWorkspaceBytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_a, sizeof(uint32_t));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_b, sizeof(uint32_t));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c, sizeof(uint32_t));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c, sizeof(uint32_t));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    st = lt_status(cublasLtMatmulAlgoGetHeuristic(s.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found),
                   "cublasLtMatmulAlgoGetHeuristic");
    if (st && found == 0)
      st = Status::error("cuBLASLt has no fp32 algorithm for m=" + std::to_string(key.m) + " n=" +
                         std::to_string(key.n) + " k=" + std::to_string(key.k));
    if (st) {
      p.algo = result.algo;
      p.workspace = result.workspaceSize;
    }
  }
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (!st) {
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
    return st;
  }
  *out = p;
  return Status::ok();
}

__global__ void scale_rows_kernel(float *C, int64_t M, int64_t N, int64_t ldc, float beta) {
  PARALLORA_GRID_LOOP(i, M * N) {
    const int64_t r = i / N, j = i % N;
    float *c = C + r * ldc + j;
    *c = beta == 0.0f ? 0.0f : beta * *c;
  }
}

__global__ void bias_rows_kernel(float *y, const float *bias, int64_t M, int64_t N) {
  PARALLORA_GRID_LOOP(i, M * N) { y[i] = bias[i % N]; }
}

/// Row-major C = alpha * op(A) op(B) + beta * C, op(A) (M,K), op(B) (K,N) — the CPU twin's
/// detail::sgemm on stream(). K == 0 scales C by beta (beta == 0: overwrite with 0).
Status sgemm(const char *kernel, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
             const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return Status::ok();
  if (K <= 0) {
    scale_rows_kernel<<<blocks_for(M * N), 256, 0, stream()>>>(C, M, N, ldc, beta);
    return check_launch(kernel);
  }
  GemmKey key{N, M, K, ldb, lda, ldc, trans_b ? 1 : 0, trans_a ? 1 : 0, alignment(B), alignment(A), alignment(C)};
  Lt &s = lt();
  const GemmPlan *p = nullptr;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.init_status) return Status::error(std::string(kernel) + ": " + s.init_status.message());
    auto it = s.plans.find(key);
    if (it == s.plans.end()) {
      GemmPlan np;
      if (Status st = make_plan(s, key, &np); !st) return Status::error(std::string(kernel) + ": " + st.message());
      it = s.plans.emplace(key, np).first;
    }
    p = &it->second;  // std::map nodes are stable
  }
  // Column-major: cuBLAS A = our B, cuBLAS B = our A; D = C in place.
  cublasStatus_t st = cublasLtMatmul(s.handle, p->desc, &alpha, B, p->a, A, p->b, &beta, C, p->c, C, p->c, &p->algo,
                                     s.workspace, p->workspace, stream());
  if (st != CUBLAS_STATUS_SUCCESS)
    return Status::error(std::string(kernel) + ": cublasLtMatmul (M=" + std::to_string(M) + " N=" +
                         std::to_string(N) + " K=" + std::to_string(K) + "): " + cublasLtGetStatusString(st));
  return Status::ok();
}

/// A grow-only device scratch, ordered on stream() (cudaMallocAsync / cudaFreeAsync), so
/// growing never waits for the GPU.
class DeviceScratch {
public:
  StatusOr<float *> get(size_t floats) {
    size_t bytes = std::max<size_t>(floats * sizeof(float), 256);
    if (bytes > bytes_) {
      if (ptr_) cudaFreeAsync(ptr_, stream());
      ptr_ = nullptr;
      bytes_ = 0;
      if (Status s = cuda_status(cudaMallocAsync(&ptr_, bytes, stream()), "cudaMallocAsync (LoRA scratch)"); !s)
        return s;
      bytes_ = bytes;
    }
    return static_cast<float *>(ptr_);
  }

private:
  void *ptr_ = nullptr;
  size_t bytes_ = 0;
};

/// Two M x r temporaries, each 256-byte aligned.
StatusOr<std::pair<float *, float *>> lora_scratch(int64_t M, int64_t r) {
  static thread_local DeviceScratch scratch;
  const size_t one = (size_t(M * r) + 63) / 64 * 64;
  StatusOr<float *> p = scratch.get(2 * one);
  if (!p) return p.status();
  return std::make_pair(*p, *p + one);
}

// y rows = bias (or 0), then y += x W^T.
Status linear_into(const char *kernel, const float *x, const float *W, const float *bias, float *y, int64_t M,
                   int64_t N, int64_t K) {
  if (bias && M * N > 0) {
    bias_rows_kernel<<<blocks_for(M * N), 256, 0, stream()>>>(y, bias, M, N);
    if (Status s = check_launch(kernel); !s) return s;
  }
  return sgemm(kernel, false, true, M, N, K, 1.0f, x, K, W, K, bias ? 1.0f : 0.0f, y, N);
}

} // namespace

// x (..,K), W (N,K), bias (N) or absent -> y (..,N) = x W^T + bias.
Status linear_fwd(KernelCall &c) {
  Check ck(c, "linear_fwd");
  RowsEq rows_eq{ck};
  if (!ck.operands(2, 3, 1)) return ck.status();
  const Tensor &x = c.in[0], &W = c.in[1], &y = c.out[0];
  const Tensor *bias = c.in.size() > 2 && c.in[2].present() ? &c.in[2] : nullptr;
  if (!ck.f32(x, "x") || !ck.f32(W, "W") || !ck.f32(y, "y") || !ck.rank(W, "W", 2)) return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.rows_of(x, "x", K, &M) || !rows_eq(y, "y", N, M))
    return ck.status();
  if (bias && (!ck.f32(*bias, "bias") || !ck.shape(*bias, "bias", {N}))) return ck.status();
  return linear_into("linear_fwd", x.f32(), W.f32(), bias ? bias->f32() : nullptr, y.f32(), M, N, K);
}

// dy (..,N), W (N,K) -> dx (..,K) = dy W (+= with accumulate = 1).
Status linear_bwd_input(KernelCall &c) {
  Check ck(c, "linear_bwd_input");
  RowsEq rows_eq{ck};
  if (!ck.operands(2, 2, 1, /*allow_accumulate=*/true)) return ck.status();
  const Tensor &dy = c.in[0], &W = c.in[1], &dx = c.out[0];
  if (!ck.f32(dy, "dy") || !ck.f32(W, "W") || !ck.f32(dx, "dx") || !ck.rank(W, "W", 2)) return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1);
  int64_t M = 0;
  if (!ck.rows_of(dy, "dy", N, &M) || !rows_eq(dx, "dx", K, M)) return ck.status();
  const bool acc = c.attr_i("accumulate", 0) != 0;
  return sgemm("linear_bwd_input", false, false, M, K, N, 1.0f, dy.f32(), N, W.f32(), K, acc ? 1.0f : 0.0f,
               dx.f32(), K);
}

// x (..,K), W (N,K), A (r,K), B (N,r), bias (N) or absent -> y (..,N)
//   y = x W^T + bias + scaling * (x A^T) B^T
Status lora_linear_fwd(KernelCall &c) {
  const char *K_ = "lora_linear_fwd";
  Check ck(c, K_);
  RowsEq rows_eq{ck};
  if (!ck.operands(4, 5, 1) || !ck.num_attr("scaling")) return ck.status();
  const Tensor &x = c.in[0], &W = c.in[1], &A = c.in[2], &B = c.in[3], &y = c.out[0];
  const Tensor *bias = c.in.size() > 4 && c.in[4].present() ? &c.in[4] : nullptr;
  if (!ck.f32(x, "x") || !ck.f32(W, "W") || !ck.f32(A, "A") || !ck.f32(B, "B") || !ck.f32(y, "y") ||
      !ck.rank(W, "W", 2) || !ck.rank(A, "A", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1), r = A.dim(0);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.positive(r, "A dim 0 (r)") || !ck.shape(A, "A", {r, K}) ||
      !ck.shape(B, "B", {N, r}) || !ck.rows_of(x, "x", K, &M) || !rows_eq(y, "y", N, M))
    return ck.status();
  if (bias && (!ck.f32(*bias, "bias") || !ck.shape(*bias, "bias", {N}))) return ck.status();
  const float s = float(c.attr_f("scaling", 0.0));
  auto tmp = lora_scratch(M, r);
  if (!tmp) return ck.error(tmp.message());
  float *xa = tmp->first;
  if (Status st = sgemm(K_, false, true, M, r, K, 1.0f, x.f32(), K, A.f32(), K, 0.0f, xa, r); !st) return st;
  if (Status st = linear_into(K_, x.f32(), W.f32(), bias ? bias->f32() : nullptr, y.f32(), M, N, K); !st) return st;
  return sgemm(K_, false, true, M, N, r, s, xa, r, B.f32(), r, 1.0f, y.f32(), N);  // += s xa B^T
}

// dy (..,N), x (..,K), W (N,K), A (r,K), B (N,r) -> dx (..,K), dA (r,K), dB (N,r)
//   dx = dy W + s (dy B) A;  dA = s (dy B)^T x;  dB = s dy^T (x A^T)
// accumulate = 1 adds into dA and dB (gradient accumulators); dx is always overwritten.
Status lora_linear_bwd(KernelCall &c) {
  const char *K_ = "lora_linear_bwd";
  Check ck(c, K_);
  RowsEq rows_eq{ck};
  if (!ck.operands(5, 5, 3, /*allow_accumulate=*/true) || !ck.num_attr("scaling")) return ck.status();
  const Tensor &dy = c.in[0], &x = c.in[1], &W = c.in[2], &A = c.in[3], &B = c.in[4];
  const Tensor &dx = c.out[0], &dA = c.out[1], &dB = c.out[2];
  if (!ck.f32(dy, "dy") || !ck.f32(x, "x") || !ck.f32(W, "W") || !ck.f32(A, "A") || !ck.f32(B, "B") ||
      !ck.f32(dx, "dx") || !ck.f32(dA, "dA") || !ck.f32(dB, "dB") || !ck.rank(W, "W", 2) || !ck.rank(A, "A", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1), r = A.dim(0);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.positive(r, "A dim 0 (r)") || !ck.shape(A, "A", {r, K}) ||
      !ck.shape(B, "B", {N, r}) || !ck.rows_of(x, "x", K, &M) || !rows_eq(dy, "dy", N, M) ||
      !rows_eq(dx, "dx", K, M) || !ck.shape(dA, "dA", {r, K}) || !ck.shape(dB, "dB", {N, r}))
    return ck.status();
  const float s = float(c.attr_f("scaling", 0.0));
  const float beta = c.attr_i("accumulate", 0) != 0 ? 1.0f : 0.0f;
  auto tmp = lora_scratch(M, r);
  if (!tmp) return ck.error(tmp.message());
  float *u = tmp->first, *xa = tmp->second;
  Status st = sgemm(K_, false, false, M, r, N, 1.0f, dy.f32(), N, B.f32(), r, 0.0f, u, r);  // dy B
  if (st) st = sgemm(K_, false, true, M, r, K, 1.0f, x.f32(), K, A.f32(), K, 0.0f, xa, r);  // x A^T
  if (st) st = sgemm(K_, false, false, M, K, N, 1.0f, dy.f32(), N, W.f32(), K, 0.0f, dx.f32(), K);  // dy W
  if (st) st = sgemm(K_, false, false, M, K, r, s, u, r, A.f32(), K, 1.0f, dx.f32(), K);  // += s u A
  if (st) st = sgemm(K_, true, false, r, K, M, s, u, r, x.f32(), K, beta, dA.f32(), K);  // s u^T x
  if (st) st = sgemm(K_, true, false, N, r, M, s, dy.f32(), N, xa, r, beta, dB.f32(), r);  // s dy^T xa
  return st;
}

} // namespace parallora::rt::cuda::impl
