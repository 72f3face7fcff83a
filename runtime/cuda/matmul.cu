//===- matmul.cu - linear_fwd, linear_bwd_input, lora_linear_fwd/bwd (cuBLASLt) ---===//
//
// Same operands, checks and GEMM sequence as runtime/cpu/matmul.cpp, with each row-major
// sgemm done by cublasLtMatmul with f32 compute (CUBLAS_COMPUTE_32F: no TF32, no reduced
// precision).
//
// bf16 (runtime/cuda/bf16.cuh): a GEMM whose two operands are both bf16 runs natively (A/B
// CUDA_R_16BF, f32 compute, C/D f32 or bf16: cuBLASLt evaluates alpha*AB + beta*C in f32 and
// rounds D once). An f32 x bf16 pair (a bf16 activation meeting an f32 LoRA factor or f32
// temporary) runs in f32 on a widened copy of the bf16 operand (exact); an f32 GEMM into a bf16
// output goes through an f32 copy of the output, rounded once at the end. An output that takes
// two GEMMs (lora_linear_fwd's y, lora_linear_bwd's dx) is accumulated in an f32 copy when it
// is bf16 and rounded once. All temporaries live in a per-thread ScratchPool (slots below).
//
// Row-major -> column-major: a row-major (R x C) matrix with leading dimension ld is the
// column-major (C x R) matrix with the same ld. So row-major C = op(A) op(B) (M x N) is
// computed as column-major C^T = op(B)^T op(A)^T: m = N, n = M, k = K, cuBLAS's A operand is
// our B (transposed iff trans_b), its B operand is our A (transposed iff trans_a).
//
// One cuBLASLt handle and one 32 MiB workspace per process, created on first use. The chosen
// algorithm (cublasLtMatmulAlgoGetHeuristic, best result) is cached with its descriptors per
// (m, n, k, transa, transb, lda, ldb, ldc, pointer alignments of A/B/C, A/B and C types): a training step
// repeats the same few shapes, so the heuristic runs once per shape.
//
// Bias: a broadcast kernel writes the bias rows into y, then the GEMM adds with beta = 1 (the
// CPU twin's order). The BIAS epilogue would save that pass (a later optimization).
// LoRA temporaries (x A^T and dy B, M x r) live in the stream-ordered grow-only ScratchPool.
//
//===----------------------------------------------------------------------===//
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "runtime/cuda/bf16.cuh"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/device_util.cuh"
#include "runtime/cuda/graph.cuh"
#include "runtime/cuda/kernels_impl.h"
#include "runtime/lora_dropout.h"

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
  int ab_type, c_type;  // cudaDataType of A/B and of C/D
  bool operator<(const GemmKey &o) const {
    return std::tie(m, n, k, lda, ldb, ldc, transa, transb, align_a, align_b, align_c, ab_type, c_type) <
           std::tie(o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.transa, o.transb, o.align_a, o.align_b, o.align_c,
                    o.ab_type, o.c_type);
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
  while (a > 2 && (v % a) != 0) a >>= 1;  // bf16 operands may start at any even address
  return a;
}

