//===- philox.h - Philox-4x32-10 and the LoRA dropout mask (C++ and CUDA) ---===//
//
// Philox-4x32-10 is the counter-based generator of Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3" (SC'11), the one behind Random123, cuRAND's CURAND_RNG_PSEUDO_PHILOX4_32_10 and
// PyTorch's CUDA generator: a bijection of a 128-bit counter under a 64-bit key, ten rounds of
//   (c0, c1, c2, c3) -> (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0))
// with the key bumped by the Weyl constants (W0, W1) between rounds. There is no state: the
// output is a pure function of (counter, key), so any element's random bits can be computed
// anywhere, in any order, on any device. Known answers: tests/unit/test_lora_dropout.cpp
// (Random123's kat_vectors, and Random123 itself where librandom123-dev is installed) and
// scripts/reference/philox.py (an independent numpy reproduction).
//
// THE LoRA DROPOUT MASK (docs/training.md, "LoRA dropout"). The adapter input x of a
// pl.lora_linear with dropout p is viewed as (samples, positions, features). Element
// (sample n of the global batch, position t, feature k of the whole, unsharded layer) of
// optimizer step s in the run with seed S, in the module named `module`, draws
//   (w0, w1, w2, w3) = philox4x32_10(counter = (k / 4, t, n, s),
//                                    key = (lo32(S), hi32(S) ^ fnv1a32(module)))
// and is KEPT iff w_(k mod 4) >= floor(p * 2^32); kept elements are scaled by 1 / (1 - p)
// (inverted dropout, as torch.nn.Dropout). The module name carries the layer
// ("model.layers.3.mlp.down_proj"), so the decision depends on nothing a mesh, a micro-batch
// split, a thread count or a backend could change.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PARALLORA_HD __host__ __device__ __forceinline__
#else
#define PARALLORA_HD inline
#endif

namespace parallora {

struct Philox4x32 {
  uint32_t v[4];
};

namespace philox_detail {
constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key bumps (golden ratio, sqrt(3)-1)

PARALLORA_HD void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}
} // namespace philox_detail

/// Philox-4x32-10: 10 rounds, the standard (Crush-resistant) choice. (Not named philox4x32:
/// Random123's header defines that as a macro.)
PARALLORA_HD Philox4x32 philox_4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                       uint32_t k1) {
  using namespace philox_detail;
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c0, &hi0, &lo0);
    mulhilo(kM1, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

/// 32-bit FNV-1a of a NUL-terminated string (the module name's stream id).
PARALLORA_HD uint32_t fnv1a32(const char *s) {
  uint32_t h = 0x811C9DC5u;
  for (; *s; ++s) {
    h ^= static_cast<uint8_t>(*s);
    h *= 0x01000193u;
  }
  return h;
}

/// Everything one kernel call needs to decide its elements (plain data: passed to CUDA by value).
/// Local element (row i of M = samples x positions, feature k of K_local) is global
/// (sample0 + i / positions, i % positions, feature0 + k).
struct DropoutMask {
  uint32_t key0 = 0, key1 = 0;   // (lo32(seed), hi32(seed) ^ fnv1a32(module))
  uint32_t step = 0;             // optimizer step, 1-based
  uint32_t sample0 = 0;          // global batch index of this call's first sample
  int64_t positions = 1;         // T: rows per sample
  int64_t feature0 = 0;          // global index of this shard's first feature (tensor parallel)
  uint32_t threshold = 0;        // floor(p * 2^32): drop iff the word is below it
  float scale = 1.0f;            // 1 / (1 - p)

  /// Whether local element (row, k) is kept.
  PARALLORA_HD bool keep(int64_t row, int64_t k) const {
    const int64_t f = feature0 + k;
    const Philox4x32 w = philox_4x32_10(static_cast<uint32_t>(f >> 2), static_cast<uint32_t>(row % positions),
                                    sample0 + static_cast<uint32_t>(row / positions), step, key0, key1);
    return w.v[f & 3] >= threshold;
  }
  /// x * mask / (1 - p) for local element (row, k).
  PARALLORA_HD float apply(float x, int64_t row, int64_t k) const { return keep(row, k) ? x * scale : 0.0f; }
};

} // namespace parallora
