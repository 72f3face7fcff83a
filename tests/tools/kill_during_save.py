#!/usr/bin/env python3
"""kill -9 at random moments of a run that saves a checkpoint every step, N times, and after each
kill checks what a user relies on (lora_run_kill_during_save.test):
  * `latest` names a complete checkpoint (trainer_state.json present), no *.tmp-* directory is
    ever named, and every checkpoint-N directory without .tmp in its name is complete;
  * resuming from it (into a separate --out) reproduces the uninterrupted run's losses bit for bit
    for the next two steps;
  * the killed run itself continues (--resume into the same --out) on the next iteration.

usage: kill_during_save.py WORKDIR N SEED -- LAUNCH...   (LAUNCH: "lora-run plan.lp --data x"
       or "mpirun -np 2 lora-run plan.lp --data x"; the script adds --steps/--out/--resume)
Exit 0 when every check held; prints one line per kill.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

work, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
launch = sys.argv[sys.argv.index("--") + 1:]
rng = random.Random(seed)
BIG = 10_000_000
os.makedirs(work, exist_ok=True)


def run(extra, timeout=120):
    return subprocess.run(launch + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def losses(out):
    d = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "loss" in j:
                d[j["step"]] = j["loss"]
    return d


def kill_everything(popen, marker):
    """SIGKILL the launcher's process group and every process whose command line names `marker`
    (mpirun may put its ranks in process groups of their own), then wait until none is left."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    # Under mpirun, scan for 1.5 s: ranks live in process groups of their own and one forked
    # just before the launcher died may still run (and save) a moment later.
    deadline = time.time() + (1.5 if "mpirun" in launch[0] else 0.1)
    while time.time() < deadline:
        left = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                state = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
            except OSError:
                continue
            if state != "Z" and marker.encode() in argv and b"kill_during_save" not in b" ".join(argv):
                left.append(int(pid))
        if left:
            print(f"  killing {left}", file=sys.stderr)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    popen.wait()


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


# The uninterrupted reference (constant learning rate: the total step count does not matter).
# 12000 steps: an idle machine saves ~350 steps/s, so 20 kills of up to 1.2 s can reach ~8400.
ref_out = os.path.join(work, "reference")
shutil.rmtree(ref_out, ignore_errors=True)
r = run(["--steps", "12000", "--out", ref_out, "--log-every", "1000000"])
if r.returncode != 0:
    fail("reference run failed:\n" + r.stdout)
ref = losses(ref_out)

out = os.path.join(work, "run")
shutil.rmtree(out, ignore_errors=True)
killed = 0
for i in range(n):
    args = ["--steps", str(BIG), "--save-every", "1", "--keep-last", "3", "--log-every", "1000000", "--out", out]
    if os.path.exists(os.path.join(out, "latest")):
        args += ["--resume", out]
    p = subprocess.Popen(launch + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(rng.uniform(0.4, 1.2))
    kill_everything(p, out)  # the launcher and every rank at once, as a node crash would
    killed += 1
    latest_file = os.path.join(out, "latest")
    if not os.path.exists(latest_file):
        print(f"kill {i + 1}: before the first checkpoint")
        continue
    name = open(latest_file).read().strip()
    if ".tmp" in name or not os.path.isfile(os.path.join(out, name, "trainer_state.json")):
        fail(f"kill {i + 1}: latest names {name!r}, not a complete checkpoint")
    for entry in os.listdir(out):
        if entry.startswith("checkpoint-") and ".tmp" not in entry:
            if not os.path.isfile(os.path.join(out, entry, "trainer_state.json")):
                fail(f"kill {i + 1}: {entry} is a partial checkpoint under a final name")
    step = json.load(open(os.path.join(out, name, "trainer_state.json")))["global_step"]
    if step + 2 > max(ref):
        fail(f"kill {i + 1}: step {step} is past the reference run")
    check = os.path.join(work, "check")
    shutil.rmtree(check, ignore_errors=True)
    r = run(["--steps", str(step + 2), "--out", check, "--resume", out, "--log-every", "1000000"])
    if r.returncode != 0:
        fail(f"kill {i + 1}: resuming from {name} failed:\n{r.stdout}")
    got = losses(check)
    for s in (step + 1, step + 2):
        if got.get(s) != ref[s]:
            fail(f"kill {i + 1}: resumed step {s} loss {got.get(s)!r} != uninterrupted {ref[s]!r} "
                 f"(resumed run's steps {sorted(got)}; its output:\n{r.stdout})")
    print(f"kill {i + 1}: latest {name} complete; resume bit-exact at steps {step + 1}-{step + 2}")
print(f"{killed} kills, every latest checkpoint complete and every resume bit-exact")
