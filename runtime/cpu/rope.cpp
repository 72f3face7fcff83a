//===- rope.cpp - rope_fwd, rope_bwd --------------------------------------===//
//
// Mirrors Hugging Face transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb, including
// the float32 arithmetic of its tensor ops:
//   inv_freq[i] = 1 / theta^((2i)/Dh)          (float32: exponent and power in float)
//   llama3 scaling (_compute_llama3_parameters), float32 element-wise like torch:
//     wavelen = 2*pi / inv_freq                (torch: inv_freq.reciprocal() * 2*pi)
//     inv_freq_llama = wavelen > low_freq_wavelen ? inv_freq / factor : inv_freq
//     smooth = (old_ctx / wavelen - low) / (high - low)
//     smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
//     medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen) -> smoothed
//   angle = float(pos) * inv_freq (float), cos/sin in float.
//   y = x cos + rotate_half(x) sin, rotate_half(x) = cat(-x2, x1) over the two halves of Dh.
// The backward applies the transposed rotation, dx = dy cos - rotate_half(dy) sin, i.e.
//   dx1 = dy1 c + dy2 s,  dx2 = dy2 c - dy1 s.
//
//===----------------------------------------------------------------------===//
#include <cmath>
#include <vector>

#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

namespace {

struct RopeTable {
  int64_t half = 0;
  std::vector<float> cos, sin;  // (T, half)
};

// Builds the table or records an error in ck.
bool build_table(const KernelCall &c, Check &ck, int64_t T, int64_t Dh, RopeTable *tab) {
  if (!ck.num_attr("theta")) return false;
  const double theta = c.attr_f("theta", 0.0);
  if (!ck.expect(std::isfinite(theta) && theta > 0,
                 "attr theta must be positive, got " + std::to_string(theta)))
    return false;
  const std::string type = c.attr_s("rope_type", "default");
  const bool llama3 = type == "llama3";
  if (!ck.expect(llama3 || type == "default" || type.empty(),
                 "unsupported rope_type '" + type + "' (expected \"default\" or \"llama3\")"))
    return false;

  const int64_t half = Dh / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const float theta_f = float(theta), dh_f = float(Dh);
  for (int64_t i = 0; i < half; ++i)
    inv[i] = 1.0f / std::pow(theta_f, float(2 * i) / dh_f);

  if (llama3) {
    if (!ck.num_attr("factor") || !ck.num_attr("low_freq_factor") ||
        !ck.num_attr("high_freq_factor") || !ck.num_attr("original_max_position_embeddings"))
      return false;
    const double factor = c.attr_f("factor", 0), low = c.attr_f("low_freq_factor", 0),
                 high = c.attr_f("high_freq_factor", 0);
    const double old_ctx = double(c.attr_i("original_max_position_embeddings", 0));
    if (!ck.expect(factor > 0 && low > 0 && high > 0 && high != low && old_ctx > 0,
                   "invalid llama3 rope scaling: factor=" + std::to_string(factor) +
                       " low_freq_factor=" + std::to_string(low) +
                       " high_freq_factor=" + std::to_string(high) +
                       " original_max_position_embeddings=" + std::to_string(old_ctx)))
      return false;
    // Python scalars (double) meet float32 tensors: torch casts the scalar to float.
    const double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
    const float two_pi_f = float(2.0 * M_PI), factor_f = float(factor), low_f = float(low),
                range_f = float(high - low), old_ctx_f = float(old_ctx),
                low_wavelen_f = float(low_wavelen), high_wavelen_f = float(high_wavelen);
    for (int64_t i = 0; i < half; ++i) {
      const float f = inv[i];
      const float wavelen = (1.0f / f) * two_pi_f;
      const float f_llama = wavelen > low_wavelen_f ? f / factor_f : f;
      const float smooth = ((1.0f / wavelen) * old_ctx_f - low_f) / range_f;
      const float smoothed = (1.0f - smooth) * f_llama / factor_f + smooth * f_llama;
      const bool medium = !(wavelen < high_wavelen_f) && !(wavelen > low_wavelen_f);
      inv[i] = medium ? smoothed : f_llama;
    }
  }

  tab->half = half;
  tab->cos.resize(size_t(T * half));
  tab->sin.resize(size_t(T * half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(t) * inv[i];
      tab->cos[t * half + i] = std::cos(angle);
      tab->sin[t * half + i] = std::sin(angle);
    }
  return true;
}

Status rope(KernelCall &c, const char *name, bool backward) {
  Check ck(c, name);
  if (!ck.operands(1, 1, 1)) return ck.status();
  const Tensor &x = c.in[0], &y = c.out[0];
  const char *xn = backward ? "dy" : "x", *yn = backward ? "dx" : "y";
  if (!ck.f32(x, xn) || !ck.f32(y, yn) || !ck.rank(x, xn, 4) || !ck.same_shape(y, yn, x, xn))
    return ck.status();
  const int64_t B = x.dim(0), H = x.dim(1), T = x.dim(2), Dh = x.dim(3);
  if (!ck.positive(Dh, "head dim Dh") ||
      !ck.expect(Dh % 2 == 0, "head dim Dh = " + std::to_string(Dh) + " must be even"))
    return ck.status();
  RopeTable tab;
  if (!build_table(c, ck, T, Dh, &tab)) return ck.status();
  const int64_t half = tab.half, rows = B * H * T;
  const float *xp = x.f32();
  float *yp = y.f32();
  const float *cs = tab.cos.data(), *sn = tab.sin.data();
#pragma omp parallel for schedule(static) if (rows * Dh >= detail::kParallelWork)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = row % T;
    const float *xr = xp + row * Dh, *cr = cs + t * half, *sr = sn + t * half;
    float *yr = yp + row * Dh;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = xr[i], x2 = xr[i + half], co = cr[i], si = sr[i];
      if (!backward) {
        yr[i] = x1 * co + (-x2) * si;
        yr[i + half] = x2 * co + x1 * si;
      } else {
        yr[i] = x1 * co + x2 * si;
        yr[i + half] = x2 * co + (-x1) * si;
      }
    }
  }
  return Status::ok();
}

} // namespace

Status rope_fwd(KernelCall &c) { return rope(c, "rope_fwd", false); }
Status rope_bwd(KernelCall &c) { return rope(c, "rope_bwd", true); }

} // namespace parallora::rt::cpu::impl
