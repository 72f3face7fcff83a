"""The study's pictures (matplotlib, Agg): throughput, memory per device, utilization, loss curves.

Each is written as PNG (for README/markdown) and SVG (vector, embedded in index.html).
"""
import os

OVERSUB_HATCH = "//"


def _mpl():
    try:
        import matplotlib
    except ImportError as e:
        raise SystemExit("lora-study: plotting needs matplotlib: apt-get install python3-matplotlib "
                         "(and run lora-study with /usr/bin/python3), or pass --no-plots") from e
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "lora-study", "font.size": 9,
                                "axes.spines.top": False, "axes.spines.right": False})
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir, stem):
    png, svg = os.path.join(out_dir, stem + ".png"), os.path.join(out_dir, stem + ".svg")
    fig.savefig(png, dpi=110, bbox_inches="tight", metadata={"Software": "lora-study (matplotlib)"})
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    return {"png": os.path.basename(png), "svg": os.path.basename(svg)}


def _bars_axis(ax, names):
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=40, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def make_all(study, out_dir):
    plt = _mpl()
    ok = [s for s in study["strategies"] if s["status"] == "ok"]
    if not ok:
        return {}
    names = [s["name"] for s in ok]
    x = list(range(len(ok)))
    over = [s["oversubscribed"] for s in ok]
    cpu = study["settings"]["backend"] == "cpu"
    base = study["baseline"]
    cores = study["environment"]["cores_assumed"]
    plots = {}
    w = max(6.0, 0.55 * len(ok) + 2)

    # Throughput and goodput.
    fig, ax = plt.subplots(figsize=(w, 3.6))
    tps = [s["figures"]["tokens_per_s"] for s in ok]
    good = [s["figures"]["goodput_tokens_per_s"] for s in ok]
    b1 = ax.bar([i - 0.2 for i in x], tps, 0.4, label="tokens/s (median step)", color="#4878a8")
    b2 = ax.bar([i + 0.2 for i in x], good, 0.4, label="goodput (applied tokens / wall time)", color="#a8c4e0")
    for bars in (b1, b2):
        for b, o in zip(bars, over):
            if o:
                b.set_hatch(OVERSUB_HATCH)
    ax.set_ylabel("tokens per second")
    title = "Throughput per strategy"
    if any(over):
        title += f"\n(hatched: ranks oversubscribe the {cores} cores; not a parallel speedup)"
    ax.set_title(title)
    _bars_axis(ax, names)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    plots["throughput"] = _save(fig, out_dir, "throughput")
    plt.close(fig)

    # Peak memory per device.
    fig, ax = plt.subplots(figsize=(w, 3.6))
    if cpu:
        # The largest rank's buffers, split into what lives across steps and the activation arena.
        worst = [max(s["figures"]["per_rank"], key=lambda r: r["measured_peak_bytes"]) for s in ok]
        pers = [r["persistent_bytes"] / 2**20 for r in worst]
        arena = [r["arena_bytes"] / 2**20 for r in worst]
        ax.bar(x, pers, 0.6, label="persistent (weights, adapters, grads, AdamW)", color="#6a9f58")
        ax.bar(x, arena, 0.6, bottom=pers, label="activation arena x slots", color="#b5d6a7")
        pred = [s["figures"]["predicted_peak_bytes"] / 2**20 for s in ok]
        ax.scatter(x, pred, marker="_", s=300, color="black", zorder=3, label="predicted by lora-compile")
        ax.set_ylabel("MiB on the largest rank")
        ax.set_title("Peak memory per device (the plan's buffers, largest rank)")
    else:
        mem = [s["figures"].get("gpu_peak_mem_mib") or 0 for s in ok]
        ax.bar(x, mem, 0.6, color="#6a9f58", label="GPU used memory (max over ranks)")
        ax.set_ylabel("MiB")
        ax.set_title("Peak GPU memory per device")
    _bars_axis(ax, names)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    plots["memory"] = _save(fig, out_dir, "memory")
    plt.close(fig)

    # Utilization: the compute / communication / idle split on CPU, NVML on GPU.
    fig, ax = plt.subplots(figsize=(w, 3.6))
    if cpu:
        c = [100 * (s["figures"]["compute_fraction"] or 0) for s in ok]
        m = [100 * (s["figures"]["comm_fraction"] or 0) for s in ok]
        i_ = [100 * (s["figures"]["idle_fraction"] or 0) for s in ok]
        ax.bar(x, c, 0.6, label="compute", color="#d08040")
        ax.bar(x, m, 0.6, bottom=c, label="communication (incl. waiting for peers)", color="#e8b888")
        ax.bar(x, i_, 0.6, bottom=[a + b for a, b in zip(c, m)], label="idle / other", color="#dddddd")
        ax.set_ylabel("% of all ranks' step time")
        ax.set_ylim(0, 100)
        title = "Where the step time goes (all ranks)"
        if any(over):
            title += "\n(oversubscribed ranks wait for cores inside communication)"
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    else:
        u = [s["figures"].get("gpu_util_mean") or 0 for s in ok]
        ax.bar(x, u, 0.6, color="#d08040", label="NVML utilization (mean over steps and ranks)")
        ax.set_ylabel("GPU utilization %")
        ax.set_ylim(0, 100)
        ax.set_title("GPU utilization")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    _bars_axis(ax, names)
    plots["utilization"] = _save(fig, out_dir, "utilization")
    plt.close(fig)

    # Loss curves on one axis (equivalent strategies coincide), and each one's distance from the baseline.
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    cmap = plt.get_cmap("tab20")
    styles = ["-", "--", ":", "-."]
    base_train = dict(next(s for s in study["strategies"] if s["name"] == base)["curves"]["train"]) \
        if any(s["name"] == base and s["status"] == "ok" for s in study["strategies"]) else {}
    floor = 1e-10
    for k, s in enumerate(ok):
        tr = s["curves"]["train"]
        col = cmap(k % 20)
        ax.plot([p[0] for p in tr], [p[1] for p in tr], styles[k % 4], color=col, lw=1.2, label=s["name"])
        if s["curves"]["val"]:
            v = s["curves"]["val"]
            ax.plot([p[0] for p in v], [p[1] for p in v], "o", color=col, ms=3)
        if base_train and s["name"] != base:
            pts = [(st, max(floor, abs(l - base_train[st]) / abs(base_train[st]))) for st, l in tr if st in base_train]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], styles[k % 4], color=col, lw=1)
    t = study["target"]
    if t["loss"] is not None:
        ax.axhline(t["loss"], color="gray", lw=0.8, ls="--")
        ax.annotate(f"target {t['on']} loss {t['loss']:.3f}", (0.99, t["loss"]), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=8, color="gray")
    ax.set_ylabel("loss (lines: train, dots: validation)")
    ax.set_title("Loss of every strategy (equivalent strategies coincide)")
    ax.legend(fontsize=7, ncol=3, frameon=False)
    ax2.set_yscale("log")
    ax2.set_ylim(floor / 2, 1)
    ax2.set_ylabel(f"|loss - {base}| / {base}\n(0 drawn at 1e-10)")
    ax2.set_xlabel("optimizer step")
    ax2.grid(alpha=0.3)
    plots["loss"] = _save(fig, out_dir, "loss")
    plt.close(fig)
    return plots


