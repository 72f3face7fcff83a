"""Prints or checks the examples of a prepared token + label-mask pair (tests/tools/prepare_data_hf.test).

    prepared_ids.py STEM --against reference_ids.json   # every example's ids equal the reference's
    prepared_ids.py STEM --show K --tokenizer tokenizer.json   # example K decoded, trained part marked
"""
import argparse
import array
import json
import struct

ap = argparse.ArgumentParser()
ap.add_argument("stem")
ap.add_argument("--against")
ap.add_argument("--show", type=int)
ap.add_argument("--tokenizer")
a = ap.parse_args()
raw = open(a.stem + ".bin", "rb").read()
h = struct.unpack("<256i", raw[:1024])
toks = array.array("H" if h[0] == 20240520 else "I", raw[1024:])
m = open(a.stem + ".mask", "rb").read()
n, docs = struct.unpack_from("<QQ", m, 8)
mask = m[1024:1024 + n]
starts = struct.unpack_from(f"<{docs + 1}q", m, 1024 + (n + 7) // 8 * 8)
ex = [list(toks[starts[e]:starts[e + 1]]) for e in range(docs)]
if a.against:
    ref = json.load(open(a.against))["ids"]
    bad = [i for i, (x, y) in enumerate(zip(ex, ref)) if x != y]
    print(f"{min(len(ex), len(ref))} examples compared, {len(bad)} differ" + (f" (first: {bad[0] + 1})" if bad else ""))
if a.show is not None:
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(a.tokenizer)
    e = a.show - 1
    ids = ex[e]
    trained = [t for i, t in enumerate(ids) if mask[starts[e] + i]]
    print("example:", json.dumps(tk.decode(ids, skip_special_tokens=False)))
    print("trained:", json.dumps(tk.decode(trained, skip_special_tokens=False)))
