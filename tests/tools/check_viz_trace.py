#!/usr/bin/env python3
"""Checks the measured timeline of a plan viewer (lora-compile --viz-trace, lora-run --viz)
against the trace it was drawn from and the run's summary.json.

    check_viz_trace.py index.html trace.json summary.json --ranks N [--pp P --micro-batches M]
                       [--step S] [--mutate drop-rect|run-bubble|step-bubble]

Parses the HTML (html.parser), never greps it, and recomputes everything from the trace itself:
  * the drawn step (<svg class="measured" data-step>) is --step, else the median step on rank 0
    with the first excluded;
  * every rank has its group <g class="m-rank" data-rank=R data-name=...> named as in the trace;
  * per rank and lane (program, compute, comm, idle, bucket) the number of <rect class="m-ev">
    equals the number of trace events of that rank and track that begin inside its span of the
    step (bucket: the async "b"/"e" pairs of the gradient buckets in flight);
  * the table row <tr class="m-row" data-rank=R>: the step's compute / comm / idle / bubble shares
    equal those recomputed from the events (1e-9), the whole-run bubble equals summary.json's
    trace.ranks[R].exposed_comm_fraction + idle_fraction, and the cells show the same numbers
    rounded to 0.1%; the formula is (p-1)/(m+p-1) (0 without a pipeline).
--mutate changes one parsed number first, to show the check fails. Prints "viz trace ok: ..." or
"FAIL: ..." lines and exits 1.
"""
import argparse
import json
import sys
from html.parser import HTMLParser

LANES = ("program", "compute", "comm", "idle", "bucket")


class Viewer(HTMLParser):
    def __init__(self):
        super().__init__()
        self.step = None
        self.groups = {}            # rank -> name
        self.rects = {}             # (rank, lane) -> count
        self.rows = {}              # rank -> attrs
        self.cells = {}             # rank -> {class: text}
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "svg" and "measured" in cls:
            self.step = int(a["data-step"])
        elif tag == "g" and "m-rank" in cls:
            self.groups[int(a["data-rank"])] = a.get("data-name")
        elif tag == "rect" and "m-ev" in cls:
            key = (int(a["data-rank"]), a["data-lane"])
            self.rects[key] = self.rects.get(key, 0) + 1
        elif tag == "tr" and "m-row" in cls:
            self._row = int(a["data-rank"])
            self.rows[self._row] = a
            self.cells[self._row] = {}
        elif tag == "td" and self._row is not None and cls:
            self._cell = cls[0]
            self.cells[self._row][self._cell] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None and self._cell is not None:
            self.cells[self._row][self._cell] += data


