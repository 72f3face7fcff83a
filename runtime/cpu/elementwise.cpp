//===- elementwise.cpp - add, transpose, copy, accumulate -----------------===//
#include <cstring>
#include <vector>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;
using detail::shape_str;

// a (..), b (..) -> y = a + b; all three of one shape (no broadcasting).
Status add(KernelCall &c) {
  Check ck(c, "add");
  if (!parse_add_args(c, ck, /*bf16_ok=*/false)) return ck.status();
  const Tensor &a = c.in[0], &b = c.in[1], &y = c.out[0];
  const int64_t n = a.numel();
  const float *ap = a.f32(), *bp = b.f32();
  float *yp = y.f32();
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) yp[i] = ap[i] + bp[i];
  return Status::ok();
}

// x -> y with y.dim(i) = x.dim(perm[i]); works on any 4-byte element type (f32, i32).
Status transpose(KernelCall &c) {
  Check ck(c, "transpose");
  if (!ck.operands(1, 1, 1)) return ck.status();
  const Tensor &x = c.in[0], &y = c.out[0];
  if (!ck.expect(x.present(), "operand x is absent") ||
      !ck.expect(y.present(), "operand y is absent") ||
      !ck.expect(x.dtype == y.dtype, "x and y have different element types"))
    return ck.status();
  std::vector<int64_t> perm;
  if (!parse_transpose_perm(c, ck, x, y, &perm)) return ck.status();
  const int R = x.rank();
  const std::vector<int64_t> &yshape = y.shape;  // x.dim(perm[i]), checked

  const int64_t n = x.numel();
  if (n == 0) return Status::ok();
  if (R == 0) {
    std::memcpy(y.data, x.data, 4);
    return Status::ok();
  }
  std::vector<int64_t> xstride(static_cast<size_t>(R));
  int64_t st = 1;
  for (int i = R - 1; i >= 0; --i) {
    xstride[i] = st;
    st *= x.shape[size_t(i)];
  }
  // Stride in x of each y dim.
  std::vector<int64_t> ys(static_cast<size_t>(R));
  for (int i = 0; i < R; ++i) ys[i] = xstride[size_t(perm[i])];
  const int64_t inner = yshape[size_t(R - 1)], inner_stride = ys[size_t(R - 1)];
  const int64_t outer = n / inner;
  const uint32_t *xp = static_cast<const uint32_t *>(x.data);
  uint32_t *yp = static_cast<uint32_t *>(y.data);
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t o = 0; o < outer; ++o) {
    // Offset in x of y's row o (dims 0..R-2 of y).
    int64_t rem = o, off = 0;
    for (int i = R - 2; i >= 0; --i) {
      const int64_t idx = rem % yshape[size_t(i)];
      rem /= yshape[size_t(i)];
      off += idx * ys[size_t(i)];
    }
    uint32_t *yr = yp + o * inner;
    for (int64_t j = 0; j < inner; ++j) yr[j] = xp[off + j * inner_stride];
  }
  return Status::ok();
}

// x -> y with the same number of elements (a reshape that needs its own bytes).
Status copy(KernelCall &c) {
  Check ck(c, "copy");
  if (!ck.operands(1, 1, 1)) return ck.status();
  const Tensor &x = c.in[0], &y = c.out[0];
  if (!ck.expect(x.present(), "operand x is absent") ||
      !ck.expect(y.present(), "operand y is absent") ||
      !ck.expect(x.dtype == y.dtype, "x and y have different element types") ||
      !ck.expect(x.numel() == y.numel(), "x " + shape_str(x.shape) + " has " +
                                             std::to_string(x.numel()) + " elements but y " +
                                             shape_str(y.shape) + " has " +
                                             std::to_string(y.numel())))
    return ck.status();
  const int64_t n = x.numel();
  if (x.data == y.data || n == 0) return Status::ok();
  const uint32_t *xp = static_cast<const uint32_t *>(x.data);
  uint32_t *yp = static_cast<uint32_t *>(y.data);
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) yp[i] = xp[i];
  return Status::ok();
}

// x (..) -> acc (..) += x, same shape.
Status accumulate(KernelCall &c) {
  Check ck(c, "accumulate");
  if (!parse_accumulate_args(c, ck, /*bf16_ok=*/false)) return ck.status();
  const Tensor &x = c.in[0], &acc = c.out[0];
  const int64_t n = x.numel();
  const float *xp = x.f32();
  float *ap = acc.f32();
#pragma omp parallel for schedule(static) if (n >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) ap[i] += xp[i];
  return Status::ok();
}

// Zeroes every output (no inputs): ZeRO-1 clears the gradients a rank does not update.
Status fill_zero(KernelCall &c) {
  Check ck(c, "fill_zero");
  if (!c.in.empty()) return Status::error("fill_zero: expected no inputs, got " + std::to_string(c.in.size()));
  for (size_t i = 0; i < c.out.size(); ++i) {
    const std::string what = "y_" + std::to_string(i);
    if (!ck.f32(c.out[i], what.c_str())) return ck.status();
    std::memset(c.out[i].data, 0, size_t(c.out[i].numel()) * sizeof(float));
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
