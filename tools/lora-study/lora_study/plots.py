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
