"""index.html: the table, the pictures (SVG embedded as data: URIs, so the page is one file and the
pictures' internal ids cannot collide), the machine and every command."""
import base64
import html
import os
import shlex

from . import report

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1500px}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}tr.fail td{background:#fdd}
.figs img{max-width:100%;border:1px solid #eee;margin:4px 0}code,pre{font-size:12px}pre{background:#f6f6f6;padding:6px;overflow-x:auto}
.note{font-size:13px;color:#444}.warn{background:#fff4d6;padding:6px;border-left:4px solid #e0a000}
"""


def _img(out_dir, files, alt):
    with open(os.path.join(out_dir, files["svg"]), "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'
            f'<figcaption class="note">{html.escape(alt)} (<a href="{files["png"]}">PNG</a>, '
            f'<a href="{files["svg"]}">SVG</a>)</figcaption></figure>')


def write(study, out_dir):
    head, rows = report.build_rows(study)
    e = html.escape
    p = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{e(study['title'])}</title>",
         f"<style>{CSS}</style></head><body>", f"<h1>{e(study['title'])}</h1>"]
    if study.get("any_oversubscribed"):
        p.append(f"<p class='warn'>{e(report.OVERSUB_MARK)} Some runs have more rank threads than the machine's "
                 f"{study['environment']['cores_assumed']} cores: their speed ratios are not parallel speedups "
                 "(see the notes). Memory, bytes and bubble are the trade-offs to compare.</p>")
    p.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
    for s, r in zip(study["strategies"], rows):
        cls = "" if s["status"] == "ok" else " class='fail'"
        p.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
    p.append("</table><ul class='note'>")
    p += [f"<li>{e(n)}</li>" for n in report.footnotes(study)]
    p.append("</ul><div class='figs'>")
    captions = {"throughput": "Throughput and goodput per strategy",
                "memory": "Peak memory per device (largest rank)",
                "utilization": "Utilization: compute / communication / idle split" if study["settings"]["backend"] == "cpu"
                else "GPU utilization",
                "loss": "Loss curves of all strategies, and their relative distance from the baseline"}
    for k, files in study.get("plots", {}).items():
        p.append(_img(out_dir, files, captions.get(k, k)))
    p.append("</div>")
    # Timelines whose pictures are in this folder (a report re-rendered elsewhere may lack them).
    timelines = {n: t for n, t in study.get("timelines", {}).items()
                 if os.path.exists(os.path.join(out_dir, t["files"]["svg"]))}
    if timelines:
        p.append("<h2>Measured timelines</h2><p class='note'>One step of every strategy from its "
                 "<code>lora-run --trace</code> file (the median step, the first excluded), every rank on rank 0's "
                 "clock: forward and backward compute, the optimizer, communication and idle time, with each "
                 "rank's idle share beside the compiler's predicted bubble. The trace files open in "
                 "ui.perfetto.dev (docs/parallel.md, \"Reading a trace\").</p><div class='figs'>")
        for name, t in timelines.items():
            p.append(_img(out_dir, t["files"], f"{name}: measured timeline"))
        p.append("</div>")
    p.append("<h2>Machine</h2><table>")
    env = study["environment"]
    for k in ("date", "host", "os", "kernel", "cpu_model", "cpu_count", "usable_cores", "cores_assumed",
              "mem_total_gib", "load_avg_1m_start", "load_avg_1m_end", "git_commit", "git_dirty", "mpirun", "python", "matplotlib"):
        p.append(f"<tr><td>{e(k)}</td><td style='text-align:left'>{e(str(env.get(k)))}</td></tr>")
    p.append(f"<tr><td>gpus</td><td style='text-align:left'>{e(', '.join(g['name'] for g in env['gpus']) or 'none')}</td></tr>")
    p.append("</table><h2>Commands</h2>")
    p.append(f"<p>Study:</p><pre>{e(study['command'])}</pre><details><summary>every strategy's commands</summary>")
    for s in study["strategies"]:
        p.append(f"<h3>{e(s['name'])}</h3><pre>{e(' '.join(shlex.quote(c) for c in s['commands']['compile']))}\n"
                 f"{e(' '.join(shlex.quote(c) for c in s['commands']['run']))}</pre>")
    p.append("</details><p class='note'>All numbers: <a href='study.json'>study.json</a>, "
             "table: <a href='study.md'>study.md</a>.</p></body></html>")
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write("\n".join(p) + "\n")
