"""Checker of lora_run_threads.test: bitwise equality of losses and adapters across threads."""
import hashlib
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1])


def run(lib, t):
    d = root / f"{lib}-{t}"
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3, (d, losses)
    adapter = d / "adapter" / "adapter_model.safetensors"
    return losses, hashlib.sha256(adapter.read_bytes()).hexdigest()


for lib in ("onednn", "openblas"):
    ref = run(lib, 1)
    for t in (2, 8):
        got = run(lib, t)
        assert got[0] == ref[0], f"{lib}: losses with {t} threads {got[0]} != 1 thread {ref[0]}"
        assert got[1] == ref[1], f"{lib}: adapter with {t} threads differs from 1 thread"
    print(f"{lib}: threads 1, 2, 8 bit-identical (losses and adapter)")

a, b = run("onednn", 1)[0], run("openblas", 1)[0]
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
assert worst <= 1e-5, (a, b, worst)
print("onednn vs openblas: losses within 1e-5 relative")
