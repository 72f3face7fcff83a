"""lora-study: train one model under several parallel strategies and report the study's metrics.

Every strategy is compiled with lora-compile and trained with lora-run (mpirun -np <ranks> for
multi-rank plans) on the same model, data, seed, global batch and LoRA settings; the figures come
from each run's summary.json and metrics.jsonl. Writes into --out:

  study.json     every figure of every strategy, the machine, the git commit, the exact commands
  study.md       one row per strategy: time reduction, throughput increase, memory reduction vs the
                 baseline, goodput, steps/seconds to --target-loss, wall time, loss, peak memory,
                 bytes sent, bubble, utilization (CPU: compute / communication / idle split)
  *.png, *.svg   throughput, memory per device, utilization, loss curves (matplotlib)
  index.html     all of it in one self-contained page
  strategies/<name>/   plan.lp, compile.log, run.log, run/ (lora-run's --out)

A killed study restarted with the same --out and options skips the strategies that finished.
"""
import argparse
import os
import shlex
import sys
import time

from . import environment, html, report, results, runner
from . import strategies as strat

HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
MODEL_SIZES = {"1B": "llama-3.2-1b.json", "1.1B": "tinyllama-1.1b.json", "tiny": "tiny-llama.json",
               "tiny-4l": "tiny-llama-4l.json"}

