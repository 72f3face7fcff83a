//===- kernel_test_util.h - calling CPU kernels in unit tests (shared) -----===//
//
// What the kernel tests (test_cpu_kernels, test_packing_kernels, test_lora_dropout) share on top
// of host_buffers.h: the CPU kernel registry, one call of a kernel on host buffers, the
// finite-difference check of a backward kernel, and small comparisons.
//
// A test file defines its own `run(op, in, out, ...)` (its default location, attrs and step
// state) around run_kernel; RUN_OK(...) asserts that `run(...)` succeeded.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/cpu/kernels.h"
#include "tests/unit/host_buffers.h"

namespace parallora::rt::test_util {

using Attrs = std::map<std::string, plan::AttrValue>;

/// The CPU backend's kernels (runtime/cpu/kernels.h), registered once.
inline const KernelRegistry &cpu_registry() {
  static const KernelRegistry reg = [] {
    KernelRegistry r;
    cpu::register_kernels(r);
    return r;
  }();
  return reg;
}

/// Runs CPU kernel `op` as instruction `loc` would; a null Buf* is an absent operand.
inline Status run_kernel(const std::string &op, const std::string &loc, const std::vector<Buf *> &in,
                         const std::vector<Buf *> &out, Attrs attrs = {}, StepState *step = nullptr) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  instr.loc = loc;
  KernelCall call;
  call.instr = &instr;
  call.step = step;
  for (Buf *b : in) call.in.push_back(b ? b->tensor() : Tensor());
  for (Buf *b : out) call.out.push_back(b ? b->tensor() : Tensor());
  const KernelFn *fn = cpu_registry().find(op);
  if (!fn) return Status::error("no kernel named " + op);
  return (*fn)(call);
}

#define RUN_OK(...)                                                                              \
  do {                                                                                           \
    Status s_ = run(__VA_ARGS__);                                                                \
    ASSERT_TRUE(s_.is_ok()) << s_.message();                                                     \
  } while (0)

/// Expects an error whose message contains every needle.
inline void expect_error(const Status &s, const std::vector<std::string> &needles) {
  ASSERT_FALSE(s.is_ok()) << "expected an error containing " << needles[0];
  for (const std::string &n : needles)
    EXPECT_NE(s.message().find(n), std::string::npos) << "message '" << s.message() << "' lacks '" << n << "'";
}

/// The scalar projection L = sum(out * R) whose gradient dL/dout is R.
inline double project(const Buf &out, const Buf &R) {
  double s = 0.0;
  for (size_t i = 0; i < out.f.size(); ++i) s += double(out.f[i]) * double(R.f[i]);
  return s;
}

/// What a finite-difference check measured: max|fd - analytic| and max|analytic|.
struct FdResult {
  double max_abs_err = 0.0, max_grad = 0.0;
  double rel() const { return max_abs_err / std::max(max_grad, 1e-12); }
};

/// Central differences of L = loss() as each element of x moves by +-h, against `analytic`
/// (dL/dx); prints the margins and expects a gradient that is not identically zero.
inline FdResult fd_measure(const std::string &label, std::vector<float> &x, const std::vector<float> &analytic,
                           const std::function<double()> &loss, double h = 1e-3) {
  EXPECT_EQ(x.size(), analytic.size());
  FdResult r;
  for (size_t i = 0; i < x.size() && i < analytic.size(); ++i) {
    const float save = x[i];
    const float xp = float(double(save) + h), xm = float(double(save) - h);
    x[i] = xp;
    const double lp = loss();
    x[i] = xm;
    const double lm = loss();
    x[i] = save;
    const double fd = (lp - lm) / (double(xp) - double(xm));
    r.max_abs_err = std::max(r.max_abs_err, std::fabs(fd - double(analytic[i])));
    r.max_grad = std::max(r.max_grad, std::fabs(double(analytic[i])));
  }
  std::printf("[FD] %-44s n=%4zu max|grad|=%.3e max_abs_err=%.3e rel_err=%.3e\n", label.c_str(), x.size(),
              r.max_grad, r.max_abs_err, r.rel());
  EXPECT_GT(r.max_grad, 1e-6) << label << ": the gradient is identically zero";
  return r;
}

/// fd_measure's max|fd - analytic| / max|analytic|.
inline double fd_check(const std::string &label, std::vector<float> &x, const std::vector<float> &analytic,
                       const std::function<double()> &loss, double h = 1e-3) {
  return fd_measure(label, x, analytic, loss, h).rel();
}

/// max |a - b| (a from a kernel, b a double-precision reference).
inline double max_abs_diff(const std::vector<float> &a, const std::vector<double> &b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

inline bool bit_equal(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

} // namespace parallora::rt::test_util
