#!/usr/bin/env python3
"""Predicted vs measured pipeline bubble per schedule (stdlib only).

For every pp degree and schedule, compiles the same model (lora-compile prints the textbook
formula and the simulated bubble), runs it on CPU ranks with `lora-run --trace` and reads each
rank's measured shares from summary.json: the measured bubble of a rank is its exposed
communication + idle share of the step (docs/parallel.md, "Reading a trace"): the time it
waits for its neighbours instead of computing.

  measure_bubble.py --build build --config models/configs/tiny-llama-8l-h128.json \\
      --data tokens.bin --pp 2,4 --micro-batches 8 --seq-len 128 --out out/bubble

--make-data FILE writes FILE first: 65536 uniformly random tokens below the vocabulary
(llm.c's uint16 format), enough for the default batches (the measurement needs no real text).

Oversubscribed ranks (more ranks than free cores) distort the measurement: a rank that
waits in MPI spins and takes CPU from the rank it waits for. Prints a Markdown table.
"""
import argparse
import json
import os
import re
import subprocess
import sys

SCHEDULES = ["gpipe", "1f1b", "interleaved", "zb-h1"]


def run(cmd, log):
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    text = open(log).read()
    if p.returncode != 0:
        sys.stderr.write(text[-3000:])
        raise SystemExit(f"measure_bubble: command failed ({p.returncode}): {' '.join(cmd)}")
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pp", default="2,4")
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--micro-batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--virtual-stages", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--make-data", action="store_true", help="write --data first (random tokens, llm.c uint16)")
    a = ap.parse_args()
    if a.make_data:
        import random
        import struct
        vocab = json.load(open(a.config))["vocab_size"]
        rng = random.Random(1)
        n = 65536
        os.makedirs(os.path.dirname(os.path.abspath(a.data)), exist_ok=True)
        with open(a.data, "wb") as f:
            f.write(struct.pack("<256i", *([20240520, 1, n] + [0] * 253)))
            f.write(struct.pack(f"<{n}H", *[rng.randrange(min(vocab, 65536)) for _ in range(n)]))
    compile_ = os.path.join(a.build, "tools/lora-compile/lora-compile")
    lora_run = os.path.join(a.build, "tools/lora-run/lora-run")
    rows = []
    for pp in [int(x) for x in a.pp.split(",")]:
        for sched in a.schedules.split(","):
            d = os.path.join(a.out, f"pp{pp}-{sched}")
            os.makedirs(d, exist_ok=True)
            flags = [compile_, "--hf-config", a.config, "--batch", str(a.batch), "--seq-len", str(a.seq_len),
                     "--micro-batches", str(a.micro_batches), "--lora-rank", "8", "--lora-alpha", "16",
                     "--lora-targets", "all-linear", "--pp", str(pp), "--pipeline-schedule", sched,
                     "-o", os.path.join(d, "plan.lp")]
            if sched == "interleaved":
                flags += ["--virtual-stages", str(a.virtual_stages)]
            out = run(flags, os.path.join(d, "compile.log"))
            m = re.search(r"pipeline bubble: .*?: (.*?) = ([0-9.]+)%; simulated ([0-9.]+)% \(mean over ranks; per rank ([^)]*)\)"
                          r"(?:; step time ([0-9.]+)x 1f1b's)?", out)
            if not m:
                raise SystemExit(f"measure_bubble: no 'pipeline bubble' line in {d}/compile.log")
            cmd = ["mpirun", "-np", str(pp), "--oversubscribe", "--bind-to", "none", lora_run,
                   os.path.join(d, "plan.lp"), "--data", a.data, "--steps", str(a.steps), "--threads", str(a.threads),
                   "--log-every", str(a.steps), "--out", os.path.join(d, "run"),
                   "--trace", os.path.join(d, "run", "trace.json")]
            run(cmd, os.path.join(d, "run.log"))
            summary = json.load(open(os.path.join(d, "run", "summary.json")))
            measured = [r["exposed_comm_fraction"] + r["idle_fraction"] for r in summary["trace"]["ranks"]]
            rows.append((pp, sched, m.group(1), float(m.group(2)), float(m.group(3)), m.group(4),
                         m.group(5) or "1.00", measured, summary.get("step_time_s_median", 0.0)))
    print("| pp | schedule | formula | formula value | simulated (mean; per rank) | simulated step vs 1f1b "
          "| measured wait share per rank | measured step (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for pp, sched, formula, fv, sim, per, rel, measured, step in rows:
        meas = " ".join(f"{100 * x:.1f}%" for x in measured)
        print(f"| {pp} | {sched} | `{formula}` | {fv:.1f}% | {sim:.1f}% ({per}) | {float(rel):.2f}x | {meas} "
              f"| {1000 * step:.1f} ms |")


if __name__ == "__main__":
    main()
