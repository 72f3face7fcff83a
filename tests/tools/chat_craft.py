"""tests/tools/data_errors.test: writes a broken copy of a prepared token + label-mask pair (stdlib only).

    chat_craft.py KIND SRC_STEM OUT_STEM
KIND: token-beyond-vocab (token 5 becomes 300), mask-version (header[1] = 2), mask-length (the
mask of another file), no-trained (example 3's mask all 0).
"""
import struct
import sys

kind, src, out = sys.argv[1:4]
tok = bytearray(open(src + ".bin", "rb").read())
mask = bytearray(open(src + ".mask", "rb").read())
n, docs = struct.unpack_from("<Q", mask, 8)[0], struct.unpack_from("<Q", mask, 16)[0]
starts_at = 1024 + (n + 7) // 8 * 8
starts = list(struct.unpack_from(f"<{docs + 1}q", mask, starts_at))
if kind == "token-beyond-vocab":
    struct.pack_into("<H", tok, 1024 + 2 * 5, 300)
elif kind == "mask-version":
    struct.pack_into("<I", mask, 4, 2)
elif kind == "mask-length":
    mask = bytearray(open(sys.argv[4] + ".mask", "rb").read())
elif kind == "no-trained":
    for i in range(starts[2], starts[3]):
        mask[1024 + i] = 0
else:
    sys.exit(f"unknown kind {kind}")
open(out + ".bin", "wb").write(tok)
open(out + ".mask", "wb").write(mask)
