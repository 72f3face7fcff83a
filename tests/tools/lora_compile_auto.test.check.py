"""Checks that every rank of a plan predicts a peak within the memory limit (GiB): lora-run --describe's rank table."""
import re, subprocess, sys

plan, obj, limit_gib = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = subprocess.run([obj + "/tools/lora-run/lora-run", "--describe", plan], capture_output=True, text=True, check=True).stdout
peaks = [float(m.group(1)) for m in re.finditer(r"^\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+([0-9.]+)", out, re.M)]
assert peaks, "no rank table in lora-run --describe:\n" + out
limit_mib = limit_gib * 1024
assert max(peaks) <= limit_mib, f"peak {max(peaks)} MiB over the limit {limit_mib} MiB"
print(f"ok: {len(peaks)} rank(s), largest peak {max(peaks):.3f} MiB <= {limit_mib:.3f} MiB")