Status make_plan(Lt &s, const GemmKey &key, GemmPlan *out) {
  GemmPlan p;
  const cublasOperation_t ta = key.transa ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = key.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType ab = cudaDataType(key.ab_type), ct = cudaDataType(key.c_type);
  Status st = lt_status(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  if (st) st = lt_status(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  if (st) st = lt_status(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  // Stored (pre-op) shapes, column-major: A is (m x k) or (k x m) when transposed, etc.
  const uint64_t a_rows = key.transa ? key.k : key.m, a_cols = key.transa ? key.m : key.k;
  const uint64_t b_rows = key.transb ? key.n : key.k, b_cols = key.transb ? key.k : key.n;
  if (st) st = lt_status(cublasLtMatrixLayoutCreate(&p.a, ab, a_rows, a_cols, key.lda), "layout A");
  if (st) st = lt_status(cublasLtMatrixLayoutCreate(&p.b, ab, b_rows, b_cols, key.ldb), "layout B");
  if (st) st = lt_status(cublasLtMatrixLayoutCreate(&p.c, ct, key.m, key.n, key.ldc), "layout C");
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
      st = Status::error(std::string("cuBLASLt has no ") + (ab == CUDA_R_16BF ? "bf16" : "fp32") +
                         " algorithm for m=" + std::to_string(key.m) + " n=" + std::to_string(key.n) +
                         " k=" + std::to_string(key.k));
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

template <typename T>
__global__ void scale_rows_kernel(T *C, int64_t M, int64_t N, int64_t ldc, float beta) {
  PARALLORA_GRID_LOOP(i, M * N) {
    const int64_t r = i / N, j = i % N;
    const int64_t k = r * ldc + j;
    st(C, k, beta == 0.0f ? 0.0f : beta * ld(C, k));
  }
}

template <typename TB, typename TY>
__global__ void bias_rows_kernel(TY *y, const TB *bias, int64_t M, int64_t N) {
  PARALLORA_GRID_LOOP(i, M * N) { st(y, i, ld(bias, i % N)); }
}

// LoRA dropout (runtime/base/philox.h; the CPU twin is dropout_rows in runtime/cpu/matmul.cpp):
// out = x * mask / (1 - p), element by element; out may be x. The mask is a pure function of
// the element's global coordinates, so it equals the CPU's bit for bit.
__global__ void dropout_kernel(DropoutMask m, const float *x, float *out, int64_t M, int64_t K) {
  PARALLORA_GRID_LOOP(i, M * K) { out[i] = m.apply(x[i], i / K, i % K); }
}
// dx += D(t): the adapter's share of the input gradient.
__global__ void dropout_add_kernel(DropoutMask m, const float *t, float *dx, int64_t M, int64_t K) {
  PARALLORA_GRID_LOOP(i, M * K) { dx[i] += m.apply(t[i], i / K, i % K); }
}

/// The call's dropout mask; refuses CUDA-graph capture when there is one (its step and sample
/// counters change every call, and a graph would bake in the first call's).
StatusOr<std::optional<DropoutMask>> dropout_of(const KernelCall &c, const char *kernel, const Tensor &x) {
  auto mask = lora_dropout_mask(c, kernel, x);
  if (mask && *mask && graph::capturing())
    return graph::refuse_capture(std::string(kernel) + " with LoRA dropout (per-call mask counters)");
  return mask;
}

/// A matrix operand: its data and whether it is bf16 (else f32).
struct Mat {
  const void *p;
  bool bf16;
};
Mat mat(const Tensor &t) { return {t.data, is_bf16(t)}; }
Mat f32mat(const float *p) { return {p, false}; }

/// Row-major C = alpha * op(A) op(B) + beta * C, op(A) (M,K), op(B) (K,N) — the CPU twin's
/// detail::sgemm on stream(). A and B are both f32 or both bf16 (ab_bf16); C is f32, or bf16
/// with bf16 A/B. K == 0 scales C by beta (beta == 0: overwrite with 0).
Status gemm(const char *kernel, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const void *A, int64_t lda, const void *B, int64_t ldb, bool ab_bf16, float beta, void *C,
            int64_t ldc, bool c_bf16) {
  if (M <= 0 || N <= 0) return Status::ok();
  if (K <= 0) {
    if (c_bf16)
      scale_rows_kernel<<<blocks_for(M * N), 256, 0, stream()>>>(static_cast<bf16_t *>(C), M, N, ldc, beta);
    else
      scale_rows_kernel<<<blocks_for(M * N), 256, 0, stream()>>>(static_cast<float *>(C), M, N, ldc, beta);
    return check_launch(kernel);
  }
  GemmKey key{N,
              M,
              K,
              ldb,
              lda,
              ldc,
              trans_b ? 1 : 0,
              trans_a ? 1 : 0,
              alignment(B),
              alignment(A),
              alignment(C),
              int(ab_bf16 ? CUDA_R_16BF : CUDA_R_32F),
              int(c_bf16 ? CUDA_R_16BF : CUDA_R_32F)};
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

// Scratch slots of one kernel call (ScratchPool, bf16.cuh). gemm_any uses kGemmSlots.. .
enum Slot : size_t { kX32, kDy32, kU, kXa, kOut32, kXd, kUa, kGemmSlots };

ScratchPool &pool() {
  thread_local ScratchPool p;
  return p;
}

/// The f32 view of a bf16 matrix of `count` elements (widened into `slot`), or m itself.
StatusOr<Mat> as_f32(const Mat &m, int64_t count, size_t slot) {
  if (!m.bf16) return m;
  StatusOr<float *> p = pool().get_as<float>(slot, size_t(count));
  if (!p) return p.status();
  if (Status s = widen(m.p, *p, count); !s) return s;
  return f32mat(*p);
}

/// gemm for any f32 / bf16 mix of A, B and C (file comment): native bf16 when A and B are
/// both bf16, else f32 on widened copies; an f32 GEMM into bf16 C goes through an f32 copy of C
/// (widened first when beta != 0) and is rounded once.
Status gemm_any(const char *kernel, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                Mat A, int64_t lda, Mat B, int64_t ldb, float beta, void *C, bool c_bf16, int64_t ldc) {
  if (M <= 0 || N <= 0) return Status::ok();
  if (A.bf16 && B.bf16) return gemm(kernel, trans_a, trans_b, M, N, K, alpha, A.p, lda, B.p, ldb, true, beta, C, ldc, c_bf16);
  // Stored (pre-op) row counts: A is (M,K) or (K,M), B is (K,N) or (N,K).
  StatusOr<Mat> a = as_f32(A, (trans_a ? K : M) * lda, kGemmSlots);
  if (!a) return a.status();
  StatusOr<Mat> b = as_f32(B, (trans_b ? N : K) * ldb, kGemmSlots + 1);
  if (!b) return b.status();
  if (!c_bf16) return gemm(kernel, trans_a, trans_b, M, N, K, alpha, a->p, lda, b->p, ldb, false, beta, C, ldc, false);
  StatusOr<float *> c32 = pool().get_as<float>(kGemmSlots + 2, size_t(M * ldc));
  if (!c32) return c32.status();
  if (beta != 0.0f)
    if (Status s = widen(C, *c32, M * ldc); !s) return s;
  if (Status s = gemm(kernel, trans_a, trans_b, M, N, K, alpha, a->p, lda, b->p, ldb, false, beta, *c32, ldc, false); !s)
    return s;
  return narrow(*c32, C, M * ldc);
}

/// y (M,N) rows = bias, in y's type (exact: a bias is only written into a type that holds it).
Status bias_rows(const char *kernel, void *y, bool y_bf16, const Tensor &bias, int64_t M, int64_t N) {
  if (M * N <= 0) return Status::ok();
  const int grid = blocks_for(M * N);
  if (y_bf16)  // only with a bf16 bias (linear_into)
    bias_rows_kernel<<<grid, 256, 0, stream()>>>(static_cast<bf16_t *>(y), static_cast<const bf16_t *>(bias.data), M, N);
  else if (is_bf16(bias))
    bias_rows_kernel<<<grid, 256, 0, stream()>>>(static_cast<float *>(y), static_cast<const bf16_t *>(bias.data), M, N);
  else
    bias_rows_kernel<<<grid, 256, 0, stream()>>>(static_cast<float *>(y), bias.f32(), M, N);
  return check_launch(kernel);
}

// y = bias (or 0), then y += x W^T: one GEMM into y, rounded once. A bf16 y with an f32 bias
// (which bf16 may not hold) is computed in an f32 copy and rounded once.
Status linear_into(const char *kernel, const Tensor &x, const Tensor &W, const Tensor *bias, const Tensor &y,
                   int64_t M, int64_t N, int64_t K) {
  if (is_bf16(y) && bias && !is_bf16(*bias)) {
    StatusOr<float *> y32 = pool().get_as<float>(kOut32, size_t(M * N));
    if (!y32) return y32.status();
    if (Status s = bias_rows(kernel, *y32, false, *bias, M, N); !s) return s;
    if (Status s = gemm_any(kernel, false, true, M, N, K, 1.0f, mat(x), K, mat(W), K, 1.0f, *y32, false, N); !s)
      return s;
    return narrow(*y32, y.data, M * N);
  }
  if (bias)
    if (Status s = bias_rows(kernel, y.data, is_bf16(y), *bias, M, N); !s) return s;
  return gemm_any(kernel, false, true, M, N, K, 1.0f, mat(x), K, mat(W), K, bias ? 1.0f : 0.0f, y.data, is_bf16(y), N);
}

} // namespace

// x (..,K), W (N,K), bias (N) or absent -> y (..,N) = x W^T + bias.
Status linear_fwd(KernelCall &c) {
  Check ck(c, "linear_fwd");
  RowsEq rows_eq{ck};
  if (!ck.operands(2, 3, 1)) return ck.status();
  const Tensor &x = c.in[0], &W = c.in[1], &y = c.out[0];
  const Tensor *bias = c.in.size() > 2 && c.in[2].present() ? &c.in[2] : nullptr;
  if (!ck.flt(x, "x") || !ck.flt(W, "W") || !ck.flt(y, "y") || !ck.rank(W, "W", 2)) return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.rows_of(x, "x", K, &M) || !rows_eq(y, "y", N, M))
    return ck.status();
  if (bias && (!ck.flt(*bias, "bias") || !ck.shape(*bias, "bias", {N}))) return ck.status();
  return linear_into("linear_fwd", x, W, bias, y, M, N, K);
}

// dy (..,N), W (N,K) -> dx (..,K) = dy W (+= with accumulate = 1).
Status linear_bwd_input(KernelCall &c) {
  Check ck(c, "linear_bwd_input");
  RowsEq rows_eq{ck};
  if (!ck.operands(2, 2, 1, /*allow_accumulate=*/true)) return ck.status();
  const Tensor &dy = c.in[0], &W = c.in[1], &dx = c.out[0];
  if (!ck.flt(dy, "dy") || !ck.flt(W, "W") || !ck.flt(dx, "dx") || !ck.rank(W, "W", 2)) return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1);
  int64_t M = 0;
  if (!ck.rows_of(dy, "dy", N, &M) || !rows_eq(dx, "dx", K, M)) return ck.status();
  const bool acc = c.attr_i("accumulate", 0) != 0;
  // One GEMM: accumulate into a bf16 dx is beta = 1 in f32, rounded once.
  return gemm_any("linear_bwd_input", false, false, M, K, N, 1.0f, mat(dy), N, mat(W), K, acc ? 1.0f : 0.0f,
                  dx.data, is_bf16(dx), K);
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
  if (!ck.flt(x, "x") || !ck.flt(W, "W") || !ck.flt(A, "A") || !ck.flt(B, "B") || !ck.flt(y, "y") ||
      !ck.rank(W, "W", 2) || !ck.rank(A, "A", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1), r = A.dim(0);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.positive(r, "A dim 0 (r)") || !ck.shape(A, "A", {r, K}) ||
      !ck.shape(B, "B", {N, r}) || !ck.rows_of(x, "x", K, &M) || !rows_eq(y, "y", N, M))
    return ck.status();
  if (bias && (!ck.flt(*bias, "bias") || !ck.shape(*bias, "bias", {N}))) return ck.status();
  const float s = float(c.attr_f("scaling", 0.0));
  auto mask = dropout_of(c, K_, x);
  if (!mask) return mask.status();
  if (M == 0) return Status::ok();
  // xa = x A^T (M, r) in f32; x is widened once when it is bf16 and A is not.
  StatusOr<float *> xa = pool().get_as<float>(kXa, size_t(M * r));
  if (!xa) return ck.error(xa.message());
  StatusOr<Mat> xf = is_bf16(A) && !*mask ? StatusOr<Mat>(mat(x)) : as_f32(mat(x), M * K, kX32);
  if (!xf) return ck.error(xf.message());
  if (*mask) {  // the adapter reads D(x) (f32)
    StatusOr<float *> xd = pool().get_as<float>(kXd, size_t(M * K));
    if (!xd) return ck.error(xd.message());
    dropout_kernel<<<blocks_for(M * K), 256, 0, stream()>>>(**mask, static_cast<const float *>(xf->p), *xd, M, K);
    if (Status st = check_launch(K_); !st) return st;
    xf = f32mat(*xd);
  }
  if (Status st = gemm_any(K_, false, true, M, r, K, 1.0f, *xf, K, mat(A), K, 0.0f, *xa, false, r); !st) return st;
  // y = x W^T + bias, then += s xa B^T: two GEMMs into y, so a bf16 y is summed in f32 and
  // rounded once.
  Tensor yf = y;
  if (is_bf16(y)) {
    StatusOr<float *> y32 = pool().get_as<float>(kOut32, size_t(M * N));
    if (!y32) return ck.error(y32.message());
    yf.data = *y32;
    yf.dtype = plan::ElemType::F32;
  }
  if (bias)
    if (Status st = bias_rows(K_, yf.data, false, *bias, M, N); !st) return st;
  if (Status st = gemm_any(K_, false, true, M, N, K, 1.0f, mat(x), K, mat(W), K, bias ? 1.0f : 0.0f, yf.data, false, N);
      !st)
    return st;
  if (Status st = gemm_any(K_, false, true, M, N, r, s, f32mat(*xa), r, mat(B), r, 1.0f, yf.data, false, N); !st)
    return st;
  return is_bf16(y) ? narrow(yf.f32(), y.data, M * N) : Status::ok();
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
  if (!ck.flt(dy, "dy") || !ck.flt(x, "x") || !ck.flt(W, "W") || !ck.flt(A, "A") || !ck.flt(B, "B") ||
      !ck.flt(dx, "dx") || !ck.flt(dA, "dA") || !ck.flt(dB, "dB") || !ck.rank(W, "W", 2) || !ck.rank(A, "A", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1), r = A.dim(0);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.positive(r, "A dim 0 (r)") || !ck.shape(A, "A", {r, K}) ||
      !ck.shape(B, "B", {N, r}) || !ck.rows_of(x, "x", K, &M) || !rows_eq(dy, "dy", N, M) ||
      !rows_eq(dx, "dx", K, M) || !ck.shape(dA, "dA", {r, K}) || !ck.shape(dB, "dB", {N, r}))
    return ck.status();
  const float s = float(c.attr_f("scaling", 0.0));
  const float beta = c.attr_i("accumulate", 0) != 0 ? 1.0f : 0.0f;
  auto mask = dropout_of(c, K_, x);
  if (!mask) return mask.status();
  // u = dy B and xa = x A^T (M, r) in f32. A bf16 dy / x meets the f32 LoRA factors and the f32
  // temporaries: widened once each (dy32, x32) and used by both of its GEMMs.
  StatusOr<float *> u = pool().get_as<float>(kU, size_t(std::max<int64_t>(M * r, 1)));
  if (!u) return ck.error(u.message());
  StatusOr<float *> xa = pool().get_as<float>(kXa, size_t(std::max<int64_t>(M * r, 1)));
  if (!xa) return ck.error(xa.message());
  StatusOr<Mat> dyf = as_f32(mat(dy), M * N, kDy32);
  if (!dyf) return ck.error(dyf.message());
  StatusOr<Mat> xf = as_f32(mat(x), M * K, kX32);
  if (!xf) return ck.error(xf.message());
  if (*mask && M * K > 0) {  // with dropout the adapter read D(x): dA and dB use it (f32)
    StatusOr<float *> xd = pool().get_as<float>(kXd, size_t(M * K));
    if (!xd) return ck.error(xd.message());
    dropout_kernel<<<blocks_for(M * K), 256, 0, stream()>>>(**mask, static_cast<const float *>(xf->p), *xd, M, K);
    if (Status st = check_launch(K_); !st) return st;
    xf = f32mat(*xd);
  }
  const Mat dyu = is_bf16(B) ? mat(dy) : *dyf, xu = is_bf16(A) && !*mask ? mat(x) : *xf;
  // dx = dy W + s u A: two GEMMs, so a bf16 dx is summed in f32 and rounded once.
  void *dxf = dx.data;
  if (is_bf16(dx)) {
    StatusOr<float *> dx32 = pool().get_as<float>(kOut32, size_t(std::max<int64_t>(M * K, 1)));
    if (!dx32) return ck.error(dx32.message());
    dxf = *dx32;
  }
  bool want_dx = true, want_dw = true;  // part: zb-h1's B (dx) and W (dA, dB)
  if (!lora_grad_part(c, ck, &want_dx, &want_dw)) return ck.status();
  Status st = gemm_any(K_, false, false, M, r, N, 1.0f, dyu, N, mat(B), r, 0.0f, *u, false, r);  // dy B
  if (st && want_dw) st = gemm_any(K_, false, true, M, r, K, 1.0f, xu, K, mat(A), K, 0.0f, *xa, false, r);  // x A^T
  // dy W: bf16 x bf16 when both are; else f32 (with the widened dy when W is f32).
  if (st && want_dx)
    st = gemm_any(K_, false, false, M, K, N, 1.0f, is_bf16(W) ? mat(dy) : *dyf, N, mat(W), K, 0.0f, dxf, false, K);
  if (st && want_dx && !*mask) st = gemm_any(K_, false, false, M, K, r, s, f32mat(*u), r, mat(A), K, 1.0f, dxf, false, K);  // += s u A
  if (st && want_dx && *mask && M * K > 0) {  // dx += D(s u A)
    StatusOr<float *> ua = pool().get_as<float>(kUa, size_t(M * K));
    if (!ua) return ck.error(ua.message());
    st = gemm_any(K_, false, false, M, K, r, s, f32mat(*u), r, mat(A), K, 0.0f, *ua, false, K);
    if (st) {
      dropout_add_kernel<<<blocks_for(M * K), 256, 0, stream()>>>(**mask, *ua, static_cast<float *>(dxf), M, K);
      st = check_launch(K_);
    }
  }
  if (st && want_dx && is_bf16(dx)) st = narrow(static_cast<const float *>(dxf), dx.data, M * K);
  // Gradient accumulators (f32 in every plan; any type works: one GEMM each, rounded once).
  if (st && want_dw) st = gemm_any(K_, true, false, r, K, M, s, f32mat(*u), r, *xf, K, beta, dA.data, is_bf16(dA), K);  // s u^T x
  if (st && want_dw) st = gemm_any(K_, true, false, N, r, M, s, *dyf, N, f32mat(*xa), r, beta, dB.data, is_bf16(dB), r);  // s dy^T xa
  return st;
}

} // namespace parallora::rt::cuda::impl
