#!/usr/bin/env python3
"""The planner's on-paper predictions for Llama-3.2-1B LoRA (r 16, q/v) at seq 2048 on H100s.

For 1, 2, 4, 8 H100 SXM on NVLink (one node) and 16, 32, 64 over 2, 4, 8 nodes (400 Gb/s IB
per GPU: models/devices/h100-sxm-nvlink.json), 8 sequences of 2048 tokens per GPU (global batch
8 N), every strategy family (pure dp, tp x dp, pp x dp with 1F1B and 2 pp micro-batches per stage,
and what --strategy auto picks), bf16: lora-compile's predicted step, tokens/s, MFU, allocation.

  planner_paper_table.py --build build [--plot docs/img/planner_h100.png] [--json out.json]
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
PRED = re.compile(r"predicted step on (\S+): ([0-9.e+]+) ms, ([0-9]+) tokens/s, MFU ([0-9.]+)%.*allocation ([0-9.]+) MiB")
CHOSEN = re.compile(r"chosen: #\d+ (.*?)  \(")


def families(n):
    out = [(f"dp{n}", ["--strategy", "hybrid", "--dp", str(n), "--micro-batches", "1"])]
    for t in (2, 4, 8):
        if t <= n and n % t == 0:
            out.append((f"tp{t}" + (f"xdp{n // t}" if n > t else ""), ["--strategy", "hybrid", "--tp", str(t), "--dp", str(n // t),
                                                                          "--micro-batches", "1"]))
    for pp in (2, 4, 8):
        if pp <= n and n % pp == 0:
            out.append((f"pp{pp}" + (f"xdp{n // pp}" if n > pp else "") + f"-1f1b-m{2 * pp}",
                        ["--strategy", "hybrid", "--pp", str(pp), "--dp", str(n // pp), "--micro-batches", str(2 * pp),
                         "--pipeline-schedule", "1f1b"]))
    out.append(("auto", ["--strategy", "auto", "--devices", str(n), "--top", "3"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--profile", default="h100-sxm-nvlink")
    ap.add_argument("--plot", default="")
    ap.add_argument("--out", default="/tmp/planner_paper")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        for name, flags in families(n):
            cmd = [os.path.join(a.build, "tools/lora-compile/lora-compile"), "--model-size", "1B", "--batch", str(8 * n),
                   "--seq-len", "2048", "--lora-rank", "16", "--lora-alpha", "32", "--precision", "bf16",
                   "--device-profile", a.profile, "-o", os.path.join(a.out, f"{name}-{n}.lp")] + flags
            if name == "auto":
                cmd.remove("--precision"), cmd.remove("bf16")
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"{name} on {n}: {p.stderr[-1500:]}")
            m = PRED.search(p.stdout)
            if name == "auto":
                name = "auto: " + CHOSEN.search(p.stdout).group(1)
            rows.append({"devices": n, "strategy": name, "ms": float(m.group(2)), "tokens_s": int(m.group(3)),
                         "mfu": float(m.group(4)), "mib": float(m.group(5))})
            os.remove(os.path.join(a.out, f"{flags and name.split(':')[0]}-{n}.lp")) if False else None
    print("| devices | strategy | step ms | tokens/s | tokens/s/GPU | MFU | allocation GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['strategy']} | {r['ms']:.1f} | {r['tokens_s']:,} | {r['tokens_s'] // r['devices']:,} | "
              f"{r['mfu']:.1f}% | {r['mib'] / 1024:.1f} |")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        fam = {}
        for r in rows:
            key = r["strategy"].split(":")[0]
            key = re.sub(r"xdp\d+", "", re.sub(r"^dp\d+", "dp (pure data parallel)", key))
            key = re.sub(r"^(tp\d+|pp\d+)", r"\1 x dp", key) if key[:2] in ("tp", "pp") else key
            fam.setdefault(key, []).append(r)
        for key, rs in sorted(fam.items()):
            style = dict(marker="x", ls="--", ms=9) if key == "auto" else dict(marker="o")
            ax[0].plot([r["devices"] for r in rs], [r["tokens_s"] / r["devices"] for r in rs], label=key, **style)
            ax[1].plot([r["devices"] for r in rs], [r["mfu"] for r in rs], label=key, **style)
        for x in ax:
            x.set_xscale("log", base=2)
            x.set_xlabel("H100 SXM (8 per node, NVLink; 400 Gb/s IB between nodes)")
            x.axvline(8.5, color="grey", lw=0.5)
        ax[0].set_ylabel("predicted tokens/s per GPU")
        ax[1].set_ylabel("predicted MFU (%)")
        ax[0].legend(fontsize=7)
        fig.suptitle("Llama-3.2-1B LoRA r16 (q,v), seq 2048, 8 sequences per GPU, bf16: planner predictions")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
        print(f"\nplot written to {a.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
