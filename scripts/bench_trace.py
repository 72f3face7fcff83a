#!/usr/bin/env python3
"""Overhead of lora-run --trace (not a test): median step time with and without the trace.

    scripts/bench_trace.py [--repeats R] [--steps S] [--keep DIR]

Two workloads, each run alternately without and with --trace R times (default 5) so that
background load hits both alike; each run reports rank 0's median step time (summary.json
step_time_s_median: first step excluded), and the table gives the median over the R runs and
their ratio:
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


def median_step(cmd, out):
    subprocess.run(cmd + ["--out", out, "--overwrite"], check=True, env=ENV, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["step_time_s_median"]


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
    print(f"{'workload':8} {'off ms':>9} {'on ms':>9} {'ratio':>7}  per run (off/on ms)")
    for name, base in workloads.items():
        base = base + ["--data", data, "--steps", str(a.steps)]
        off, on = [], []
        for r in range(a.repeats):
            off.append(median_step(base, os.path.join(work, f"{name}_off")))
            on.append(median_step(base + ["--trace", os.path.join(work, f"{name}.json")], os.path.join(work, f"{name}_on")))
        mo, mn = statistics.median(off), statistics.median(on)
        runs = ", ".join(f"{x * 1e3:.2f}/{y * 1e3:.2f}" for x, y in zip(off, on))
        print(f"{name:8} {mo * 1e3:9.3f} {mn * 1e3:9.3f} {mn / mo:7.3f}  {runs}", flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f}; work files: {work}")


if __name__ == "__main__":
    sys.exit(main())
