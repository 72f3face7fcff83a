#!/usr/bin/env python3
"""Checks a run across the two network-namespace hosts of tests/tools/two_hosts.test.

  two_hosts_check.py --ref REF_RUN --run RUN --log MPIRUN_LOG --steps N

REF_RUN and RUN are lora-run --out directories (single device, and the multi-host plan). The log
holds one line per rank written by the launch wrapper (`rank R host H netns NS`) and the veth
counters of host0 after the run (`veth0 tx_bytes T rx_bytes R`). Checked, with the tolerances of
scripts/compare_strategies.py (tests/tools/parallel_equivalence.test):
  * every step's loss equals the single-device run's (relative error <= 1e-4), and the final
    PEFT adapter too (max |diff| <= 1e-4 of the largest value);
  * every rank's measured bytes sent per step equal the compiler's prediction;
  * placement: the ranks ran on two hosts (distinct network namespaces), and on every pipeline
    stage (and tp position) the data-parallel replicas are on different hosts;
  * the data-parallel all-reduces crossed the veth: host0's veth sent at least the all-reduce
    bytes of host0's ranks and received at least those of host1's (a 2-rank all-reduce of n
    bytes must move n bytes each way; anything less means another path, e.g. shared memory).
Prints the comparison; exit status 1 when any check fails.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from compare_strategies import metrics, read_safetensors  # noqa: E402
import json  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--loss-rtol", type=float, default=1e-4)
    ap.add_argument("--adapter-rtol", type=float, default=1e-4)
    a = ap.parse_args()
    failures = []

    # Losses, step by step.
    ref, _ = metrics(os.path.join(a.ref, "metrics.jsonl"))
    run, _ = metrics(os.path.join(a.run, "metrics.jsonl"))
    if sorted(ref) != list(range(1, a.steps + 1)) or sorted(run) != sorted(ref):
        failures.append(f"steps logged: single {sorted(ref)}, two hosts {sorted(run)}")
    worst = 0.0
    print("step  single-device  two hosts  rel err")
    for k in sorted(ref):
        if k not in run:
            continue
        x, y = ref[k]["loss"], run[k]["loss"]
        err = abs(y - x) / abs(x)
        worst = max(worst, err)
        print(f"{k:4d}  {x:.6f}       {y:.6f}   {err:.1e}")
    print(f"loss: max relative error {worst:.1e} (tolerance {a.loss_rtol:g})")
    if worst > a.loss_rtol:
        failures.append(f"loss differs from the single-device run: max relative error {worst:.1e} > {a.loss_rtol:g}")

    # Adapter.
    ra = read_safetensors(os.path.join(a.ref, "adapter", "adapter_model.safetensors"))
    wa = read_safetensors(os.path.join(a.run, "adapter", "adapter_model.safetensors"))
    if sorted(ra) != sorted(wa):
        failures.append("adapter tensors differ from the single-device run's")
    else:
        scale = max(max(abs(v) for v in t) for t in ra.values())
        ad = max(max(abs(x - y) for x, y in zip(ra[k], wa[k])) for k in ra) / scale
        print(f"adapter: max |diff| / max |w| {ad:.1e} (tolerance {a.adapter_rtol:g})")
        if ad > a.adapter_rtol:
            failures.append(f"adapter differs: {ad:.1e} > {a.adapter_rtol:g}")

    # Bytes and mesh coordinates.
    summary = json.load(open(os.path.join(a.run, "summary.json")))
    coords, allreduce = {}, {}
    for rk in summary["ranks"]:
        m, p = rk["bytes_sent_per_step"], rk["bytes_sent_predicted"]
        for kind in set(m) | set(p):
            if abs(float(m.get(kind, 0)) - float(p.get(kind, 0))) > 0.5:
                failures.append(f"rank {rk['rank']}: {kind} sent {m.get(kind, 0)} B/step, predicted {p.get(kind, 0)}")
        coords[rk["rank"]] = rk["coords"]
        allreduce[rk["rank"]] = float(m.get("all_reduce", 0))

    # Placement, from the launch wrapper's lines.
    log = open(a.log, errors="replace").read()
    host = {}
    for r, h, ns in re.findall(r"^rank (\d+) host (\S+) netns (\S+)$", log, re.M):
        host[int(r)] = (h, ns)
    print("rank  dp tp pp  host   network namespace")
    for r in sorted(coords):
        c = coords[r]
        h, ns = host.get(r, ("?", "?"))
        print(f"{r:4d}  {c['dp']:2d} {c['tp']:2d} {c['pp']:2d}  {h:5s}  {ns}")
    if sorted(host) != sorted(coords):
        failures.append(f"placement lines for ranks {sorted(host)}, summary has ranks {sorted(coords)}")
    namespaces = {ns for _, ns in host.values()}
    if len(namespaces) != 2 or len({h for h, _ in host.values()}) != 2:
        failures.append(f"ranks ran in {len(namespaces)} network namespace(s), expected 2 hosts")
    groups = {}
    for r, c in coords.items():
        groups.setdefault((c["tp"], c["pp"]), []).append(r)
    for (tp, pp), members in sorted(groups.items()):
        where = [host.get(r, ("?", "?"))[1] for r in members]
        ok = len(set(where)) == len(where)
        print(f"dp group of tp {tp}, pp {pp}: ranks {members} on {len(set(where))} host(s): {'across hosts' if ok else 'SAME HOST'}")
        if not ok:
            failures.append(f"the data-parallel replicas {members} (tp {tp}, pp {pp}) share a host")

    # Traffic over the veth (counters of host0's end, read after mpirun returned).
    m = re.search(r"^veth0 tx_bytes (\d+) rx_bytes (\d+)$", log, re.M)
    if not m or not host:
        failures.append("no veth0 counters in the log")
    else:
        tx, rx = int(m.group(1)), int(m.group(2))
        h0 = host.get(0, ("?", "?"))[1]
        need_tx = a.steps * sum(b for r, b in allreduce.items() if host.get(r, ("", ""))[1] == h0)
        need_rx = a.steps * sum(b for r, b in allreduce.items() if host.get(r, ("", ""))[1] != h0)
        print(f"veth0 of host0: sent {tx} B (all-reduces of its ranks: >= {need_tx:.0f}), "
              f"received {rx} B (>= {need_rx:.0f})")
        if tx < need_tx or rx < need_rx:
            failures.append("the all-reduces did not all cross the veth between the hosts")

    for f in failures:
        print(f"two_hosts_check: FAILED: {f}")
    if failures:
        return 1
    print(f"two_hosts_check: {len(coords)} ranks on 2 hosts equal the single-device run over {a.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
