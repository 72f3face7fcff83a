#!/usr/bin/env python3
"""Compare the per-step losses of a lora-run metrics.jsonl with a reference (stdlib only).

  compare_losses.py run/metrics.jsonl --reference tests/fixtures/train/tiny/reference.json [--rtol 1e-4]
  compare_losses.py run/metrics.jsonl --against other/metrics.jsonl --exact   # e.g. resumed vs uninterrupted

Prints one line per step and exits 1 on the first mismatch beyond the tolerance.
"""
import argparse
import json
import sys


def step_losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["step"]] = rec["loss"]  # a resumed run may repeat steps: the last one counts
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics")
    ap.add_argument("--reference", help="reference.json with a 'losses' list (step 1 first)")
    ap.add_argument("--against", help="another metrics.jsonl")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--exact", action="store_true", help="require bit-identical losses")
    a = ap.parse_args()
    ours = step_losses(a.metrics)
    if a.reference:
        ref = {i + 1: v for i, v in enumerate(json.load(open(a.reference))["losses"])}
    elif a.against:
        ref = step_losses(a.against)
    else:
        ap.error("give --reference or --against")
    if sorted(ours) != sorted(ref):
        print(f"error: steps differ: {a.metrics} has {sorted(ours)}, reference has {sorted(ref)}")
        return 1
    worst = 0.0
    for step in sorted(ref):
        got, want = ours[step], ref[step]
        rel = abs(got - want) / abs(want)
        worst = max(worst, rel)
        ok = got == want if a.exact else rel <= a.rtol
        print(f"step {step:3d}: ours {got:.8f} reference {want:.8f} rel err {rel:.2e}{'' if ok else '  MISMATCH'}")
        if not ok:
            return 1
    print(f"all {len(ref)} steps match ({'exactly' if a.exact else f'rtol {a.rtol:g}'}; worst rel err {worst:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
