#!/usr/bin/python3
"""Checks a lora-study output directory (tests/tools/lora_study.test).

  lora_study_check.py OUT --strategies N [--baseline single] [--loss-rtol 1e-4]

* files: study.json, study.md, index.html, and each plot as PNG (signature + matplotlib reads it)
  and SVG (parses as XML, root <svg>);
* study.json against the runs: every strategy's wall time, tokens/s and per-rank memory equal
  those in its run/summary.json; each ratio equals its quotient (baseline wall / wall, tok/s /
  baseline tok/s, baseline peak / peak);
* study.md against study.json: every row's ratio, tokens/s and memory cells print those numbers
  (two decimals); a row of an oversubscribed strategy carries the marker and the footnote exists;
* equivalence: every strategy's losses within --loss-rtol of the baseline's, bytes sent ==
  predicted;
* index.html embeds every plot as a data: URI that decodes to SVG and names every strategy.
Prints one line per check; exit status 1 at the first failure.
"""
import argparse
import base64
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def close(a, b, rtol=1e-9):
    return a is not None and b is not None and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)


def leading_number(cell):
    m = re.match(r"\s*([0-9]+\.[0-9]+)x", cell)
    return float(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--strategies", type=int, required=True)
    ap.add_argument("--baseline", default="single")
    ap.add_argument("--loss-rtol", type=float, default=1e-4)
    a = ap.parse_args()
    out = a.out
    for f in ("study.json", "study.md", "index.html"):
        check(os.path.isfile(os.path.join(out, f)), f"{f} exists")
    if failures:
        return 1
    study = json.load(open(os.path.join(out, "study.json")))
    sts = study["strategies"]
    check(len(sts) == a.strategies, f"study.json has {len(sts)} strategies (expected {a.strategies})")
    check(study["baseline"] == a.baseline, f"baseline is {study['baseline']}")
    check(all(s["status"] == "ok" for s in sts), "every strategy ran: " + ", ".join(f"{s['name']}={s['status']}" for s in sts))
    env = study["environment"]
    check(bool(env.get("cpu_model")) and env.get("usable_cores", 0) >= 1 and bool(env.get("date")),
          f"environment: {env.get('cpu_model')}, {env.get('usable_cores')} cores, {env.get('date')}")
    check(all(s["commands"]["compile"] and s["commands"]["run"] for s in sts), "every strategy records its commands")
    base = next(s for s in sts if s["name"] == a.baseline)
    bf = base["figures"]

    # study.json against each run's summary.json, and the ratio arithmetic.
    for s in sts:
        f, r = s["figures"], s["ratios"]
        summ = json.load(open(os.path.join(out, s["dir"], "run", "summary.json")))
        peak = max(rk["arena_bytes"] + rk["persistent_bytes"] for rk in summ["ranks"])
        pred = max(rk["predicted_peak_bytes"] for rk in summ["ranks"])
        check(f["wall_time_s"] == summ["wall_time_s"] and f["tokens_per_s"] == summ["tokens_per_s_median"]
              and f["peak_mem_bytes"] == peak and f["predicted_peak_bytes"] == pred and len(summ["ranks"]) == s["ranks"],
              f"{s['name']}: figures = summary.json (wall {f['wall_time_s']:.3f} s, {f['tokens_per_s']:.0f} tok/s, "
              f"peak {peak} B, predicted {pred} B, {s['ranks']} ranks)")
        check(close(r["time_reduction"], bf["wall_time_s"] / f["wall_time_s"]),
              f"{s['name']}: time reduction {r['time_reduction']:.4f} = {bf['wall_time_s']:.4f} / {f['wall_time_s']:.4f}")
        check(close(r["throughput_increase"], f["tokens_per_s"] / bf["tokens_per_s"]),
              f"{s['name']}: throughput increase {r['throughput_increase']:.4f} = {f['tokens_per_s']:.1f} / {bf['tokens_per_s']:.1f}")
        check(close(r["memory_reduction"], bf["peak_mem_bytes"] / f["peak_mem_bytes"]),
              f"{s['name']}: memory reduction {r['memory_reduction']:.4f} = {bf['peak_mem_bytes']} / {f['peak_mem_bytes']}")
        d = s["loss_rel_diff_vs_baseline"]
        check(d is not None and d <= a.loss_rtol, f"{s['name']}: loss within {a.loss_rtol:g} of {a.baseline} ({d:.1e})")
        check(f["bytes_match_prediction"], f"{s['name']}: bytes sent per step == predicted on every rank")
        applied = sum(1 for _ in s["curves"]["train"])
        check(close(f["goodput_tokens_per_s"], applied * f["tokens_per_step"] / f["wall_time_s"]) and f["steps"] == study["settings"]["steps"],
              f"{s['name']}: goodput {f['goodput_tokens_per_s']:.1f} = {applied} steps x {f['tokens_per_step']} tokens / wall")

    # study.md against study.json.
    md = open(os.path.join(out, "study.md")).read()
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for l in lines[1:]:
        cells = [c.strip() for c in l.strip().strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    check(sorted(rows) == sorted(s["name"] for s in sts), f"study.md has one row per strategy ({len(rows)})")
    for s in sts:
        row, r, f = rows.get(s["name"], {}), s["ratios"], s["figures"]
        for col, key in (("time reduction", "time_reduction"), ("throughput increase", "throughput_increase"),
                         ("memory reduction", "memory_reduction")):
            shown = leading_number(row.get(col, ""))
            check(shown is not None and abs(shown - r[key]) <= 0.005 + 1e-9,
                  f"{s['name']}: study.md {col} '{row.get(col)}' = {r[key]:.4f}")
        mem = re.match(r"([0-9.]+) \(([0-9.]+)\)", row.get("peak MiB/device (pred.)", ""))
        check(mem is not None and abs(float(mem.group(1)) - f["peak_mem_bytes"] / 2**20) <= 0.005
              and abs(float(mem.group(2)) - f["predicted_peak_bytes"] / 2**20) <= 0.005,
              f"{s['name']}: study.md memory '{row.get('peak MiB/device (pred.)')}' = {f['peak_mem_bytes'] / 2**20:.4f} MiB")
        check(row.get("tok/s") == f"{f['tokens_per_s']:.0f}", f"{s['name']}: study.md tok/s {row.get('tok/s')}")
        marked = "†" in row.get("time reduction", "")
        want = s["oversubscribed"] or study["baseline_oversubscribed"]
        check(marked == want, f"{s['name']}: oversubscription marker {'present' if marked else 'absent'} "
              f"({s['ranks']} ranks on {env['cores_assumed']} cores)")
    if study["any_oversubscribed"]:
        check("† Oversubscribed:" in md and "not meaningful" in md, "study.md footnote on oversubscription")

    # Plots.
    plots = study.get("plots", {})
    check(sorted(plots) == ["loss", "memory", "throughput", "utilization"], f"plots: {', '.join(sorted(plots))}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    for k, p in sorted(plots.items()):
        png = os.path.join(out, p["png"])
        sig = open(png, "rb").read(8)
        img = mpimg.imread(png)
        check(sig == b"\x89PNG\r\n\x1a\n" and img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100,
              f"{p['png']}: PNG {img.shape[1]}x{img.shape[0]}")
        root = ET.parse(os.path.join(out, p["svg"])).getroot()
        check(root.tag.endswith("svg"), f"{p['svg']}: SVG parses")

    # Measured timelines (lora-run --trace): one per strategy, a row per rank, idle shares in [0, 1].
    timelines = study.get("timelines", {})
    check(sorted(timelines) == sorted(s["name"] for s in sts), f"timelines: {', '.join(sorted(timelines))}")
    for name, t in sorted(timelines.items()):
        st = next(s for s in sts if s["name"] == name)
        png = os.path.join(out, t["files"]["png"])
        img = mpimg.imread(png)
        check(open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and img.shape[0] > 100, f"{t['files']['png']}: PNG")
        ranks = sorted(t["idle_share"])
        check(len(ranks) == st["ranks"] and all(r.startswith("rank ") for r in ranks)
              and all(0.0 <= v <= 1.0 for v in t["idle_share"].values()),
              f"{name}: timeline rows {len(ranks)} = ranks {st['ranks']}, idle shares in [0, 1]")

    # index.html.
    page = open(os.path.join(out, "index.html")).read()
    uris = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    ok = len(uris) == len(plots) + len(timelines) and all(ET.fromstring(base64.b64decode(u)).tag.endswith("svg") for u in uris)
    check(ok, f"index.html embeds {len(uris)} SVG plots and timelines as data: URIs")
    check(all(f">{s['name']}<" in page for s in sts), "index.html names every strategy")
    if failures:
        print(f"lora_study_check: FAILED ({len(failures)}): {failures[0]}")
        return 1
    print(f"lora_study_check: OK ({len(sts)} strategies, {len(plots)} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
