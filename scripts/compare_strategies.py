#!/usr/bin/env python3
"""Train the same model under several parallel strategies and compare them (stdlib only).

Every strategy is compiled with lora-compile (same model, seed, data, global batch and LoRA
config), run with `mpirun -np <ranks> lora-run` on CPU ranks, and compared with the
single-device run:
  * equivalence: the loss of every step (relative error) and the final PEFT adapter (max abs
    difference over the largest adapter value) must stay within fp32 tolerances;
  * communication: every rank's measured bytes sent per step must equal the compiler's
    prediction;
and the study's metrics are printed side by side: throughput (tokens/s, median over steps),
goodput (trained tokens/s of applied updates over the whole run: padding and masked labels
excluded, for --data with a label-mask file), wall time, train and validation
loss, per-rank predicted peak memory and measured peak RSS, bytes sent per step, bubble.

  compare_strategies.py --build build --config models/configs/tiny-llama-4l.json \\
      --data tokens.bin --steps 20 --out out/strategies [--strategies single,dp2,tp2,pp2-1f1b]

Exit status 1 when any strategy is not equivalent or a byte count differs.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import time

# The strategy names and their lora-compile flags are shared with tools/lora-study (stdlib only there).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "tools", "lora-study"))
from lora_study.results import read_metrics as metrics  # noqa: E402
from lora_study.strategies import DEFAULT_STRATEGIES, EXTRA_STRATEGIES, StrategyError, parse, with_defaults  # noqa: E402


def read_safetensors(path):
    """{name: list of floats} of an F32 safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {meta['dtype']}, expected F32")
        a, b = meta["data_offsets"]
        out[name] = struct.unpack(f"<{(b - a) // 4}f", data[a:b])
    return out


