"""study.json and study.md: the figures of every strategy, the ratios against the baseline, footnotes.

Ratios (the seed's table), each against the baseline strategy (single unless --baseline):
  time reduction       baseline wall time / strategy wall time        ("1.20x faster")
  throughput increase  strategy tokens/s / baseline tokens/s          (median over steps, first excluded)
  memory reduction     baseline peak memory per device / strategy's largest per-rank peak
                       (cpu: the plan's buffers as allocated, arena x slots + persistent; cuda: the
                       device's used memory), the compiler's prediction in its own column
The ratio cells print the number first ("1.20x ..."), so tests/tools/lora_study_check.py can recompute
them from study.json.
"""
import json

OVERSUB_MARK = "†"


def ratio(num, den):
    return num / den if num and den else None


def fmt_ratio(r, more, less):
    if r is None:
        return "-"
    return f"{r:.2f}x {more}" if r >= 1 else f"{r:.2f}x ({less})"


def mib(b):
    return b / 2**20


def loss_rel_diff(curve, base_curve):
    base = dict(base_curve)
    diffs = [abs(l - base[k]) / abs(base[k]) for k, l in curve if k in base and base[k]]
    return max(diffs) if diffs else None


def auto_target(base_curves, use_val):
    """Halfway from the baseline's first to its last loss (validation when there is any)."""
    c = base_curves["val"] if use_val else base_curves["train"]
    if len(c) < 2:
        return None
    return c[0][1] + 0.5 * (c[-1][1] - c[0][1])


def build_rows(study):
    """Table rows (list of cells) in strategy order, with the header."""
    base = study["baseline_figures"]
    cpu = study["settings"]["backend"] == "cpu"
    has_val = bool(study["settings"].get("val_data"))
    head = ["strategy", "dp x tp x pp", "ranks", "M", "time reduction", "throughput increase", "memory reduction",
            "tok/s", "goodput tok/s", "to target: steps / s", "wall s", "final loss"]
    if has_val:
        head.append("val loss")
    head += ["peak MiB/device (pred.)" if cpu else "GPU peak MiB", "RSS MiB", "KiB sent/step", "bubble",
             "compute / comm / idle" if cpu else "GPU util, MFU", "loss rel. diff", "step ms (pred.)"]
    rows = []
    for s in study["strategies"]:
        mesh = s["mesh"]
        cells = [s["name"], f"{mesh['dp']}x{mesh['tp']}x{mesh['pp']}", str(s["ranks"]), str(s["micro_batches"])]
        if s["status"] != "ok":
            cells += [f"**{s['status']}** ({s.get('log', '')})"] + ["-"] * (len(head) - 5)
            rows.append(cells)
            continue
        f, r = s["figures"], s["ratios"]
        mark = OVERSUB_MARK if s["oversubscribed"] or study["baseline_oversubscribed"] else ""
        tt = s["to_target"]
        is_base = s["name"] == study["baseline"]
        cells += [("1.00x (baseline)" if is_base else fmt_ratio(r["time_reduction"], "faster", "slower")) + mark,
                  (f"{r['throughput_increase']:.2f}x" if r["throughput_increase"] is not None else "-") + mark,
                  "1.00x (baseline)" if is_base else fmt_ratio(r["memory_reduction"], "less", "more"),
                  f"{f['tokens_per_s']:.0f}", f"{f['goodput_tokens_per_s']:.0f}",
                  f"{tt['steps']} / {tt['seconds']:.2f}" if tt else "not reached",
                  f"{f['wall_time_s']:.2f}", f"{f['final_loss']:.4f}"]
        if has_val:
            cells.append(f"{f['final_val_loss']:.4f}" if f["final_val_loss"] is not None else "-")
        if cpu:
            cells.append(f"{mib(f['peak_mem_bytes']):.2f} ({mib(f['predicted_peak_bytes']):.2f})")
        else:
            cells.append(f"{f.get('gpu_peak_mem_mib') or 0:.0f}")
        cells += [f"{f['peak_rss_mib']:.0f}", f"{f['bytes_sent_per_step_max'] / 1024:.1f}"
                  + ("" if f["bytes_match_prediction"] else " (MISMATCH)"),
                  f"{100 * f['bubble_fraction']:.1f}%"]
        if cpu:
            cells.append(" / ".join(f"{100 * (f[k] or 0):.0f}%" for k in ("compute_fraction", "comm_fraction", "idle_fraction")))
        else:
            util = f"{f['gpu_util_mean']:.0f}%" if f.get("gpu_util_mean") is not None else "-"
            cells.append(util + (f", MFU {100 * f['mfu']:.1f}%" if f.get("mfu") is not None else ""))
        d = s.get("loss_rel_diff_vs_baseline")
        cells.append(f"{d:.1e}" if d is not None else "-")
        meas, pred = f.get("step_time_s_median"), f.get("predicted_step_s")
        cells.append((f"{1e3 * meas:.2f}" if meas else "-") + (f" ({1e3 * pred:.2f})" if pred else ""))
        rows.append(cells)
    return head, rows


