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
// Packing: with the optional positions (B, T), token t of row b takes the table row
// positions[b, t] instead of t (HF's position_ids); they are checked to lie in [0, T) first.
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

// Builds the table (runtime/kernel_check: the numbers every backend uses) or records an error.
bool build_table(const KernelCall &c, Check &ck, int64_t T, int64_t Dh, RopeTable *tab) {
  RopeParams p;
  if (!parse_rope_params(c, ck, &p)) return false;
  tab->half = Dh / 2;
  tab->cos.resize(size_t(T * tab->half));
  tab->sin.resize(size_t(T * tab->half));
  rope_cos_sin(p, T, Dh, tab->cos.data(), tab->sin.data());
  return true;
}

Status rope(KernelCall &c, const char *name, bool backward) {
  Check ck(c, name);
  RopeArgs ra;
  if (!parse_rope_args(c, ck, backward, /*bf16_ok=*/false, &ra)) return ck.status();
  const Tensor &x = c.in[0], &y = c.out[0];
  const int64_t B = ra.B, H = ra.H, T = ra.T, Dh = ra.Dh;
  RopeTable tab;
  if (!build_table(c, ck, T, Dh, &tab)) return ck.status();
  const int64_t half = tab.half, rows = B * H * T;
  const float *xp = x.f32();
  float *yp = y.f32();
  const float *cs = tab.cos.data(), *sn = tab.sin.data();
  const int32_t *pos = ra.positions ? c.in[1].i32() : nullptr;  // (B, T)
  if (pos)
    for (int64_t i = 0; i < B * T; ++i)
      if (pos[i] < 0 || pos[i] >= T) return ck.error(rope_position_error(pos[i], i / T, i % T, T));
#pragma omp parallel for schedule(static) if (rows * Dh >= detail::kParallelWork)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = pos ? pos[(row / (H * T)) * T + row % T] : row % T;
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