EPILOG = """strategies (comma-separated, positional or --strategies; default: the 15 of compare_strategies.py):
  single, dp2, dp4, tp2, tp4, pp2-gpipe-m2, pp2-1f1b-m4, pp4-gpipe-m4, pp4-1f1b-m8, dp2xpp2, dp2xtp2,
  tp2xpp2, dp2xtp2xpp2, dp4-zero1, dp2xtp2xpp2-zero1; in general MESH[-gpipe|-1f1b|-zbh1|-vV][-mM][-zero1]
  with MESH = dpN, tpN, ppN joined by 'x' (zbh1: zero-bubble ZB-H1; vV: interleaved 1F1B with V chunks
  per rank, e.g. pp2-v2-m4). Seed spellings: data_parallel (dp over --gpus),
  model_parallel / tensor_parallel (tp over --gpus), pipeline_parallel (--stages),
  hybrid_parallel (--nodes x --gpus-per-node: tp inside a node, pp across nodes).

examples:
  lora-study --hf-config models/configs/tiny-llama-4l.json --data gpl.bin --val-data gpl_val.bin --out out/study
  lora-study single,dp2,tp2 --hf-config models/configs/tiny-llama-4l.json --data gpl.bin --steps 10 --out out/s
  lora-study data_parallel --gpus 4 --model_size 1B --batch 4 --seq-len 512 --data t.bin --backend cuda --out out/1b

exit status: 0 every strategy ran, 1 a strategy failed (the others are still reported), 2 usage error.
"""


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="lora-study", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("strategy_list", nargs="*", metavar="STRATEGY", help="strategies (see below)")
    g = ap.add_argument_group("model")
    g.add_argument("--hf-config", help="HF config.json of a LLaMA model")
    g.add_argument("--weights", help="HF checkpoint directory or .safetensors (default: random init)")
    g.add_argument("--onnx", help="an ONNX export instead of --hf-config")
    g.add_argument("--model-size", "--model_size", dest="model_size", choices=sorted(MODEL_SIZES),
                   help="a built-in config: 1B = models/configs/llama-3.2-1b.json, 1.1B = TinyLlama, tiny, tiny-4l")
    g = ap.add_argument_group("data")
    g.add_argument("--data", required=True, help="training tokens (llm.c .bin; scripts/tokenize_text.py writes one)")
    g.add_argument("--val-data", help="validation tokens: the target loss is then a validation loss")
    g.add_argument("--val-every", type=int, default=0, help="validate every K steps (default steps/10)")
    g.add_argument("--val-batches", type=int, default=0, help="validation batches (0: all)")
    g = ap.add_argument_group("strategies")
    g.add_argument("--strategies", "--strategy", dest="strategies", action="append", default=[],
                   help="comma-separated strategy names (repeatable)")
    g.add_argument("--baseline", default="single", help="the strategy ratios are taken against (default single)")
    g.add_argument("--gpus", type=int, default=2, help="devices of data_parallel / model_parallel (default 2)")
    g.add_argument("--stages", type=int, default=2, help="stages of pipeline_parallel (default 2)")
    g.add_argument("--nodes", type=int, default=2, help="nodes of hybrid_parallel (default 2)")
    g.add_argument("--gpus-per-node", "--gpus_per_node", dest="gpus_per_node", type=int, default=2,
                   help="devices per node of hybrid_parallel (default 2)")
    g = ap.add_argument_group("training (the same for every strategy)")
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--batch", type=int, default=8, help="global batch in sequences per optimizer step")
    g.add_argument("--seq-len", type=int, default=64)
    g.add_argument("--micro-batches", type=int, help="micro-batches per step where a name gives none "
                   "(default 2, or 2 x pp for pipelines)")
    g.add_argument("--lr", default="2e-3")
    g.add_argument("--warmup", default="3")
    g.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine", "linear"])
    g.add_argument("--weight-decay", default="0.01")
    g.add_argument("--max-grad-norm", default="1.0")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    g.add_argument("--recompute", default="none", choices=["none", "layers"])
    g.add_argument("--lora-rank", type=int, default=16)
    g.add_argument("--lora-alpha", type=float, default=32)
    g.add_argument("--lora-targets", default="all-linear")
    g.add_argument("--lora-dropout", type=float, help="LoRA dropout (default none)")
    g.add_argument("--compile-arg", action="append", default=[], help="one more lora-compile argument (repeatable)")
    g = ap.add_argument_group("running")
    g.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--collectives", default="mpi", choices=["mpi", "nccl"], help="with --backend cuda")
    g.add_argument("--threads", type=int, default=1, help="CPU threads per rank (default 1)")
    g.add_argument("--cores", type=int, help="cores to judge oversubscription by (default: the usable cores)")
    g.add_argument("--comm-timeout", type=float, default=120)
    g.add_argument("--mpirun", default="mpirun")
    g.add_argument("--bin-dir", help="where lora-compile and lora-run are (a build dir, its tools/, or a bin dir)")
    g = ap.add_argument_group("report")
    g.add_argument("--out", required=True, help="output directory (reused: finished strategies are skipped)")
    g.add_argument("--target-loss", type=float, help="loss to reach (validation loss with --val-data); "
                   "default: halfway from the baseline's first to its last")
    g.add_argument("--title", default="Parallel strategies: LoRA fine-tuning study")
    g.add_argument("--rerun", action="store_true", help="run every strategy again even if it finished")
    g.add_argument("--no-plots", action="store_true", help="no matplotlib pictures (study.json, study.md, index.html only)")
    g.add_argument("--dry-run", action="store_true", help="print the plan of the study and exit")
    a = ap.parse_intermixed_args(argv)
    if sum(bool(x) for x in (a.hf_config and not a.onnx, a.onnx, a.model_size)) != 1:
        ap.error("give one model: --hf-config, --onnx (optionally with --hf-config) or --model-size")
    if a.model_size:
        path = os.path.join(REPO, "models", "configs", MODEL_SIZES[a.model_size])
        if os.path.isfile(path):
            a.hf_config = path
    for k in ("steps", "batch", "seq_len", "threads", "gpus", "stages", "nodes", "gpus_per_node"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    for k in ("data", "val_data", "hf_config", "onnx"):
        v = getattr(a, k)
        if v and not os.path.exists(v):
            ap.error(f"--{k.replace('_', '-')}: {v} does not exist")
        if v:
            setattr(a, k, os.path.abspath(v))
    if a.weights:
        a.weights = os.path.abspath(a.weights)
    names = [n for x in a.strategy_list + a.strategies for n in x.split(",") if n]
    if not names:
        names = list(strat.DEFAULT_STRATEGIES)
    sts, seen = [], set()
    for n in names:
        canon = strat.resolve_alias(n, a.gpus, a.stages, a.nodes, a.gpus_per_node)
        try:
            s = strat.with_defaults(strat.parse(canon), a.batch, a.micro_batches)
        except strat.StrategyError as e:
            ap.error(str(e))
        if canon != n:
            s.alias = n
        if s.name in seen:
            continue
        seen.add(s.name)
        sts.append(s)
    base_name = strat.resolve_alias(a.baseline, a.gpus, a.stages, a.nodes, a.gpus_per_node)
    if base_name not in seen:
        try:
            sts.insert(0, strat.with_defaults(strat.parse(base_name), a.batch, a.micro_batches))
        except strat.StrategyError as e:
            ap.error(f"--baseline: {e}")
    else:  # the baseline runs first: the target loss and the ETA come from it
        sts.sort(key=lambda s: s.name != base_name)
    a.baseline = base_name
    return a, sts


def common_compile_flags(a):
    f = []
    if a.onnx:
        f += ["--onnx", a.onnx] + (["--hf-config", a.hf_config] if a.hf_config else [])
    elif a.hf_config:
        f += ["--hf-config", a.hf_config]
    else:
        f += ["--model-size", a.model_size]
    if a.weights:
        f += ["--weights", a.weights]
    f += ["--batch", str(a.batch), "--seq-len", str(a.seq_len), "--lora-rank", str(a.lora_rank),
          "--lora-alpha", f"{a.lora_alpha:g}", "--lora-targets", a.lora_targets, "--lr", a.lr, "--warmup", a.warmup,
          "--lr-schedule", a.lr_schedule, "--weight-decay", a.weight_decay, "--max-grad-norm", a.max_grad_norm,
          "--precision", a.precision, "--recompute", a.recompute]
    if a.lora_dropout is not None:
        f += ["--lora-dropout", f"{a.lora_dropout:g}"]
    return f + list(a.compile_arg)


def assemble(a, sts, records, env, command, elapsed):
    """The study dict (study.json) from the records and the runs on disk."""
    tokens = a.batch * a.seq_len
    cores = env["cores_assumed"]
    entries = []
    for st in sts:
        rec = records.get(st.name)
        d = os.path.join(a.out, "strategies", st.name)
        e = {"name": st.name, "alias": st.alias or None, "mesh": {"dp": st.dp, "tp": st.tp, "pp": st.pp},
             "ranks": st.ranks, "micro_batches": st.micro, "schedule": st.schedule or None, "zero1": st.zero1,
             "oversubscribed": st.ranks * a.threads > cores, "dir": os.path.relpath(d, a.out),
             "status": rec["status"] if rec else "not run",
             "commands": {"compile": rec["compile"] if rec else [], "run": rec["run"] if rec else []},
             "compile_s": rec.get("compile_s") if rec else None, "run_s": rec.get("run_s") if rec else None,
             "reused": bool(rec and rec.get("reused"))}
        if rec and rec["status"] != "ok":
            e["log"] = os.path.relpath(rec.get("log", d), a.out)
            e["exit_code"] = rec.get("exit_code")
        if e["status"] == "ok":
            run_dir = os.path.join(d, "run")
            summary = results.read_complete_summary(run_dir, a.steps)
            train, val = results.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            e["figures"] = results.figures(summary, train, val, tokens, a.backend)
            e["curves"] = results.curves(train, val)
            e["_train"], e["_val"] = train, val
        entries.append(e)
    base = next((e for e in entries if e["name"] == a.baseline and e["status"] == "ok"), None)
    use_val = bool(a.val_data)
    target, source = a.target_loss, "--target-loss"
    if target is None and base:
        target = report.auto_target(base["curves"], use_val)
        source = "auto: halfway from the baseline's first to its last loss"
    for e in entries:
        if e["status"] != "ok":
            continue
        f = e["figures"]
        bf = base["figures"] if base else None
        e["ratios"] = {
            "time_reduction": report.ratio(bf["wall_time_s"], f["wall_time_s"]) if bf else None,
            "throughput_increase": report.ratio(f["tokens_per_s"], bf["tokens_per_s"]) if bf else None,
            "memory_reduction": report.ratio(bf["peak_mem_bytes"], f["peak_mem_bytes"]) if bf else None,
            "predicted_memory_reduction": report.ratio(bf["predicted_peak_bytes"], f["predicted_peak_bytes"]) if bf else None,
        }
        tt = results.steps_to_target(e.pop("_train"), e.pop("_val"), target, use_val)
        e["to_target"] = {"steps": tt[0], "seconds": tt[1]} if tt else None
        e["loss_rel_diff_vs_baseline"] = report.loss_rel_diff(e["curves"]["train"], base["curves"]["train"]) if base else None
    settings = {k: v for k, v in vars(a).items() if k not in ("strategy_list", "strategies", "dry_run")}
    settings["val_every_effective"] = a.val_every or max(1, a.steps // 10)
    return {
        "tool": "lora-study", "format_version": 1, "title": a.title,
        "command": command, "environment": env, "settings": settings,
        "baseline": a.baseline, "baseline_figures": base["figures"] if base else None,
        "baseline_oversubscribed": bool(base and base["oversubscribed"]),
        "any_oversubscribed": any(e["oversubscribed"] for e in entries),
        "target": {"loss": target, "on": "validation" if use_val else "train", "source": source},
        "study_seconds": elapsed,
        "strategies": entries,
    }


def main(argv=None, script_path=None):
    argv = sys.argv[1:] if argv is None else argv
    script_path = script_path or sys.argv[0]
    a, sts = parse_args(argv)
    tools = {n: runner.find_tool(n, a.bin_dir, script_path) for n in ("lora-compile", "lora-run")}
    missing = [n for n, p in tools.items() if not p]
    if missing:
        sys.stderr.write(f"lora-study: cannot find {', '.join(missing)}: not in --bin-dir, next to lora-study in a build "
                         "tree, in <repo>/build, or on PATH (build with scripts/build.sh, or pass --bin-dir build)\n")
        return 2
    if any(s.ranks > 1 for s in sts) and not runner.shutil.which(a.mpirun):
        sys.stderr.write(f"lora-study: {a.mpirun} not found; multi-rank strategies need Open MPI (apt-get install openmpi-bin)\n")
        return 2
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    command = " ".join(shlex.quote(x) for x in [script_path] + list(argv))
    env = environment.collect(REPO, tools, a.cores)
    cores = env["cores_assumed"]
    total_ranks = sum(s.ranks for s in sts)
    print(f"lora-study: {len(sts)} strategies ({total_ranks} ranks in all), {a.steps} steps each, baseline {a.baseline}; "
          f"{env['cpu_model']}, {cores} cores; out {a.out}", flush=True)
    if (env.get("load_avg_1m_start") or 0) > cores:
        print(f"lora-study: note: the load average is {env['load_avg_1m_start']} on {cores} cores: other processes "
              "compete for them, times will be noisy", flush=True)
    over = [s.name for s in sts if s.ranks * a.threads > cores]
    if over:
        print(f"lora-study: note: {len(over)} {'strategy runs' if len(over) == 1 else 'strategies run'} more rank "
              f"threads than the {cores} cores "
              f"({', '.join(over)}): their speed ratios will be marked as not meaningful", flush=True)
    if a.dry_run:
        common = common_compile_flags(a)
        for i, s in enumerate(sts, 1):
            print(f"[{i}/{len(sts)}] {s.name}: {s.ranks} rank{'s' if s.ranks > 1 else ''}: lora-compile {' '.join(common + s.compile_flags())}")
        return 0
    progress = runner.Progress(len(sts))
    common = common_compile_flags(a)
    records = {}
    t0 = time.time()
    for i, s in enumerate(sts, 1):
        remaining = sum(x.ranks for x in sts[i:])
        records[s.name] = runner.run_strategy(s, i, len(sts), a, tools, common, progress, remaining)
        # Written after every strategy, so a study in progress (or killed) can be looked at.
        study = assemble(a, sts, records, env, command, time.time() - t0)
        report.write_json(study, os.path.join(a.out, "study.json"))
    if hasattr(os, "getloadavg"):
        env["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    study = assemble(a, sts, records, env, command, time.time() - t0)
    if not a.no_plots:
        from . import plots  # matplotlib only when drawing
        study["plots"] = plots.make_all(study, a.out)
        study["timelines"] = plots.timelines(study, a.out)  # one measured step per strategy (lora-run --trace)
    report.write_json(study, os.path.join(a.out, "study.json"))
    with open(os.path.join(a.out, "study.md"), "w") as f:
        f.write(report.markdown(study))
    html.write(study, a.out)
    failed = [e["name"] for e in study["strategies"] if e["status"] != "ok"]
    print()
    print(report.markdown(study).split("\n\n", 1)[1].split("\nCommand:")[0].rstrip())
    print()
    print(f"lora-study: {len(sts) - len(failed)} of {len(sts)} strategies in {runner.fmt_secs(time.time() - t0)}; "
          f"report {os.path.join(a.out, 'index.html')}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