def footnotes(study):
    env = study["environment"]
    st = study["settings"]
    notes = []
    gpu = ", ".join(g["name"] for g in env["gpus"]) or "no GPU"
    notes.append(f"Machine: {env['cpu_model']}, {env['usable_cores']} usable cores"
                 + (f" (judged as {env['cores_assumed']} by --cores)" if env["cores_assumed"] != env["usable_cores"] else "")
                 + f", {env['mem_total_gib']} GiB, {gpu}; {env['os']}; commit {(env['git_commit'] or 'unknown')[:12]}"
                 + (" (with local changes)" if env.get("git_dirty") else "") + f"; {env['date']}.")
    notes.append(f"Run: {st['steps']} steps of a global batch of {st['batch']} x {st['seq_len']} tokens, backend "
                 f"{st['backend']}, {st['threads']} thread(s) per rank; baseline `{study['baseline']}`.")
    notes.append("step ms (pred.): the measured median step time and, in brackets, the step time the planner "
                 "predicted when the plan was compiled (lora-compile --device-profile; docs/planner.md).")
    loads = [x for x in (env.get("load_avg_1m_start"), env.get("load_avg_1m_end")) if x is not None]
    if loads and max(loads) > env["cores_assumed"]:
        notes.append(f"Load: the 1-minute load average was {env.get('load_avg_1m_start')} when the study started and "
                     f"{env.get('load_avg_1m_end')} when it ended, on {env['cores_assumed']} cores: other processes "
                     "competed for the cores, so every time in this table is noisy.")
    over = [s["name"] for s in study["strategies"] if s.get("oversubscribed") and s["status"] == "ok"]
    if over or study["baseline_oversubscribed"]:
        notes.append(f"{OVERSUB_MARK} Oversubscribed: {', '.join(over)} {'runs' if len(over) == 1 else 'run'} "
                     f"more rank threads than the "
                     f"{env['cores_assumed']} cores, so the ranks take turns on the cores. Their time reduction and "
                     "throughput increase measure scheduling and communication overhead, not parallel speedup, and "
                     "are not meaningful as speedups; the memory, bytes and bubble columns are the trade-offs to read.")
    t = study["target"]
    if t["loss"] is not None:
        notes.append(f"Target: {t['on']} loss {t['loss']:.4f} ({t['source']}); steps = the first "
                     f"{'validation (every ' + str(st['val_every_effective']) + ' steps)' if t['on'] == 'validation' else 'step'} "
                     "at or below it; seconds = rank 0's step times summed up to that step.")
    if st["backend"] == "cpu":
        notes.append("Memory per device on CPU: the plan's buffers as allocated per rank (arena x slots + persistent "
                     "weights, adapters, gradients, AdamW moments), the largest rank; the compiler's prediction in "
                     "parentheses. Process RSS (MPI, the BLAS libraries, code) is listed apart and not used in ratios.")
        notes.append("compute / comm / idle: seconds of all ranks' training steps spent in kernels, in communication "
                     "(including waiting for peers) and in neither.")
    else:
        notes.append("Memory per device on GPU: the device's used memory (cudaMemGetInfo), the largest rank; GPU util: "
                     "NVML utilization sampled during steps (mean); MFU: the plan's model FLOP/s over the data-sheet "
                     "dense bf16 peak of the GPUs (lora-run's summary.json).")
    notes.append("goodput: tokens of steps whose update was applied (not skipped) / wall time; tok/s: median over "
                 "steps, first step excluded; loss rel. diff: largest relative difference of a training loss from "
                 "the baseline's at the same step.")
    return notes


def markdown(study):
    head, rows = build_rows(study)
    out = [f"# {study['title']}", ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    out.append("")
    for n in footnotes(study):
        out.append(f"- {n}")
    out.append("")
    if study.get("plots"):
        out.append("Plots: " + ", ".join(f"[{k}]({v['png']})" for k, v in study["plots"].items()) + "; all in index.html.")
        out.append("")
    out.append("Command:")
    out.append("")
    out.append("```")
    out.append(study["command"])
    out.append("```")
    out.append("")
    return "\n".join(out)


def write_json(study, path):
    with open(path + ".tmp", "w") as f:
        json.dump(study, f, indent=1)
        f.write("\n")
    import os
    os.replace(path + ".tmp", path)