def median_step(events):
    spans = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "step" and e["pid"] == 0:
            spans[e["args"]["step"]] = e["dur"]
    steps = sorted(spans)
    cand = steps[1:] if len(steps) > 1 else steps
    cand = sorted(cand, key=lambda s: spans[s])  # stable: ties keep step order
    return cand[len(cand) // 2]


def expected(events, ranks, step):
    """Per rank: the step span and the events of each lane beginning inside it."""
    out = {}
    for r in range(ranks):
        span = [e for e in events if e.get("ph") == "X" and e["pid"] == r and e.get("cat") == "step"
                and e["args"]["step"] == step]
        if len(span) != 1:
            raise SystemExit(f"FAIL: rank {r} has {len(span)} spans of step {step} in the trace")
        b, d = span[0]["ts"], span[0]["dur"]
        e_ = b + d
        lanes = {l: [] for l in LANES}
        for e in events:
            if e.get("ph") != "X" or e["pid"] != r or not (b <= e["ts"] <= e_):
                continue
            tid = e["tid"]
            if tid == 0 and e.get("cat") == "program":
                lanes["program"].append(e)
            elif tid in (1, 2, 3):
                lanes[LANES[tid]].append(e)
        begins = {}
        for e in events:  # gradient buckets in flight: async b/e pairs beginning in the step
            if e.get("ph") not in ("b", "e") or e["pid"] != r:
                continue
            if e["ph"] == "b":
                begins[e["id"]] = e
            elif e["id"] in begins and b <= begins.pop(e["id"])["ts"] <= e_:
                lanes["bucket"].append(e)
        compute = sum(e["dur"] for e in lanes["compute"])
        comm = sum(e["dur"] for e in lanes["comm"])
        idle = max(0.0, d - compute - comm)
        out[r] = {"dur": d, "lanes": lanes, "compute": compute / d, "comm": comm / d, "idle": idle / d,
                  "bubble": (comm + idle) / d}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html")
    ap.add_argument("trace")
    ap.add_argument("summary")
    ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--step", type=int)
    ap.add_argument("--mutate", choices=["drop-rect", "run-bubble", "step-bubble"])
    args = ap.parse_args()

    v = Viewer()
    with open(args.html) as f:
        v.feed(f.read())
    with open(args.trace) as f:
        trace = json.load(f)
    with open(args.summary) as f:
        summary = json.load(f)["trace"]
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}

    if args.mutate == "drop-rect":
        v.rects[(args.ranks - 1, "compute")] -= 1
    elif args.mutate == "run-bubble":
        v.rows[0]["data-run-bubble"] = repr(float(v.rows[0]["data-run-bubble"]) + 1e-6)
    elif args.mutate == "step-bubble":
        v.cells[0]["step-bubble"] = "0.0%"

    fails = []
    step = args.step if args.step is not None else median_step(events)
    if v.step != step:
        fails.append(f"step: the viewer draws step {v.step}, expected {step}")
    exp = expected(events, args.ranks, step)
    if sorted(v.groups) != list(range(args.ranks)) or sorted(v.rows) != list(range(args.ranks)):
        fails.append(f"ranks: tracks of ranks {sorted(v.groups)}, rows of {sorted(v.rows)}, expected 0..{args.ranks - 1}")
    formula = (args.pp - 1) / (args.micro_batches + args.pp - 1)
    n_events = 0
    for r in range(args.ranks):
        if v.groups.get(r) != names.get(r):
            fails.append(f"rank {r}: track named {v.groups.get(r)!r}, the trace says {names.get(r)!r}")
        for lane in LANES:
            got, want = v.rects.get((r, lane), 0), len(exp[r]["lanes"][lane])
            n_events += got
            if got != want:
                fails.append(f"rank {r} lane {lane}: {got} boxes, the trace has {want} events in step {step}")
        if not exp[r]["lanes"]["compute"]:
            fails.append(f"rank {r}: no compute events in step {step}")
        row, cells = v.rows.get(r, {}), v.cells.get(r, {})
        for key in ("compute", "comm", "idle", "bubble"):
            got = float(row.get(f"data-step-{key}", "nan"))
            if not abs(got - exp[r][key]) <= 1e-9:
                fails.append(f"rank {r}: step {key} {got!r}, from the trace {exp[r][key]!r}")
        s = summary["ranks"][r]
        run = s["exposed_comm_fraction"] + s["idle_fraction"]
        if float(row.get("data-run-bubble", "nan")) != run:
            fails.append(f"rank {r}: whole-run bubble {row.get('data-run-bubble')}, summary.json exposed + idle {run!r}")
        for cell, x in (("step-bubble", exp[r]["bubble"]), ("run-bubble", run)):
            if cells.get(cell) != f"{100 * x:.1f}%":
                fails.append(f"rank {r}: cell {cell} shows {cells.get(cell)!r}, expected {100 * x:.1f}%")
        if not abs(float(row.get("data-formula", "nan")) - formula) <= 1e-12:
            fails.append(f"rank {r}: formula {row.get('data-formula')}, expected (p-1)/(m+p-1) = {formula!r}")
    if fails:
        for f in fails:
            print("FAIL:", f)
        return 1
    print(f"viz trace ok: {args.ranks} ranks, step {step}, {n_events} events drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
