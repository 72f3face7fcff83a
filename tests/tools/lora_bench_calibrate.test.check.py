"""Checks a profile written by lora-bench --calibrate --step-plan: version 2, an in_step factor
for each op class the plan has and a dispatch time, each with a source naming the plan."""
import json
import sys

profile, plan = sys.argv[1], sys.argv[2]
p = json.load(open(profile))
assert p["format"] == "parallora-device-profile", p["format"]
assert p["version"] == 2, f"version {p['version']}, expected 2"
ins = p.get("in_step")
assert ins, "no in_step section"
for cls in ("gemm", "attention", "memory"):
    f = ins[cls]
    # A kernel inside a step is neither 100x faster nor 100x slower than hot in a loop (a unit or
    # class mix-up is off by 1000x or more; a loaded machine moves a 10th percentile by far less).
    assert 0.01 < f["value"] < 100, f"in_step.{cls} = {f['value']}"
    assert plan in f["source"] and "lora-bench --step-plan" in f["source"], f["source"]
d = ins["dispatch_overhead_s"]
assert 0 <= d["value"] < 1e-3, f"dispatch {d['value']}"
assert "not measured" in p["links"]["intra_node"]["all_reduce"]["source"]
print("ok")
