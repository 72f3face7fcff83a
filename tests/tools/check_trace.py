#!/usr/bin/env python3
"""Checks a `lora-run --trace` file (Chrome trace event format, runtime/train/trace.h).

Usage: check_trace.py TRACE --ranks N --steps S [--expect-comm OP ...] [--mutate WHAT]

Checks, printing one line per failure and exiting 1 on any:
  format   a JSON object with a traceEvents list; every event has ph, pid, tid; complete events
           ("X") have a name, numeric ts and dur >= 0; otherData has one clock offset and error
           per rank
  ranks    pids 0..N-1 are present, each named "rank R (dp D, tp T, pp P)", with its tracks named
           session / compute / communication / idle
  nesting  per (pid, tid), complete events appear in begin order and nest properly (no two
           overlap partially)
  comm     every collective (all_reduce, send, recv, broadcast, all_reduce_start / _wait) is on
           the communication track with its bytes; each rank has each --expect-comm op with
           bytes > 0; no collective on the compute track
  steps    each rank has steps 1..S; every instruction lies inside a step (or validation) span;
           every step holds instructions; step k overlaps step k of rank 0 (aligned clocks);
           a recv never ends before the matching send began (beyond the stated clock error)
  async    bucket in-flight slices ("b"/"e") come in pairs
--mutate breaks a copy of the trace first (overlap, no-name, no-bytes, outside-step): the lit
test uses it to show that each check can fail.
"""
import argparse
import json
import re
import sys

COMM_OPS = {"all_reduce", "send", "recv", "broadcast", "all_reduce_start", "all_reduce_wait"}
TRACKS = {0: "session", 1: "compute", 2: "communication", 3: "idle"}


def ns(x):
    return round(float(x) * 1000)


def mutate(trace, what):
    ev = trace["traceEvents"]
    xs = [e for e in ev if e.get("ph") == "X"]
    if what == "overlap":  # a compute kernel that starts inside the previous one and ends after it
        comp = [e for e in xs if e["pid"] == 0 and e["tid"] == 1]
        a, b = comp[0], comp[1]
        b["ts"] = a["ts"] + a["dur"] / 2
        b["dur"] = a["dur"] + b["dur"] + 1
    elif what == "no-name":
        trace["traceEvents"] = [e for e in ev if not (e.get("ph") == "M" and e["pid"] == 1 and e["name"] == "process_name")]
    elif what == "no-bytes":
        for e in xs:
            if e["name"] in COMM_OPS:
                e["args"].pop("bytes", None)
                break
    elif what == "outside-step":
        steps = [e for e in xs if e["pid"] == 0 and e.get("cat") == "step"]
        last = max(steps, key=lambda e: e["ts"])
        for e in xs:
            if e["pid"] == 0 and e["tid"] == 1 and last["ts"] <= e["ts"] <= last["ts"] + last["dur"]:
                e["ts"] = last["ts"] + last["dur"] + 1000
                break


