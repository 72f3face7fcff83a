#!/usr/bin/env python3
"""Checks a run resumed under another strategy against an uninterrupted reference run.

usage: resume_check.py NAME REF_DIR RUN_DIR [--from-step K] [--loss-rtol R] [--adapter-rtol A]

REF_DIR and RUN_DIR are lora-run --out directories (metrics.jsonl, adapter/). Every step of the
reference (from --from-step on) must be in the run's metrics with a loss within R relative
(compare_strategies.py's rule), and the final adapters must agree within A x the largest weight.
Prints one line: "NAME: steps a..b max loss rel diff X, adapter max|diff|/max|w| Y ok" or fails.
"""
import argparse
import json
import struct
import sys


def losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "step" in r:
                out[r["step"]] = r["loss"]
    return out


def adapter(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        out[name] = struct.unpack(f"<{(b - a) // 4}f", data[a:b])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("ref")
    ap.add_argument("run")
    ap.add_argument("--from-step", type=int, default=1)
    ap.add_argument("--loss-rtol", type=float, default=1e-4)
    ap.add_argument("--adapter-rtol", type=float, default=1e-4)
    a = ap.parse_args()
    ref, run = losses(a.ref + "/metrics.jsonl"), losses(a.run + "/metrics.jsonl")
    steps = sorted(k for k in ref if k >= a.from_step)
    if not steps:
        raise SystemExit(f"{a.name}: the reference has no steps from {a.from_step}")
    missing = [k for k in steps if k not in run]
    if missing:
        raise SystemExit(f"{a.name}: the run has no loss for steps {missing}")
    loss_err = max(abs(run[k] - ref[k]) / abs(ref[k]) for k in steps)
    ra, rb = adapter(a.ref + "/adapter/adapter_model.safetensors"), adapter(a.run + "/adapter/adapter_model.safetensors")
    if sorted(ra) != sorted(rb):
        raise SystemExit(f"{a.name}: adapter tensors differ: {sorted(set(ra) ^ set(rb))[:4]}")
    wmax = max(max(abs(x) for x in v) for v in ra.values())
    ad_err = max(max(abs(x - y) for x, y in zip(ra[k], rb[k])) for k in ra) / wmax
    ok = loss_err <= a.loss_rtol and ad_err <= a.adapter_rtol
    print(f"{a.name}: steps {steps[0]}..{steps[-1]} max loss rel diff {loss_err:.2e} (rtol {a.loss_rtol:g}), "
          f"adapter max|diff|/max|w| {ad_err:.2e} (rtol {a.adapter_rtol:g}) {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
