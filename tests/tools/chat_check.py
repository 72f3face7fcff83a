"""tests/tools/lora_run_chat.test: a run's validation losses and per-step trained tokens against the HF reference."""
import json
import sys

run, ref = sys.argv[1], json.load(open(sys.argv[2]))
val, trained = {}, {}
for line in open(run + "/metrics.jsonl"):
    r = json.loads(line)
    if "val_loss" in r:
        val[r["step"]] = r["val_loss"]
    if "step_trained_tokens" in r:
        trained[r["step"]] = r["step_trained_tokens"]
ok = True
for step, want in ((0, ref["val_loss_initial"]), (20, ref["val_loss_final"])):
    err = abs(val[step] - want) / abs(want)
    ok &= err <= 1e-4
    print(f"val_loss step {step} ours {val[step]:.8f} reference {want:.8f} rel err {err:.2e} {'ok' if err <= 1e-4 else 'DIFF'}")
got = [trained[s] for s in sorted(trained)]
same = got == ref["trained_tokens"]
ok &= same
print(f"trained tokens of {len(got)} steps {'ok' if same else 'DIFF: %s vs %s' % (got, ref['trained_tokens'])}")
s = json.load(open(run + "/summary.json"))
print(f"summary trained_tokens {s['trained_tokens']} of processed {s['processed_tokens']}")
ok &= s["trained_tokens"] == sum(ref["trained_tokens"])
sys.exit(0 if ok else 1)
