"""Reading one run's outputs (lora-run's metrics.jsonl and summary.json) into the study's figures.

Stdlib only (scripts/compare_strategies.py uses read_metrics). The definitions are those of
DESIGN.md "Metrics"; where a number is rank 0's, the maximum over ranks, or a mean, it says so.
"""
import json
import os


def read_metrics(path):
    """({step: record} of the training steps, {step: val_loss}) of a metrics.jsonl."""
    train, val = {}, {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "loss" in r:
                train[r["step"]] = r
            if "val_loss" in r:
                val[r["step"]] = r["val_loss"]
    return train, val


def read_complete_summary(run_dir, steps):
    """summary.json of a finished run of `steps` steps, else None (absent, cut short, or another length).

    lora-run writes summary.json once, at the end, after the adapter: a parsable file whose step
    count is the requested one and whose metrics hold that step is a finished run."""
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path) as f:
            s = json.load(f)
        train, _ = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    except (OSError, ValueError):
        return None
    if s.get("steps") != steps or steps not in train or "ranks" not in s:
        return None
    return s


def steps_to_target(train, val, target, use_val):
    """(optimizer steps, training seconds) until the loss first reaches `target`, or None.

    The seconds are the sum of rank 0's step times up to that step (training only: no start-up,
    compilation or validation), so equivalent strategies differ only by their speed."""
    if target is None:
        return None
    curve = val if use_val else {k: v["loss"] for k, v in train.items()}
    for step in sorted(curve):
        if curve[step] <= target:
            secs = sum(r.get("step_time_s", 0.0) for k, r in train.items() if k <= step)
            return step, secs
    return None


def figures(summary, train, val, tokens_per_step, backend):
    """The study's numbers of one run (plain dict, JSON-ready)."""
    s = summary
    ranks = s["ranks"]
    steps = len(train)
    applied = sum(1 for r in train.values() if not r.get("skipped", False))
    wall = s["wall_time_s"]
    per_rank = []
    for rk in ranks:
        t = rk.get("time", {})
        per_rank.append({
            "rank": rk["rank"],
            "coords": rk.get("coords"),
            "arena_bytes": rk["arena_bytes"],
            "persistent_bytes": rk["persistent_bytes"],
            "measured_peak_bytes": rk["arena_bytes"] + rk["persistent_bytes"],
            "predicted_peak_bytes": rk.get("predicted_peak_bytes", 0),
            "peak_rss_mib": rk.get("peak_rss_mib", 0.0),
            "bytes_sent_per_step": sum(float(v) for v in rk["bytes_sent_per_step"].values()),
            "bytes_sent_predicted": sum(float(v) for v in rk["bytes_sent_predicted"].values()),
            "bubble_fraction": rk.get("predicted_bubble_fraction", 0.0),
            "compute_s": t.get("compute_s", 0.0), "comm_s": t.get("comm_s", 0.0), "idle_s": t.get("idle_s", 0.0),
            "step_time_s": t.get("step_time_s", 0.0),
            "gpu_peak_mem_mib": rk.get("gpu_peak_mem_mib"),
            "gpu_util_mean": rk.get("gpu_util_mean"),
        })
    total_step = sum(r["step_time_s"] for r in per_rank)

    def share(key):  # over all ranks: summed seconds / summed step time
        return sum(r[key] for r in per_rank) / total_step if total_step > 0 else None

    f = {
        "steps": steps,
        "applied_steps": applied,
        "tokens_per_step": tokens_per_step,
        "wall_time_s": wall,
        "train_time_s": sum(r.get("step_time_s", 0.0) for r in train.values()),
        "tokens_per_s": s["tokens_per_s_median"],
        "goodput_tokens_per_s": applied * tokens_per_step / wall if wall > 0 else 0.0,
        "final_loss": s["final_loss"],
        "final_val_loss": val[max(val)] if val else None,
        # Memory per device on the cpu backend: the plan's own buffers as the executor allocated
        # them (arena x slots + persistent), max over ranks; the compiler's prediction beside it.
        # Process RSS (MPI, OpenBLAS, the binary) is reported, not compared.
        "peak_mem_bytes": max(r["measured_peak_bytes"] for r in per_rank),
        "predicted_peak_bytes": max(r["predicted_peak_bytes"] for r in per_rank),
        "peak_rss_mib": max([r["peak_rss_mib"] for r in per_rank] + [s.get("peak_rss_mib", 0.0)]),
        "bytes_sent_per_step_max": max(r["bytes_sent_per_step"] for r in per_rank),
        "bytes_sent_per_step_total": sum(r["bytes_sent_per_step"] for r in per_rank),
        "bytes_match_prediction": all(abs(r["bytes_sent_per_step"] - r["bytes_sent_predicted"]) <= 0.5 for r in per_rank),
        "bubble_fraction": max(r["bubble_fraction"] for r in per_rank),
        "compute_fraction": share("compute_s"),
        "comm_fraction": share("comm_s"),
        "idle_fraction": share("idle_s"),
        "mfu": s.get("mfu"),
        # The planner's prediction stored in the plan (docs/planner.md) next to the measured median.
        "step_time_s_median": s.get("step_time_s_median"),
        "predicted_step_s": s.get("predicted_step_s") or None,
        "achieved_tflops": s.get("achieved_tflops"),
        "flops_per_step": s.get("flops_per_step"),
        "threads": s.get("threads"),
        "base_weights": s.get("base_weights"),
        "per_rank": per_rank,
    }
    if backend == "cuda":
        f["gpu_peak_mem_mib"] = s.get("gpu_peak_mem_mib")
        f["gpu_util_mean"] = s.get("gpu_util_mean")
        f["gpu_util_max"] = s.get("gpu_util_max")
        f["gpu_name"] = s.get("gpu_name")
        if s.get("gpu_peak_mem_mib"):
            # On a GPU the device's used memory is the memory figure (max over ranks).
            f["peak_mem_bytes"] = int(s["gpu_peak_mem_mib"] * 2**20)
    return f


def curves(train, val):
    return {"train": [[k, train[k]["loss"]] for k in sorted(train)],
            "val": [[k, val[k]] for k in sorted(val)]}
