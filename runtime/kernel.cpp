//===- kernel.cpp - KernelCall attribute accessors ------------------------===//
//
// Attributes come from the instruction (plan::Instr::attrs). The accessors are lenient about
// the numeric representation: attr_f accepts an int64 attr, attr_i accepts a double attr that
// holds an integral value. An absent attr, or one of a type that cannot be converted (a string
// for attr_i, say), yields the default; kernels that need an attr check it is present and
// numeric (runtime/cpu/common.h, Check::num_attr) so such a plan fails with a message.
//
//===----------------------------------------------------------------------===//
#include "runtime/kernel.h"

#include <cmath>
#include <limits>

namespace parallora::rt {

static const plan::AttrValue *find_attr(const plan::Instr *instr, const std::string &name) {
  if (!instr) return nullptr;
  auto it = instr->attrs.find(name);
  return it == instr->attrs.end() ? nullptr : &it->second;
}

int64_t KernelCall::attr_i(const std::string &name, int64_t dflt) const {
  const plan::AttrValue *v = find_attr(instr, name);
  if (!v) return dflt;
  if (auto *i = std::get_if<int64_t>(v)) return *i;
  if (auto *d = std::get_if<double>(v)) {
    // Integral and inside int64's range (2^63 itself is not representable).
    if (std::isfinite(*d) && std::trunc(*d) == *d && *d >= -9223372036854775808.0 &&
        *d < 9223372036854775808.0)
      return static_cast<int64_t>(*d);
  }
  return dflt;
}

double KernelCall::attr_f(const std::string &name, double dflt) const {
  const plan::AttrValue *v = find_attr(instr, name);
  if (!v) return dflt;
  if (auto *d = std::get_if<double>(v)) return *d;
  if (auto *i = std::get_if<int64_t>(v)) return static_cast<double>(*i);
  return dflt;
}

std::string KernelCall::attr_s(const std::string &name, const std::string &dflt) const {
  const plan::AttrValue *v = find_attr(instr, name);
  if (!v) return dflt;
  if (auto *s = std::get_if<std::string>(v)) return *s;
  return dflt;
}

std::vector<int64_t> KernelCall::attr_ints(const std::string &name) const {
  const plan::AttrValue *v = find_attr(instr, name);
  if (!v) return {};
  if (auto *l = std::get_if<std::vector<int64_t>>(v)) return *l;
  if (auto *i = std::get_if<int64_t>(v)) return {*i};
  return {};
}

bool KernelCall::has_attr(const std::string &name) const {
  return find_attr(instr, name) != nullptr;
}

bool KernelCall::has_int_attr(const std::string &name) const {
  if (!instr) return false;
  auto it = instr->attrs.find(name);
  if (it == instr->attrs.end()) return false;
  if (std::holds_alternative<int64_t>(it->second)) return true;
  if (auto *d = std::get_if<double>(&it->second)) return *d == double(int64_t(*d));
  return false;
}

} // namespace parallora::rt
