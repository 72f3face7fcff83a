//===- common.cpp - shared helpers of the CPU kernels ---------------------===//
#include "runtime/cpu/common.h"

#include <cblas.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <sstream>

namespace parallora::rt::cpu::detail {

std::string shape_str(const std::vector<int64_t> &shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

Status fail(const KernelCall &call, const char *kernel, const std::string &msg) {
  std::string loc = call.instr && !call.instr->loc.empty() ? call.instr->loc : "?";
  return Status::error(std::string(kernel) + " (" + loc + "): " + msg);
}

bool Check::set(const std::string &msg) {
  if (status_.is_ok()) status_ = fail(call_, kernel_, msg);
  return false;
}

bool Check::expect(bool cond, const std::string &msg) { return cond || set(msg); }

bool Check::operands(size_t nin_min, size_t nin_max, size_t nout, bool allow_accumulate) {
  size_t nin = call_.in.size();
  if (nin < nin_min || nin > nin_max) {
    std::string want = nin_min == nin_max
                           ? std::to_string(nin_min)
                           : std::to_string(nin_min) + " to " + std::to_string(nin_max);
    return set("expected " + want + " inputs, got " + std::to_string(nin));
  }
  if (call_.out.size() != nout)
    return set("expected " + std::to_string(nout) + " outputs, got " +
               std::to_string(call_.out.size()));
  if (!allow_accumulate && call_.attr_i("accumulate", 0) != 0)
    return set("attr accumulate = " + std::to_string(call_.attr_i("accumulate", 0)) +
               " is not supported by this kernel");
  return true;
}

static const char *dtype_name(plan::ElemType t) {
  return t == plan::ElemType::F32 ? "f32" : t == plan::ElemType::I32 ? "i32" : "?";
}

static bool typed(Check &ck, const Tensor &t, const char *what, plan::ElemType want) {
  if (!t.present()) return ck.expect(false, std::string("operand ") + what + " is absent");
  return ck.expect(t.dtype == want, std::string("operand ") + what + " must be " +
                                        dtype_name(want) + ", got " + dtype_name(t.dtype));
}

bool Check::f32(const Tensor &t, const char *what) {
  return typed(*this, t, what, plan::ElemType::F32);
}
bool Check::i32(const Tensor &t, const char *what) {
  return typed(*this, t, what, plan::ElemType::I32);
}

bool Check::rank(const Tensor &t, const char *what, int r) {
  if (t.rank() == r) return true;
  return set(std::string(what) + " must have rank " + std::to_string(r) + ", got shape " +
             shape_str(t.shape));
}

bool Check::shape(const Tensor &t, const char *what, const std::vector<int64_t> &expected) {
  if (t.shape == expected) return true;
  return set(std::string(what) + " has shape " + shape_str(t.shape) + ", expected " +
             shape_str(expected));
}

bool Check::rows_of(const Tensor &t, const char *what, int64_t d, int64_t *rows) {
  if (t.rank() < 1)
    return set(std::string(what) + " must have rank >= 1, got shape " + shape_str(t.shape));
  if (d <= 0)
    return set(std::string(what) + ": last dim must be positive, got shape " +
               shape_str(t.shape));
  if (t.dim(-1) != d)
    return set(std::string(what) + " has shape " + shape_str(t.shape) + ", expected last dim " +
               std::to_string(d));
  *rows = t.numel() / d;
  return true;
}

bool Check::rows_eq(const Tensor &t, const char *what, int64_t d, int64_t rows) {
  int64_t r = 0;
  if (!rows_of(t, what, d, &r)) return false;
  if (r == rows) return true;
  return set(std::string(what) + " has shape " + shape_str(t.shape) + " (" + std::to_string(r) +
             " rows of " + std::to_string(d) + "), expected " + std::to_string(rows) + " rows");
}

bool Check::same_shape(const Tensor &t, const char *what, const Tensor &ref,
                       const char *ref_what) {
  if (t.shape == ref.shape) return true;
  return set(std::string(what) + " has shape " + shape_str(t.shape) + ", expected the shape of " +
             ref_what + " " + shape_str(ref.shape));
}

bool Check::num_attr(const char *name) {
  const plan::Instr *in = call_.instr;
  if (in) {
    auto it = in->attrs.find(name);
    if (it != in->attrs.end()) {
      if (std::holds_alternative<int64_t>(it->second) || std::holds_alternative<double>(it->second))
        return true;
      return set(std::string("attr ") + name + " must be a number");
    }
  }
  return set(std::string("missing required attr ") + name);
}

bool Check::positive(int64_t v, const char *what) {
  if (v > 0) return true;
  return set(std::string(what) + " must be positive, got " + std::to_string(v));
}

float dot(const float *a, const float *b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
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