def run(cmd, log, env):
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if p.returncode != 0:
        sys.stderr.write(open(log).read()[-4000:])
        raise SystemExit(f"compare_strategies: command failed ({p.returncode}): {' '.join(cmd)}\n  log: {log}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--config", required=True, help="HF config.json of the model (random init)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--val-data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences per optimizer step)")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                    help="comma-separated names (tools/lora-study/lora_study/strategies.py: dp2, tp4, pp2-1f1b-m4, "
                         "dp2xtp2xpp2-zero1, ...); opt-in extras: " + ",".join(EXTRA_STRATEGIES))
    ap.add_argument("--lr", default="2e-3")
    ap.add_argument("--lora-targets", default="all-linear")
    ap.add_argument("--loss-rtol", type=float, default=1e-4)
    ap.add_argument("--adapter-rtol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    ap.add_argument("--recompute", default="none", choices=["none", "layers"],
                    help="lora-compile --recompute of every plan but the single-device reference")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="lora-compile --precision of every plan (bf16: compare against the single-device bf16 run)")
    ap.add_argument("--packing", action="store_true",
                    help="lora-compile --packing for every plan (packed example rows: --data needs its label-mask file)")
    ap.add_argument("--lora-dropout", default="0",
                    help="lora-compile --lora-dropout of every plan (the mask is the same under every mesh)")
    ap.add_argument("--comm-timeout", type=float, default=120)
    ap.add_argument("--val-every", type=int, default=0,
                    help="validate every K steps (default: steps/6) for the statistical-efficiency columns")
    ap.add_argument("--target-val-loss", type=float,
                    help="validation loss to reach (default: halfway from the single-device run's first to its last validation loss)")
    a = ap.parse_args()
    names = [s for s in a.strategies.split(",") if s]
    if "single" not in names:
        names.insert(0, "single")
    plans = {}
    for s in names:
        try:
            plans[s] = with_defaults(parse(s), a.batch)
        except StrategyError as e:
            ap.error(str(e))
    compile_bin = os.path.join(a.build, "tools/lora-compile/lora-compile")
    run_bin = os.path.join(a.build, "tools/lora-run/lora-run")
    os.makedirs(a.out, exist_ok=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS=str(a.threads))
    common = ["--hf-config", a.config, "--batch", str(a.batch), "--seq-len", str(a.seq_len),
              "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", a.lora_targets,
              "--lr", a.lr, "--warmup", "3", "--lr-schedule", "cosine", "--weight-decay", "0.01",
              "--max-grad-norm", "1.0", "--precision", a.precision, "--lora-dropout", a.lora_dropout] + \
        (["--packing"] if a.packing else [])
    results = {}
    for name in names:
        flags, micro, np = plans[name].compile_flags(), plans[name].micro, plans[name].ranks
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        plan = os.path.join(d, "plan.lp")
        extra = ["--recompute", a.recompute] if name != "single" else []
        run([compile_bin] + common + flags + extra + ["-o", plan], os.path.join(d, "compile.log"), env)
        train = [run_bin, plan, "--data", a.data, "--steps", str(a.steps), "--seed", "7", "--threads", str(a.threads),
                 "--comm-timeout", str(a.comm_timeout), "--log-every", str(a.steps), "--out", os.path.join(d, "run")]
        if a.val_data:
            train += ["--val-data", a.val_data, "--val-every", str(a.val_every or max(1, a.steps // 6))]
        run_dir = os.path.join(d, "run")
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            train += ["--overwrite"]  # this script owns --out/<strategy>/run: a rerun replaces it
        cmd = (["mpirun", "-np", str(np), "--oversubscribe", "--bind-to", "none"] + train) if np > 1 else train
        print(f"== {name}: {np} rank(s): {' '.join(cmd)}", flush=True)
        t0 = time.time()
        run(cmd, os.path.join(d, "run.log"), env)
        steps, val = metrics(os.path.join(d, "run", "metrics.jsonl"))
        summary = json.load(open(os.path.join(d, "run", "summary.json")))
        adapter = read_safetensors(os.path.join(d, "run", "adapter", "adapter_model.safetensors"))
        results[name] = dict(ranks=np, micro=micro, steps=steps, val=val, summary=summary, adapter=adapter,
                             seconds=time.time() - t0)

    ref = results["single"]
    target = a.target_val_loss
    if target is None and ref["val"]:
        first, last = ref["val"][min(ref["val"])], ref["val"][max(ref["val"])]
        target = first + 0.5 * (last - first)

    def to_target(r):
        """(steps, training seconds) until the validation loss first reaches the target."""
        if target is None:
            return None
        for step in sorted(r["val"]):
            if r["val"][step] <= target:
                secs = sum(v.get("step_time_s", 0) for k, v in r["steps"].items() if k <= step)
                return step, secs
        return None
    ref_max = max(max(abs(x) for x in v) for v in ref["adapter"].values())
    ok_all = True
    rows = []
    for name in names:
        r = results[name]
        s = r["summary"]
        # Equivalence with the single-device run.
        loss_err = max(abs(r["steps"][k]["loss"] - ref["steps"][k]["loss"]) / abs(ref["steps"][k]["loss"])
                       for k in ref["steps"])
        for k in ref["val"]:  # validation covers the same sequences under every strategy
            loss_err = max(loss_err, abs(r["val"][k] - ref["val"][k]) / abs(ref["val"][k]))
        if sorted(r["adapter"]) != sorted(ref["adapter"]):
            raise SystemExit(f"{name}: adapter tensors differ from the single-device run")
        ad_err = max(max(abs(x - y) for x, y in zip(r["adapter"][k], ref["adapter"][k])) for k in ref["adapter"]) / ref_max
        # Bytes: measured == predicted on every rank.
        bytes_ok, sent = True, 0
        for rk in s.get("ranks", []):
            m, p = rk["bytes_sent_per_step"], rk["bytes_sent_predicted"]
            for k in set(m) | set(p):
                if abs(float(m.get(k, 0)) - float(p.get(k, 0))) > 0.5:
                    bytes_ok = False
            sent = max(sent, sum(float(v) for v in m.values()))
        ok = loss_err <= a.loss_rtol and ad_err <= a.adapter_rtol and bytes_ok
        ok_all &= ok
        tokens = a.batch * a.seq_len
        applied = sum(1 for v in r["steps"].values() if not v.get("skipped", False))
        peak_pred = max(rk.get("predicted_peak_bytes", 0) for rk in s["ranks"]) / 2**20
        bubble = 100 * max(rk.get("predicted_bubble_fraction", 0) for rk in s["ranks"])
        rss = max([rk.get("peak_rss_mib", 0) for rk in s.get("ranks", [])] + [s.get("peak_rss_mib", 0)])
        mesh = s.get("mesh", {"dp": 1, "tp": 1, "pp": 1})
        reach = to_target(r)
        rows.append([name, f"{mesh['dp']}x{mesh['tp']}x{mesh['pp']}", str(r["ranks"]), str(r["micro"]),
                     f"{s['tokens_per_s_median']:.0f}", f"{s.get('trained_tokens', applied * tokens) / s['wall_time_s']:.0f}",
                     f"{s['wall_time_s']:.2f}", f"{r['steps'][max(r['steps'])]['loss']:.4f}",
                     f"{r['val'][max(r['val'])]:.4f}" if r["val"] else "-",
                     f"{reach[0]} / {reach[1]:.2f}" if reach else "-", f"{peak_pred:.2f}", f"{rss:.0f}",
                     f"{sent / 1024:.1f}", f"{bubble:.1f}%", f"{loss_err:.1e}", f"{ad_err:.1e}",
                     "ok" if ok else ("BYTES" if not bytes_ok else "DIFF")])
    head = ["strategy", "dp x tp x pp", "ranks", "M", "tok/s", "goodput", "wall s", "loss", "val loss", "to target: steps / s",
            "pred MiB/rank", "RSS MiB", "KiB sent/step", "bubble", "loss rel err", "adapter err", "check"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print()
    if target is not None:
        print(f"target validation loss {target:.4f}: optimizer steps and training seconds until a validation reached it")
    print(f"equivalence with the single-device run: loss rtol {a.loss_rtol:g}, adapter max|diff|/max|w| "
          f"{a.adapter_rtol:g}; bytes sent measured == predicted on every rank")
    if not ok_all:
        print("compare_strategies: FAILED")
        return 1
    print(f"compare_strategies: all {len(rows)} strategies equivalent over {a.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
