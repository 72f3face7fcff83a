#!/usr/bin/env python3
"""Validate the planner's predictions against measured runs on this machine (stdlib only).

For each strategy: lora-compile (with --device-profile), then `mpirun -np <ranks> lora-run
--threads 1` (one core per rank: the cpu-local profile is calibrated with one thread per rank),
and compare the plan's predictions with the run's summary.json:
  * step time: Plan::predicted_step_s vs the measured median step (first step excluded), judged
    only for strategies with at most --max-time-ranks ranks (no oversubscription: 2 on a 2-core
    machine); per-strategy error, median and worst absolute error, Spearman rank correlation of
    the ordering, and the pairs whose measured times differ by more than 10% but are predicted
    in the wrong order;
  * memory, every strategy and rank: RankPlan::predicted_alloc_bytes (the planner) and
    RankPlan::peak_bytes (the compiler) vs the runtime's allocation high-water mark
    (alloc_peak_bytes: the executor's block + the CPU bf16 widening scratch; not RSS).

  validate_planner.py --build build [--profile cpu-local | --calibrate p.json] [--steps 30] [--repeats 1] [--out out/validate]
                      [--json out.json]

Prints a Markdown table, then the goal verdict (median |time error| <= 5%, worst <= 10%, no pair
of strategies more than 10% apart in measured time predicted in the wrong order, memory within
1%). Exit status 1 when a run fails (not when a goal is missed: the numbers are the result).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))

# name: (ranks, lora-compile flags). Time is judged for <= 2 ranks; memory for all.
STRATEGIES = [
    ("single", ["--micro-batches", "1"]),
    ("single-m2", ["--micro-batches", "2"]),
    ("single-m4", ["--micro-batches", "4"]),
    ("single-recompute", ["--micro-batches", "1", "--recompute", "layers"]),
    ("single-bf16", ["--micro-batches", "1", "--precision", "bf16"]),
    ("single-bf16-m2", ["--micro-batches", "2", "--precision", "bf16"]),
    ("dp2", ["--strategy", "data", "--dp", "2", "--micro-batches", "1"]),
    ("dp2-m2", ["--strategy", "data", "--dp", "2", "--micro-batches", "2"]),
    ("dp2-zero1", ["--strategy", "data", "--dp", "2", "--micro-batches", "1", "--zero1"]),
    ("dp2-bf16", ["--strategy", "data", "--dp", "2", "--micro-batches", "1", "--precision", "bf16"]),
    ("dp2-recompute", ["--strategy", "data", "--dp", "2", "--micro-batches", "1", "--recompute", "layers"]),
    ("tp2", ["--strategy", "tensor", "--tp", "2", "--micro-batches", "1"]),
    ("tp2-bf16", ["--strategy", "tensor", "--tp", "2", "--micro-batches", "1", "--precision", "bf16"]),
    ("pp2-gpipe-m2", ["--strategy", "pipeline", "--pp", "2", "--pipeline-schedule", "gpipe", "--micro-batches", "2"]),
    ("pp2-1f1b-m4", ["--strategy", "pipeline", "--pp", "2", "--pipeline-schedule", "1f1b", "--micro-batches", "4"]),
    ("pp2-gpipe-m4", ["--strategy", "pipeline", "--pp", "2", "--pipeline-schedule", "gpipe", "--micro-batches", "4"]),
    ("pp2-interleaved-m4", ["--strategy", "pipeline", "--pp", "2", "--pipeline-schedule", "interleaved",
                            "--virtual-stages", "2", "--micro-batches", "4"]),
    ("pp2-zb-h1-m4", ["--strategy", "pipeline", "--pp", "2", "--pipeline-schedule", "zb-h1", "--micro-batches", "4"]),
    ("pp2-1f1b-m4-bf16", ["--strategy", "pipeline", "--pp", "2", "--pipeline-schedule", "1f1b", "--micro-batches", "4",
                          "--precision", "bf16"]),
    # Memory only (oversubscribed on 2 cores).
    ("dp4", ["--strategy", "data", "--dp", "4", "--micro-batches", "1"]),
    ("tp4", ["--strategy", "tensor", "--tp", "4", "--micro-batches", "1"]),
    ("pp4-1f1b-m8", ["--strategy", "pipeline", "--pp", "4", "--pipeline-schedule", "1f1b", "--micro-batches", "8"]),
    ("dp2xtp2", ["--strategy", "hybrid", "--dp", "2", "--tp", "2", "--micro-batches", "1"]),
    ("dp2xtp2xpp2-zero1", ["--strategy", "hybrid", "--dp", "2", "--tp", "2", "--pp", "2", "--micro-batches", "2",
                           "--zero1"]),
    ("tp2xpp2-bf16", ["--strategy", "hybrid", "--tp", "2", "--pp", "2", "--micro-batches", "4", "--precision", "bf16"]),
]


def ranks_of(flags):
    r = 1
    for k in ("--dp", "--tp", "--pp"):
        if k in flags:
            r *= int(flags[flags.index(k) + 1])
    return r


def spearman(xs, ys):
    def rank(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):  # average ranks of ties
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r
    rx, ry = rank(xs), rank(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else 1.0


def verdict(summary):
    """The issue's goals as (name, goal, value, met) rows."""
    return [
        ("median |time error|", "<= 5%", f"{summary['time_median_abs_error_pct']:.1f}%", summary["time_median_abs_error_pct"] <= 5),
        ("worst |time error|", "<= 10%", f"{summary['time_max_abs_error_pct']:.1f}%", summary["time_max_abs_error_pct"] <= 10),
        ("rank inversions (pairs > 10% apart predicted in the wrong order)", "0", str(len(summary["wrong_order_pairs"])),
         not summary["wrong_order_pairs"]),
        ("worst |memory error|", "<= 1%", f"{summary['memory_max_abs_error_pct']:.3f}%", summary["memory_max_abs_error_pct"] <= 1),
    ]


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        c = "tab:blue" if r["ranks"] == 1 else "tab:orange" if r["timed"] else "tab:grey"
        if r["timed"]:
            ax[0].scatter(1e3 * r["measured_s"], 1e3 * r["predicted_s"], color=c)
            ax[0].annotate(r["name"], (1e3 * r["measured_s"], 1e3 * r["predicted_s"]), fontsize=6)
        for m in r["memory"]:
            ax[1].scatter(m["measured"] / 2**20, m["planner"] / 2**20, color=c, s=12)
    for x, what in zip(ax, ("step time (ms)", "allocation per rank (MiB)")):
        lo, hi = x.get_xlim()
        x.plot([0, hi], [0, hi], color="black", lw=0.6)
        x.set_xlabel("measured " + what)
        x.set_ylabel("predicted " + what)
    ax[0].set_title("time: 1 rank (blue), 2 ranks (orange); machine under load", fontsize=9)
    ax[1].set_title("memory: every rank of every strategy (grey: > 2 ranks)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--config", default=os.path.join(ROOT, "models/configs/tiny-llama-4l.json"))
    ap.add_argument("--data", default=os.path.join(ROOT, "tests/fixtures/train/tiny/tokens.bin"))
    ap.add_argument("--profile", default="cpu-local", help="device profile name or file (e.g. one written by "
                    "lora-bench --calibrate --hf-config <the model> --batch <batch> --seq-len <seq>)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds: each round runs every timed strategy once, in turn; a strategy's measured step is "
                         "the median of its rounds' median steps (default 1)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-time-ranks", type=int, default=2, help="judge time only up to this many ranks (cores)")
    ap.add_argument("--strategies", default="", help="comma-separated subset of the names above")
    ap.add_argument("--out", default="/tmp/validate_planner")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--plot", default="", help="predicted vs measured picture (needs matplotlib: run with /usr/bin/python3)")
    ap.add_argument("--replot", default="", help="only draw --plot from an earlier --json file")
    ap.add_argument("--calibrate", default="", metavar="PROFILE.json",
                    help="first calibrate this machine into PROFILE.json (mpirun -np 2 lora-bench --calibrate at the "
                    "model's shapes, --step-plan = the single-rank plan of the model) and validate with it")
    a = ap.parse_args()
    if a.repeats < 1 or a.steps < 2:
        ap.error("--repeats must be at least 1 and --steps at least 2")
    if a.replot:
        plot(json.load(open(a.replot))["results"], a.plot)
        return
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    compile_bin = os.path.join(a.build, "tools/lora-compile/lora-compile")
    run_bin = os.path.join(a.build, "tools/lora-run/lora-run")
    chosen = [s for s in STRATEGIES if not a.strategies or s[0] in a.strategies.split(",")]
    os.makedirs(a.out, exist_ok=True)
    base = ["--hf-config", a.config, "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--lora-rank", "4",
            "--lora-alpha", "8", "--lora-targets", "all-linear"]
    if a.calibrate:
        cal_plan = os.path.join(a.out, "calibration.lp")
        p = subprocess.run([compile_bin] + base + ["--micro-batches", "1", "-o", cal_plan], capture_output=True, text=True,
                           env=env)
        if p.returncode:
            sys.exit(f"validate_planner: --calibrate: lora-compile failed:\n{p.stderr[-2000:]}")
        cal_bf16 = os.path.join(a.out, "calibration_bf16.lp")  # the same model in bf16: in_step.bf16
        p = subprocess.run([compile_bin] + base + ["--micro-batches", "1", "--precision", "bf16", "-o", cal_bf16],
                           capture_output=True, text=True, env=env)
        if p.returncode:
            sys.exit(f"validate_planner: --calibrate: lora-compile (bf16) failed:\n{p.stderr[-2000:]}")
        bench = ["mpirun", "-np", "2", os.path.join(a.build, "tools/lora-bench/lora-bench"), "--calibrate", "--hf-config",
                 a.config, "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--threads", "1", "--step-plan", cal_plan,
                 "--step-plan-bf16", cal_bf16, "--name", "cpu-local", "-o", a.calibrate]
        print("validate_planner: " + " ".join(bench), file=sys.stderr)
        p = subprocess.run(bench, text=True, env=env)
        if p.returncode:
            sys.exit("validate_planner: --calibrate: lora-bench failed")
        a.profile = os.path.realpath(a.calibrate)
    # Compile every strategy, then run them in rounds: round k runs each strategy once (its k-th
    # run), so a slow spell of the machine hits one run of several strategies instead of every
    # run of one; a timed strategy's measured step is the median of its rounds' median steps.
    jobs = []
    for name, flags in chosen:
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        plan = os.path.join(d, "plan.lp")
        cmd = [compile_bin] + base + ["--device-profile", a.profile, "-o", plan] + flags
        n = ranks_of(flags)
        if n == 1:
            cmd.append("--cost-breakdown")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode:
            sys.exit(f"validate_planner: {name}: lora-compile failed:\n{p.stderr[-2000:]}")
        pred_ops = {m.group(1): float(m.group(2)) for m in re.finditer(r"^    (\w+) +([0-9.]+) s +[0-9.]+%$", p.stdout, re.M)}
        timed = n <= a.max_time_ranks
        run = ["mpirun", "-np", str(n), run_bin, plan, "--data", a.data, "--steps", str(a.steps if timed else 3),
               "--threads", "1", "--out", os.path.join(d, "run"), "--overwrite"] + (["--profile"] if n == 1 else [])
        jobs.append({"name": name, "n": n, "timed": timed, "run": run, "dir": d, "pred_ops": pred_ops,
                     "medians": [], "summary": None})
    for k in range(a.repeats):
        for j in jobs:
            if k > 0 and not j["timed"]:
                continue  # memory only: one run
            p = subprocess.run(j["run"], capture_output=True, text=True, env=env)
            if p.returncode:
                sys.exit(f"validate_planner: {j['name']}: lora-run failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
            j["summary"] = json.load(open(os.path.join(j["dir"], "run", "summary.json")))
            j["medians"].append(j["summary"]["step_time_s_median"])
    results = []
    for j in jobs:
        name, n, s, pred_ops, medians = j["name"], j["n"], j["summary"], j["pred_ops"], j["medians"]
        measured = statistics.median(medians)
        mem = []
        for r in s["ranks"]:
            mem.append({"rank": r["rank"], "measured": r["alloc_peak_bytes"], "planner": r["predicted_alloc_bytes"],
                        "compiler": r["predicted_peak_bytes"]})
        ops = None
        if n == 1 and "profile" in s and pred_ops:
            meas = {k: v["seconds"] for k, v in s["profile"].items()}
            tp, tm = sum(pred_ops.values()), sum(meas.values())
            keys = set(pred_ops) | set(meas)
            # Total variation distance between the predicted and measured shares of kernel time:
            # 0 = the model puts the time in the same places as the run; load scales both alike.
            ops = {"tv_distance": 0.5 * sum(abs(pred_ops.get(k, 0) / tp - meas.get(k, 0) / tm) for k in keys),
                   "predicted": pred_ops, "measured_per_step": {k: v / a.steps for k, v in meas.items()}}
        results.append({"name": name, "ranks": n, "timed": j["timed"], "predicted_s": s["predicted_step_s"],
                        "measured_s": measured, "measured_runs_s": medians, "memory": mem, "ops": ops})
        print(f"validate_planner: {name}: predicted {1e3 * s['predicted_step_s']:.3f} ms, measured "
              f"{1e3 * measured:.3f} ms" + (f" (median of {', '.join(f'{1e3 * x:.3f}' for x in medians)})"
                                            if len(medians) > 1 else ""), file=sys.stderr)

    def err(p, m):
        return 100.0 * (p - m) / m if m else 0.0

    print("| strategy | ranks | predicted ms | measured ms | time error | memory: planner vs allocated (worst rank) | compiler peak vs allocated |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        w_pl = max(r["memory"], key=lambda m: abs(err(m["planner"], m["measured"])))
        w_co = max(r["memory"], key=lambda m: abs(err(m["compiler"], m["measured"])))
        t = f"{err(r['predicted_s'], r['measured_s']):+.1f}%" if r["timed"] else "(not judged: oversubscribed)"
        print(f"| {r['name']} | {r['ranks']} | {1e3 * r['predicted_s']:.3f} | {1e3 * r['measured_s']:.3f} | {t} | "
              f"{err(w_pl['planner'], w_pl['measured']):+.3f}% ({w_pl['measured'] / 1024:.1f} KiB) | "
              f"{err(w_co['compiler'], w_co['measured']):+.2f}% |")
    timed = [r for r in results if r["timed"]]
    summary = {}
    if timed:
        errs = [abs(err(r["predicted_s"], r["measured_s"])) for r in timed]
        rho = spearman([r["predicted_s"] for r in timed], [r["measured_s"] for r in timed])
        wrong = []
        for i, x in enumerate(timed):
            for y in timed[i + 1:]:
                if abs(x["measured_s"] - y["measured_s"]) > 0.1 * min(x["measured_s"], y["measured_s"]) and \
                        (x["measured_s"] < y["measured_s"]) != (x["predicted_s"] < y["predicted_s"]):
                    wrong.append(f"{x['name']} vs {y['name']}")
        mem_errs = [abs(err(m["planner"], m["measured"])) for r in results for m in r["memory"]]
        summary = {"time_median_abs_error_pct": statistics.median(errs), "time_max_abs_error_pct": max(errs),
                   "spearman": rho, "wrong_order_pairs": wrong, "memory_max_abs_error_pct": max(mem_errs)}
        print(f"\ntime (<= {a.max_time_ranks} ranks, {len(timed)} strategies): median |error| {summary['time_median_abs_error_pct']:.1f}%, "
              f"worst {summary['time_max_abs_error_pct']:.1f}%, Spearman {rho:.3f}, pairs >10% apart in the wrong order: "
              f"{len(wrong)}{' (' + '; '.join(wrong) + ')' if wrong else ''}")
        print(f"memory ({sum(len(r['memory']) for r in results)} ranks of {len(results)} strategies): worst |error| of the "
              f"planner's allocation {summary['memory_max_abs_error_pct']:.3f}%")
        summary["goals"] = verdict(summary)
        print("\ngoals (issue 19):")
        for name, goal, value, ok in summary["goals"]:
            print(f"  {'MET   ' if ok else 'MISSED'} {name}: {value} (goal {goal})")
        low = sum(1 for r in timed if r["predicted_s"] < r["measured_s"])
        print(f"  predictions below the measurement: {low} of {len(timed)}")
    shaped = [r for r in results if r.get("ops")]
    if shaped:
        print("\nwhere the time goes (1 rank: predicted vs lora-run --profile shares of kernel time; "
              "total variation distance, 0 = identical):")
        for r in shaped:
            o = r["ops"]
            top = sorted(o["predicted"], key=lambda k: -o["predicted"][k])[:4]
            tp, tm = sum(o["predicted"].values()), sum(o["measured_per_step"].values())
            shares = ", ".join(f"{k} {100 * o['predicted'][k] / tp:.0f}%/{100 * o['measured_per_step'].get(k, 0) / tm:.0f}%" for k in top)
            print(f"  {r['name']}: TV {o['tv_distance']:.3f}; measured/predicted kernel time {tm / tp:.2f}x; {shares}")
        summary["ops_tv_distance_median"] = statistics.median(r["ops"]["tv_distance"] for r in shaped)
    if a.plot:
        plot(results, a.plot)
    if a.json:
        json.dump({"results": results, "summary": summary, "profile": a.profile}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
