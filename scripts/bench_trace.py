#!/usr/bin/env python3
"""Overhead of lora-run --trace (not a test): median step time with and without the trace.

    scripts/bench_trace.py [--repeats R] [--steps S] [--keep DIR]

Two workloads, each run alternately without and with --trace R times (default 5) so that
background load hits both alike. Each run gives rank 0's median and fastest step time (the
steps of metrics.jsonl, first step excluded); the table gives, with and without the trace, the
median over the R runs of both, their ratios, and the median of the R paired ratios (run i
with / run i without). On a loaded machine the fastest step is the steadier estimate (background
load only ever adds time):
  bench   the CPU benchmark step of docs/benchmarks.md (issue 3): 4 layers, hidden 256,
          intermediate 688, vocab 1024, batch 4 x seq 256, LoRA r=16 on all linears, 1 rank,
          --threads 2 (about 150 kernels of 0.1-50 ms per step)
  tiny    the worst case for a per-event cost: tiny-llama-4l (hidden 64), dp 2 (mpirun -np 2),
          batch 8 x seq 32, 2 micro-batches, --threads 1 (about 400 kernels of microseconds per
          step and rank)
"""
import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))
COMPILE = os.path.join(BUILD, "tools/lora-compile/lora-compile")
RUN = os.path.join(BUILD, "tools/lora-run/lora-run")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")


def tokens(path, n, vocab):
    rng = random.Random(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *([20240520, 1, n] + [0] * 253)))
        f.write(struct.pack(f"<{n}H", *(rng.randrange(vocab) for _ in range(n))))


def step_times(cmd, out):
    """(median, fastest) step time of rank 0, first step excluded."""
    subprocess.run(cmd + ["--out", out, "--overwrite"], check=True, env=ENV, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        times = [r["step_time_s"] for r in map(json.loads, f) if "step_time_s" in r][1:]
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--keep")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="bench_trace_")
    os.makedirs(work, exist_ok=True)
    cfg = os.path.join(work, "bench_config.json")
    with open(cfg, "w") as f:
        json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 1024, "hidden_size": 256,
                   "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
                   "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
                   "torch_dtype": "float32"}, f)
    data = os.path.join(work, "tokens.bin")
    tokens(data, 1 << 16, 256)
    lora = ["--lora-rank", "16", "--lora-alpha", "32", "--lora-targets", "all-linear", "--lr", "1e-4"]
    subprocess.run([COMPILE, "--hf-config", cfg, "--batch", "4", "--seq-len", "256", *lora, "-o",
                    os.path.join(work, "bench.lp")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([COMPILE, "--hf-config", os.path.join(ROOT, "models/configs/tiny-llama-4l.json"), "--batch", "8",
                    "--seq-len", "32", "--micro-batches", "2", "--dp", "2", *lora, "-o", os.path.join(work, "tiny.lp")],
                   check=True, stdout=subprocess.DEVNULL)
    workloads = {
        "bench": [RUN, os.path.join(work, "bench.lp"), "--threads", "2"],
        "tiny": ["mpirun", "-np", "2", RUN, os.path.join(work, "tiny.lp"), "--threads", "1"],
    }
    print(f"{'workload':8} {'median off':>10} {'on':>8} {'ratio':>6} {'paired':>6}   {'fastest off':>11} {'on':>8} "
          f"{'ratio':>6} {'paired':>6}  (ms; load average before {os.getloadavg()[0]:.2f})")
    for name, base in workloads.items():
        base = base + ["--data", data, "--steps", str(a.steps)]
        off, on = [], []
        for r in range(a.repeats):
            off.append(step_times(base, os.path.join(work, f"{name}_off")))
            on.append(step_times(base + ["--trace", os.path.join(work, f"{name}.json")], os.path.join(work, f"{name}_on")))
        row = f"{name:8}"
        for k in (0, 1):
            mo, mn = statistics.median(x[k] for x in off), statistics.median(x[k] for x in on)
            paired = statistics.median(y[k] / x[k] for x, y in zip(off, on))
            row += f" {mo * 1e3:{10 if k == 0 else 13}.3f} {mn * 1e3:8.3f} {mn / mo:6.3f} {paired:6.3f} "
        print(row, flush=True)
        print("  per run, median off/on ms: " + ", ".join(f"{x[0] * 1e3:.1f}/{y[0] * 1e3:.1f}" for x, y in zip(off, on)))
        print("  per run, fastest off/on ms: " + ", ".join(f"{x[1] * 1e3:.1f}/{y[1] * 1e3:.1f}" for x, y in zip(off, on)))
    print(f"load average after: {os.getloadavg()[0]:.2f}; work files: {work}")


if __name__ == "__main__":
    sys.exit(main())