# Colours of the measured timeline: forward and backward compute, the optimizer, communication, idle.
TIMELINE_COLORS = {"forward": "#4878a8", "backward": "#e0a040", "micro_step": "#4878a8", "optimizer_step": "#60a060",
                   "eval_step": "#9090c0", "comm": "#c04848", "idle": "#d0d0d0"}


def chosen_step(events):
    """The step drawn: rank 0's step span of median duration, the first step excluded when there
    are several (it pays one-time costs). Returns (step number, [start, end] over all ranks)."""
    steps = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "step":
            steps.setdefault(e["args"]["step"], []).append(e)
    if not steps:
        return None, None
    numbers = sorted(steps)
    candidates = numbers[1:] if len(numbers) > 1 else numbers
    rank0 = sorted(candidates, key=lambda n: min(e["dur"] for e in steps[n] if e["pid"] == 0) if any(e["pid"] == 0 for e in steps[n]) else 0)
    n = rank0[len(rank0) // 2]
    lo = min(e["ts"] for e in steps[n])
    hi = max(e["ts"] + e["dur"] for e in steps[n])
    return n, (lo, hi)


def timeline(trace_path, title, out_dir, stem, predicted_bubble=None):
    """One step of a lora-run --trace file as rows per rank: compute (forward / backward /
    optimizer), communication and idle, on the trace's aligned clock. Returns the files and the
    measured idle share of the step per rank."""
    import json
    plt = _mpl()
    with open(trace_path) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    step, window = chosen_step(events)
    if step is None:
        return None, {}
    lo, hi = window
    pids = sorted(names)
    fig, ax = plt.subplots(figsize=(9, 0.75 * len(pids) + 1.4))
    idle_share = {}
    lanes = {"compute": 0.28, "comm": 0.0, "idle": -0.28}
    for row, pid in enumerate(pids):
        y = len(pids) - 1 - row
        busy = {}
        for e in events:
            if e.get("ph") != "X" or e["pid"] != pid or e.get("cat") not in ("compute", "comm", "idle"):
                continue
            if e["ts"] + e["dur"] <= lo or e["ts"] >= hi or e.get("args", {}).get("step") not in (None, step):
                continue
            cat = e["cat"]
            color = TIMELINE_COLORS["comm"] if cat == "comm" else TIMELINE_COLORS["idle"] if cat == "idle" else \
                TIMELINE_COLORS.get(e.get("args", {}).get("program", ""), "#4878a8")
            ax.broken_barh([((e["ts"] - lo) / 1e3, e["dur"] / 1e3)], (y + lanes[cat] - 0.12, 0.24), color=color, lw=0)
            busy[cat] = busy.get(cat, 0.0) + e["dur"]
        idle_share[names[pid]] = busy.get("idle", 0.0) / (hi - lo) if hi > lo else 0.0
    ax.set_yticks(range(len(pids)))
    ax.set_yticklabels([f"{names[p]}\nidle {100 * idle_share[names[p]]:.0f}%" for p in reversed(pids)], fontsize=7)
    ax.set_xlabel(f"ms from the start of step {step} (clocks aligned to rank 0, error "
                  f"{trace.get('otherData', {}).get('clock_error_us_max', float('nan')):.0f} us)")
    pred = f"; predicted bubble {100 * predicted_bubble:.1f}%" if predicted_bubble else ""
    ax.set_title(f"{title}: measured step {step}{pred}", fontsize=9)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=TIMELINE_COLORS[k], label=k) for k in ("forward", "backward", "optimizer_step", "comm", "idle")],
              fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(pids) < 3 else -0.2), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    files = _save(fig, out_dir, stem)
    plt.close(fig)
    return files, idle_share


def timelines(study, out_dir):
    """The measured timeline of every strategy that wrote a trace (strategies/<name>/trace.json)."""
    out = {}
    for s in study["strategies"]:
        path = os.path.join(out_dir, "strategies", s["name"], "trace.json")
        if s["status"] != "ok" or not os.path.exists(path):
            continue
        bubble = s.get("figures", {}).get("bubble_fraction")
        files, idle = timeline(path, s["name"], out_dir, "timeline-" + s["name"], bubble)
        if files:
            out[s["name"]] = {"files": files, "idle_share": idle}
    return out
