#!/usr/bin/env python3
"""Philox-4x32-10 and Parallora's LoRA dropout mask in numpy: an independent reproduction of
runtime/base/philox.h (written from the published algorithm, Salmon et al. SC'11), used by the
HF + PEFT dropout reference (make_dropout_fixture.py) and checked against Random123's known
answers when run as a script:

    python3 scripts/reference/philox.py        # prints the known-answer checks

The mask (docs/training.md, "LoRA dropout"): element (sample n of the global batch, position t,
feature k) of optimizer step s, module `module`, run seed S draws
    w = philox4x32_10(counter=(k // 4, t, n, s), key=(lo32(S), hi32(S) ^ fnv1a32(module)))
and is kept iff w[k % 4] >= floor(p * 2**32); kept values are scaled by 1 / (1 - p).
"""
import math
import sys

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)

# Random123 tests/kat_vectors: counter (4), key (2) -> output (4).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Vectorised over broadcastable uint32 arrays c0..c3; k0, k1 are Python ints."""
    c = [np.asarray(v, dtype=np.uint64) & MASK32 for v in (c0, c1, c2, c3)]
    c0, c1, c2, c3 = np.broadcast_arrays(*c)
    k0, k1 = k0 & 0xFFFFFFFF, k1 & 0xFFFFFFFF
    for r in range(10):
        if r:
            k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
        p0, p1 = M0 * c0, M1 * c2  # < 2**64: exact in uint64
        hi0, lo0, hi1, lo1 = p0 >> np.uint64(32), p0 & MASK32, p1 >> np.uint64(32), p1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
    return [v.astype(np.uint32) for v in (c0, c1, c2, c3)]


def fnv1a32(s):
    h = 0x811C9DC5
    for b in s.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def keep_mask(seed, step, module, p, first_sample, samples, positions, features, feature0=0):
    """bool array (samples, positions, features): which elements of the adapter input are kept."""
    n = np.arange(first_sample, first_sample + samples, dtype=np.uint64)[:, None, None]
    t = np.arange(positions, dtype=np.uint64)[None, :, None]
    f = np.arange(feature0, feature0 + features, dtype=np.uint64)[None, None, :]
    w = philox4x32_10(f >> np.uint64(2), t, n, np.uint64(step), seed & 0xFFFFFFFF, (seed >> 32) ^ fnv1a32(module))
    word = np.choose((f & np.uint64(3)).astype(np.int64) + np.zeros(w[0].shape, dtype=np.int64), w)
    threshold = min(math.floor(p * 4294967296.0), 4294967295)
    return word >= np.uint32(threshold)


def main():
    bad = 0
    for ctr, key, want in KAT:
        got = tuple(int(v) for v in philox4x32_10(*ctr, *key))
        ok = got == want
        bad += not ok
        print(("ok  " if ok else "BAD ") + " ".join(f"{v:08x}" for v in got))
    m = keep_mask(42, 1, "model.layers.0.self_attn.q_proj", 0.1, 0, 4, 64, 512)
    print(f"keep rate of {m.size} elements at p=0.1: {m.mean():.5f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
