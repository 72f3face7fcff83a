#!/usr/bin/python3
"""The --backend cuda side of lora-study's report, exercised without a GPU (tests/tools/lora_study.test).

  lora_study_cuda_report.py CPU_STUDY_DIR OUT_DIR

Takes a finished CPU study, adds to each run's summary.json what lora-run writes on a GPU (backend
cuda, gpu_peak_mem_mib / gpu_util_mean per run and per rank, mfu; made-up numbers: 100 MiB x the
strategy's index + 1, utilization 50%, MFU 10%), recomputes the figures as lora-study does for cuda,
and writes study.md, the plots and index.html into OUT_DIR. Prints the cuda columns of study.md."""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "tools", "lora-study"))
from lora_study import html, plots, report, results  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
study = json.load(open(os.path.join(src, "study.json")))
study["settings"]["backend"] = "cuda"
for i, e in enumerate(study["strategies"]):
    run = os.path.join(src, e["dir"], "run")
    s = json.load(open(os.path.join(run, "summary.json")))
    s.update(backend="cuda", gpu_peak_mem_mib=100.0 * (i + 1), gpu_alloc_peak_mib=90.0 * (i + 1),
             gpu_util_mean=50.0, gpu_util_max=80.0, mfu=0.1, gpu_name="NVIDIA H100 80GB HBM3 (simulated)")
    for rk in s["ranks"]:
        rk.update(gpu_peak_mem_mib=100.0 * (i + 1), gpu_util_mean=50.0)
    train, val = results.read_metrics(os.path.join(run, "metrics.jsonl"))
    e["figures"] = results.figures(s, train, val, e["figures"]["tokens_per_step"], "cuda")
base = next(e for e in study["strategies"] if e["name"] == study["baseline"])
study["baseline_figures"] = base["figures"]
for e in study["strategies"]:
    e["ratios"]["memory_reduction"] = report.ratio(base["figures"]["peak_mem_bytes"], e["figures"]["peak_mem_bytes"])
study["plots"] = plots.make_all(study, out)
open(os.path.join(out, "study.md"), "w").write(report.markdown(study))
html.write(study, out)
head, rows = report.build_rows(study)
cols = [head.index(c) for c in ("strategy", "memory reduction", "GPU peak MiB", "GPU util, MFU")]
for r in [head] + rows:
    print(" | ".join(r[c] for c in cols))
print("files: " + " ".join(sorted(os.listdir(out))))
