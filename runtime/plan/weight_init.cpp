//===- weight_init.cpp - seeded weight initialisation with HF's ranges ----===//
#include "runtime/plan/weight_init.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace parallora {
namespace {

const char *const kExpected =
    "expected normal(mean,std), zeros, ones, kaiming_uniform(a=X) or uniform(lo,hi)";

/// A number, or "sqrt(number)" so that PEFT's a=sqrt(5) can be written as such.
bool parse_number(const std::string &text, double &out) {
  std::string body = text;
  bool take_sqrt = false;
  if (body.size() > 6 && body.compare(0, 5, "sqrt(") == 0 && body.back() == ')') {
    body = body.substr(5, body.size() - 6);
    take_sqrt = true;
  }
  if (body.empty())
    return false;
  char *end = nullptr;
  double value = std::strtod(body.c_str(), &end);
  if (end != body.c_str() + body.size() || !std::isfinite(value))
    return false;
  if (take_sqrt) {
    if (value < 0)
      return false;
    value = std::sqrt(value);
  }
  out = value;
  return true;
}

/// splitmix64's finaliser: spreads nearby seeds over the whole 64-bit state space.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// Uniform in [0, 1) with 53 random bits.
double uniform01(std::mt19937_64 &rng) { return double(rng() >> 11) * 0x1.0p-53; }

std::string format_double(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

} // namespace

uint64_t fnv1a_64(const std::string &text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string InitSpec::to_string() const {
  switch (kind) {
  case Kind::Zeros:
    return "zeros";
  case Kind::Ones:
    return "ones";
  case Kind::Normal:
    return "normal(" + format_double(p0) + "," + format_double(p1) + ")";
  case Kind::Uniform:
    return "uniform(" + format_double(p0) + "," + format_double(p1) + ")";
  case Kind::KaimingUniform:
    return "kaiming_uniform(a=" + format_double(p0) + ")";
  }
  return "?";
}

StatusOr<InitSpec> parse_init_spec(const std::string &text) {
  std::string s;
  for (char c : text)
    if (!std::isspace(static_cast<unsigned char>(c)))
      s += c;
  auto fail = [&](const std::string &why) {
    return Status::error("init spec '" + text + "': " + why);
  };

  InitSpec spec;
  if (s == "zeros") {
    spec.kind = InitSpec::Kind::Zeros;
    return spec;
  }
  if (s == "ones") {
    spec.kind = InitSpec::Kind::Ones;
    return spec;
  }
  size_t open = s.find('(');
  if (open == std::string::npos || s.back() != ')')
    return fail(kExpected);
  const std::string kind = s.substr(0, open);
  std::vector<std::string> args;
  const std::string inner = s.substr(open + 1, s.size() - open - 2);
  size_t start = 0;
  while (true) {
    size_t comma = inner.find(',', start);
    args.push_back(inner.substr(start, comma - start));
    if (comma == std::string::npos)
      break;
    start = comma + 1;
  }

  auto numbers = [&](size_t count, double &a, double &b) -> Status {
    if (args.size() != count)
      return fail(kind + " takes " + std::to_string(count) + " argument(s), got " +
                  std::to_string(args.size()));
    if (!parse_number(args[0], a))
      return fail("'" + args[0] + "' is not a finite number");
    if (count == 2 && !parse_number(args[1], b))
      return fail("'" + args[1] + "' is not a finite number");
    return Status::ok();
  };

  if (kind == "normal") {
    spec.kind = InitSpec::Kind::Normal;
    Status st = numbers(2, spec.p0, spec.p1);
    if (!st.is_ok())
      return st;
    if (spec.p1 < 0)
      return fail("std must not be negative, got " + args[1]);
    return spec;
  }
  if (kind == "uniform") {
    spec.kind = InitSpec::Kind::Uniform;
    Status st = numbers(2, spec.p0, spec.p1);
    if (!st.is_ok())
      return st;
    if (spec.p0 > spec.p1)
      return fail("lo (" + args[0] + ") exceeds hi (" + args[1] + ")");
    return spec;
  }
  if (kind == "kaiming_uniform") {
    spec.kind = InitSpec::Kind::KaimingUniform;
    if (args.size() == 1 && args[0].compare(0, 2, "a=") == 0)
      args[0] = args[0].substr(2);
    double unused;
    Status st = numbers(1, spec.p0, unused);
    if (!st.is_ok())
      return st;
    return spec;
  }
  return fail("unknown kind '" + kind + "'; " + kExpected);
}

InitSpec hf_default_init(const std::string &tensor_name, double initializer_range) {
  auto contains = [&](const char *part) { return tensor_name.find(part) != std::string::npos; };
  InitSpec spec;
  if (contains("lora_B")) {
    spec.kind = InitSpec::Kind::Zeros;
  } else if (contains("lora_A")) {
    spec.kind = InitSpec::Kind::KaimingUniform;
    spec.p0 = std::sqrt(5.0);
  } else if (contains("norm")) {  // input_layernorm, post_attention_layernorm, model.norm
    spec.kind = InitSpec::Kind::Ones;
  } else {
    spec.kind = InitSpec::Kind::Normal;
    spec.p0 = 0.0;
    spec.p1 = initializer_range;
  }
  return spec;
}

void init_tensor(const InitSpec &spec, const std::string &tensor_name, uint64_t seed, float *out,
                 const std::vector<int64_t> &shape) {
  int64_t numel = 1;
  for (int64_t d : shape)
    numel *= d;
  if (numel <= 0)
    return;
  const size_t n = size_t(numel);

  switch (spec.kind) {
  case InitSpec::Kind::Zeros:
    std::fill(out, out + n, 0.0f);
    return;
  case InitSpec::Kind::Ones:
    std::fill(out, out + n, 1.0f);
    return;
  default:
    break;
  }

  // One stream per (seed, tensor name): order independence comes from never sharing it.
  std::mt19937_64 rng(mix64(seed ^ mix64(fnv1a_64(tensor_name))));

  if (spec.kind == InitSpec::Kind::Normal) {
    // Box-Muller: two independent normals per pair of uniforms; u1 in (0, 1] keeps log finite.
    const double two_pi = 6.283185307179586476925;
    for (size_t i = 0; i < n; i += 2) {
      double u1 = 1.0 - uniform01(rng);
      double u2 = uniform01(rng);
      double r = std::sqrt(-2.0 * std::log(u1));
      out[i] = float(spec.p0 + spec.p1 * r * std::cos(two_pi * u2));
      if (i + 1 < n)
        out[i + 1] = float(spec.p0 + spec.p1 * r * std::sin(two_pi * u2));
    }
    return;
  }

  double lo = spec.p0, hi = spec.p1;
  if (spec.kind == InitSpec::Kind::KaimingUniform) {
    // torch.nn.init.kaiming_uniform_(w, a): gain = sqrt(2 / (1 + a^2)),
    // bound = gain * sqrt(3 / fan_in) = sqrt(6 / ((1 + a^2) * fan_in)).
    int64_t fan_in = 1;
    if (shape.size() >= 2) {
      for (size_t k = 1; k < shape.size(); ++k)
        fan_in *= shape[k];
    } else if (shape.size() == 1) {
      fan_in = shape[0];
    }
    const double a = spec.p0;
    const double bound = std::sqrt(6.0 / ((1.0 + a * a) * double(fan_in)));
    lo = -bound;
    hi = bound;
  }
  for (size_t i = 0; i < n; ++i)
    out[i] = float(lo + (hi - lo) * uniform01(rng));
}

} // namespace parallora