def check(trace, n_ranks, n_steps, expect_comm):
    errors = []
    err = errors.append
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        return ["format: not a JSON object with a traceEvents list"]
    ev = trace["traceEvents"]
    for i, e in enumerate(ev):
        if not all(k in e for k in ("ph", "pid", "tid")):
            err(f"format: event #{i} lacks ph/pid/tid: {e}")
        elif e["ph"] == "X" and not (isinstance(e.get("name"), str) and isinstance(e.get("ts"), (int, float))
                                     and isinstance(e.get("dur"), (int, float)) and e["dur"] >= 0):
            err(f"format: complete event #{i} lacks name / numeric ts / dur >= 0: {e}")
    if errors:
        return errors
    other = trace.get("otherData", {})
    for key in ("clock_offset_us", "clock_error_us"):
        if len(other.get(key, [])) != n_ranks:
            err(f"format: otherData.{key} should have {n_ranks} entries, has {other.get(key)}")
    tol = ns(max(other.get("clock_error_us", [0]) or [0])) + 1000

    names = {}
    threads = {}
    for e in ev:
        if e["ph"] == "M" and e["name"] == "process_name":
            names[e["pid"]] = e["args"]["name"]
        if e["ph"] == "M" and e["name"] == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    pids = {e["pid"] for e in ev}
    if pids != set(range(n_ranks)):
        err(f"ranks: pids {sorted(pids)}, expected 0..{n_ranks - 1}")
    for r in range(n_ranks):
        if not re.fullmatch(rf"rank {r} \(dp \d+, tp \d+, pp \d+\)", names.get(r, "")):
            err(f"ranks: rank {r} has no process name 'rank {r} (dp D, tp T, pp P)' (has {names.get(r)!r})")
        for tid, tname in TRACKS.items():
            if threads.get((r, tid)) != tname:
                err(f"ranks: rank {r} track {tid} should be named {tname!r}, is {threads.get((r, tid))!r}")

    xs = [e for e in ev if e["ph"] == "X"]
    by_track = {}
    for e in xs:
        by_track.setdefault((e["pid"], e["tid"]), []).append(e)
    for (pid, tid), es in sorted(by_track.items()):
        stack = []
        last_begin = None
        for e in es:
            b, d = ns(e["ts"]), ns(e["dur"])
            end = b + d
            if last_begin is not None and b < last_begin:
                err(f"nesting: rank {pid} track {tid}: {e['name']} at {e['ts']} us is written after an event "
                    f"beginning later")
            last_begin = b
            while stack and stack[-1][1] <= b:
                stack.pop()
            if stack and end > stack[-1][1]:
                err(f"nesting: rank {pid} track {tid}: {e['name']} [{e['ts']}, {e['ts'] + e['dur']}] us partially "
                    f"overlaps {stack[-1][2]} (ends {stack[-1][1] / 1000} us)")
            stack.append((b, end, e["name"]))

    for e in xs:
        if e["name"] in COMM_OPS and e.get("cat") in ("comm", "compute"):
            if e["tid"] != 2:
                err(f"comm: rank {e['pid']}: {e['name']} is on track {e['tid']}, not communication (2)")
            if not isinstance(e.get("args", {}).get("bytes"), int):
                err(f"comm: rank {e['pid']}: {e['name']} at {e['ts']} us has no bytes")
    for r in range(n_ranks):
        for op in expect_comm:
            if not any(e["pid"] == r and e["name"] == op and e.get("args", {}).get("bytes", 0) > 0 for e in xs):
                err(f"comm: rank {r} has no {op} with bytes > 0 on the communication track")

    steps = {}
    for e in xs:
        if e.get("cat") == "step":
            steps.setdefault(e["pid"], {})[e["args"]["step"]] = (ns(e["ts"]), ns(e["ts"]) + ns(e["dur"]))
    holders = {}
    for e in xs:
        if e.get("cat") == "step" or (e.get("cat") == "session" and e["name"] == "validation"):
            holders.setdefault(e["pid"], []).append((ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])))
    for r in range(n_ranks):
        got = sorted(steps.get(r, {}))
        if got != list(range(1, n_steps + 1)):
            err(f"steps: rank {r} has steps {got}, expected 1..{n_steps}")
    held = {}
    for e in xs:
        if e.get("cat") not in ("compute", "comm"):
            continue
        b, end = ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])
        if not any(hb <= b and end <= he for hb, he in holders.get(e["pid"], [])):
            err(f"steps: rank {e['pid']}: instruction {e['name']} at {e['ts']} us (step {e['args'].get('step')}) "
                f"is not inside a step or validation span")
        if e.get("cat") == "compute" or e["name"] in COMM_OPS:
            for k, (sb, se) in steps.get(e["pid"], {}).items():
                if sb <= b and end <= se:
                    held[(e["pid"], k)] = held.get((e["pid"], k), 0) + 1
    for r, ks in steps.items():
        for k, (sb, se) in ks.items():
            if not held.get((r, k)):
                err(f"steps: rank {r} step {k} holds no instruction")
            if k in steps.get(0, {}):
                b0, e0 = steps[0][k]
                if sb > e0 + tol or b0 > se + tol:
                    err(f"steps: rank {r} step {k} [{sb / 1000}, {se / 1000}] us does not overlap rank 0's "
                        f"[{b0 / 1000}, {e0 / 1000}] us: clocks not aligned")
    sends = {}
    for e in xs:
        a = e.get("args", {})
        if e["name"] == "send":
            key = (e["pid"], a.get("peer"), a.get("step"), a.get("micro_batch"))
            sends[key] = min(sends.get(key, 1 << 62), ns(e["ts"]))
    for e in xs:
        a = e.get("args", {})
        if e["name"] == "recv":
            key = (a.get("peer"), e["pid"], a.get("step"), a.get("micro_batch"))
            if key not in sends:
                err(f"steps: rank {e['pid']}: recv at {e['ts']} us has no matching send {key}")
            elif ns(e["ts"]) + ns(e["dur"]) + tol < sends[key]:
                err(f"steps: rank {e['pid']}: recv ending at {e['ts'] + e['dur']} us ends before its send began "
                    f"({sends[key] / 1000} us): clocks not aligned")

    flight = {}
    for e in ev:
        if e["ph"] in ("b", "e"):
            flight[(e["pid"], e["id"])] = flight.get((e["pid"], e["id"]), "") + e["ph"]
    for k, v in flight.items():
        if v != "be":
            err(f"async: slice {k} has phases {v!r}, expected 'be'")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--expect-comm", nargs="*", default=[])
    ap.add_argument("--mutate", choices=["overlap", "no-name", "no-bytes", "outside-step"])
    a = ap.parse_args()
    try:
        with open(a.trace) as f:
            trace = json.load(f)
    except (OSError, ValueError) as e:
        print(f"format: {a.trace}: {e}")
        return 1
    if a.mutate:
        mutate(trace, a.mutate)
    errors = check(trace, a.ranks, a.steps, a.expect_comm)
    for e in errors[:20]:
        print(e)
    if len(errors) > 20:
        print(f"... and {len(errors) - 20} more")
    if errors:
        return 1
    n = sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
    print(f"trace ok: {a.ranks} ranks, {a.steps} steps, {n} complete events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
