//===- matmul.cpp - linear_fwd, linear_bwd_input, lora_linear_fwd/bwd ------===//
//
// GEMMs through cblas_sgemm (row-major). x (.., K) is flattened to M rows.
//
//===----------------------------------------------------------------------===//
#include <climits>
#include <cstring>
#include <vector>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"
#include "runtime/lora_dropout.h"

namespace parallora::rt::cpu::impl {

using detail::Check;
using detail::sgemm;

static bool blas_dims(Check &ck, int64_t M, int64_t N, int64_t K) {
  return ck.expect(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX,
                   "GEMM dimensions M=" + std::to_string(M) + " N=" + std::to_string(N) +
                       " K=" + std::to_string(K) + " exceed the BLAS int range");
}

// y rows = bias (or 0), then y += x W^T.
static void linear_into(const float *x, const float *W, const float *bias, float *y, int64_t M,
                        int64_t N, int64_t K) {
  if (bias) {
#pragma omp parallel for schedule(static) if (M * N >= detail::kParallelWork)
    for (int64_t i = 0; i < M; ++i) std::memcpy(y + i * N, bias, size_t(N) * sizeof(float));
  }
  sgemm(false, true, M, N, K, 1.0f, x, K, W, K, bias ? 1.0f : 0.0f, y, N);
}

// LoRA dropout (runtime/lora_dropout.h): one Philox call per 4 features of a row; the mask is a
// pure function of the element's global coordinates, so any thread split gives the same bits.
// xd = x * mask / (1 - p).
static void dropout_rows(const DropoutMask &m, const float *x, float *xd, int64_t M, int64_t K) {
#pragma omp parallel for schedule(static) if (M * K >= detail::kParallelWork)
  for (int64_t i = 0; i < M; ++i) {
    Philox4x32 w{};
    for (int64_t k = 0; k < K; ++k) {
      const int64_t f = m.feature0 + k;
      if (k == 0 || (f & 3) == 0)
        w = philox_4x32_10(uint32_t(f >> 2), uint32_t(i % m.positions), m.sample0 + uint32_t(i / m.positions), m.step,
                       m.key0, m.key1);
      xd[i * K + k] = w.v[f & 3] >= m.threshold ? x[i * K + k] * m.scale : 0.0f;
    }
  }
}

// x (..,K), W (N,K), bias (N) or absent -> y (..,N) = x W^T + bias.
// The bias may be an absent operand (null data) or left out of the input list.
Status linear_fwd(KernelCall &c) {
  Check ck(c, "linear_fwd");
  if (!ck.operands(2, 3, 1)) return ck.status();
  const Tensor &x = c.in[0], &W = c.in[1], &y = c.out[0];
  const Tensor *bias = c.in.size() > 2 && c.in[2].present() ? &c.in[2] : nullptr;
  if (!ck.f32(x, "x") || !ck.f32(W, "W") || !ck.f32(y, "y") || !ck.rank(W, "W", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.rows_of(x, "x", K, &M) ||
      !ck.rows_eq(y, "y", N, M) || !blas_dims(ck, M, N, K))
    return ck.status();
  if (bias && (!ck.f32(*bias, "bias") || !ck.shape(*bias, "bias", {N}))) return ck.status();
  linear_into(x.f32(), W.f32(), bias ? bias->f32() : nullptr, y.f32(), M, N, K);
  return Status::ok();
}

// dy (..,N), W (N,K) -> dx (..,K) = dy W (+= with accumulate = 1).
Status linear_bwd_input(KernelCall &c) {
  Check ck(c, "linear_bwd_input");
  if (!ck.operands(2, 2, 1, /*allow_accumulate=*/true)) return ck.status();
  const Tensor &dy = c.in[0], &W = c.in[1], &dx = c.out[0];
  if (!ck.f32(dy, "dy") || !ck.f32(W, "W") || !ck.f32(dx, "dx") || !ck.rank(W, "W", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1);
  int64_t M = 0;
  if (!ck.rows_of(dy, "dy", N, &M) || !ck.rows_eq(dx, "dx", K, M) || !blas_dims(ck, M, N, K))
    return ck.status();
  const bool acc = c.attr_i("accumulate", 0) != 0;
  sgemm(false, false, M, K, N, 1.0f, dy.f32(), N, W.f32(), K, acc ? 1.0f : 0.0f, dx.f32(), K);
  return Status::ok();
}

// x (..,K), W (N,K), A (r,K), B (N,r), bias (N) or absent -> y (..,N)
//   y = x W^T + bias + scaling * (D(x) A^T) B^T, D = LoRA dropout (identity without the attr)
Status lora_linear_fwd(KernelCall &c) {
  Check ck(c, "lora_linear_fwd");
  if (!ck.operands(4, 5, 1) || !ck.num_attr("scaling")) return ck.status();
  const Tensor &x = c.in[0], &W = c.in[1], &A = c.in[2], &B = c.in[3], &y = c.out[0];
  const Tensor *bias = c.in.size() > 4 && c.in[4].present() ? &c.in[4] : nullptr;
  if (!ck.f32(x, "x") || !ck.f32(W, "W") || !ck.f32(A, "A") || !ck.f32(B, "B") ||
      !ck.f32(y, "y") || !ck.rank(W, "W", 2) || !ck.rank(A, "A", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1), r = A.dim(0);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.positive(r, "A dim 0 (r)") ||
      !ck.shape(A, "A", {r, K}) || !ck.shape(B, "B", {N, r}) || !ck.rows_of(x, "x", K, &M) ||
      !ck.rows_eq(y, "y", N, M) || !blas_dims(ck, M, N, K) || !blas_dims(ck, M, r, K))
    return ck.status();
  if (bias && (!ck.f32(*bias, "bias") || !ck.shape(*bias, "bias", {N}))) return ck.status();
  const float s = float(c.attr_f("scaling", 0.0));
  auto mask = lora_dropout_mask(c, "lora_linear_fwd", x);
  if (!mask) return mask.status();
  // The adapter's input: x, or dropout(x) in training with p > 0.
  std::vector<float> xd(*mask ? static_cast<size_t>(M * K) : 0);
  if (*mask) dropout_rows(**mask, x.f32(), xd.data(), M, K);
  const float *xin = *mask ? xd.data() : x.f32();
  std::vector<float> xa(static_cast<size_t>(M * r));
  sgemm(false, true, M, r, K, 1.0f, xin, K, A.f32(), K, 0.0f, xa.data(), r);  // x A^T
  linear_into(x.f32(), W.f32(), bias ? bias->f32() : nullptr, y.f32(), M, N, K);
  sgemm(false, true, M, N, r, s, xa.data(), r, B.f32(), r, 1.0f, y.f32(), N);    // += s xa B^T
  return Status::ok();
}

// dy (..,N), x (..,K), W (N,K), A (r,K), B (N,r) -> dx (..,K), dA (r,K), dB (N,r)
//   dx = dy W + s (dy B) A;  dA = s (dy B)^T x;  dB = s dy^T (x A^T)
// accumulate = 1 adds into dA and dB (gradient accumulators); dx is always overwritten.
// part = "input" computes dx only, "weight" dA and dB only (zb-h1's B and W; the other outputs
// are left untouched); absent or "all": all three.
Status lora_linear_bwd(KernelCall &c) {
  Check ck(c, "lora_linear_bwd");
  if (!ck.operands(5, 5, 3, /*allow_accumulate=*/true) || !ck.num_attr("scaling"))
    return ck.status();
  const Tensor &dy = c.in[0], &x = c.in[1], &W = c.in[2], &A = c.in[3], &B = c.in[4];
  const Tensor &dx = c.out[0], &dA = c.out[1], &dB = c.out[2];
  if (!ck.f32(dy, "dy") || !ck.f32(x, "x") || !ck.f32(W, "W") || !ck.f32(A, "A") ||
      !ck.f32(B, "B") || !ck.f32(dx, "dx") || !ck.f32(dA, "dA") || !ck.f32(dB, "dB") ||
      !ck.rank(W, "W", 2) || !ck.rank(A, "A", 2))
    return ck.status();
  const int64_t N = W.dim(0), K = W.dim(1), r = A.dim(0);
  int64_t M = 0;
  if (!ck.positive(N, "W dim 0 (N)") || !ck.positive(r, "A dim 0 (r)") ||
      !ck.shape(A, "A", {r, K}) || !ck.shape(B, "B", {N, r}) || !ck.rows_of(x, "x", K, &M) ||
      !ck.rows_eq(dy, "dy", N, M) || !ck.rows_eq(dx, "dx", K, M) ||
      !ck.shape(dA, "dA", {r, K}) || !ck.shape(dB, "dB", {N, r}) || !blas_dims(ck, M, N, K) ||
      !blas_dims(ck, M, r, K))
    return ck.status();
  const float s = float(c.attr_f("scaling", 0.0));
  const float beta = c.attr_i("accumulate", 0) != 0 ? 1.0f : 0.0f;
  bool want_dx = true, want_dw = true;  // part: zb-h1's B (dx) and W (dA, dB)
  if (!lora_grad_part(c, ck, &want_dx, &want_dw)) return ck.status();
  auto mask = lora_dropout_mask(c, "lora_linear_bwd", x);
  if (!mask) return mask.status();
  // With dropout the adapter saw xd = D(x) = x * mask / (1 - p): dA and dB use xd, and x's
  // gradient through the adapter is D(s u A) (the same mask, recomputed from its counters).
  std::vector<float> xd(*mask && want_dw ? static_cast<size_t>(M * K) : 0);
  if (*mask && want_dw) dropout_rows(**mask, x.f32(), xd.data(), M, K);
  const float *xin = *mask ? xd.data() : x.f32();
  std::vector<float> u(static_cast<size_t>(M * r)), xa(static_cast<size_t>(M * r));
  sgemm(false, false, M, r, N, 1.0f, dy.f32(), N, B.f32(), r, 0.0f, u.data(), r);   // dy B
  if (want_dw) sgemm(false, true, M, r, K, 1.0f, xin, K, A.f32(), K, 0.0f, xa.data(), r);  // x A^T
  if (want_dx) {
    sgemm(false, false, M, K, N, 1.0f, dy.f32(), N, W.f32(), K, 0.0f, dx.f32(), K);   // dy W
    if (!*mask) {
      sgemm(false, false, M, K, r, s, u.data(), r, A.f32(), K, 1.0f, dx.f32(), K);    // += s u A
    } else {
      std::vector<float> ua(static_cast<size_t>(M * K));
      sgemm(false, false, M, K, r, s, u.data(), r, A.f32(), K, 0.0f, ua.data(), K);   // s u A
      dropout_rows(**mask, ua.data(), ua.data(), M, K);                               // D(s u A)
      float *d = dx.f32();
#pragma omp parallel for schedule(static) if (M * K >= detail::kParallelWork)
      for (int64_t i = 0; i < M * K; ++i) d[i] += ua[static_cast<size_t>(i)];
    }
  }
  if (want_dw) {
    sgemm(true, false, r, K, M, s, u.data(), r, xin, K, beta, dA.f32(), K);           // s u^T x
    sgemm(true, false, N, r, M, s, dy.f32(), N, xa.data(), r, beta, dB.f32(), r);     // s dy^T xa
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
