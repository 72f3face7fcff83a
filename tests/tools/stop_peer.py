#!/usr/bin/env python3
"""Stops (SIGSTOP; SIGKILL with STOP_PEER_SIGNAL=KILL) MPI rank 1 of a running job DELAY seconds after its process appeared and reports whether the job
ended on its own within LIMIT seconds of the stop (lora_run_stopped_peer.test).

usage: stop_peer.py OUT_DIR DELAY LIMIT -- mpirun -np 2 lora-run ... --out OUT_DIR ...
Prints the job's output, then "ended N.N s after the stop" or "HUNG"; exit 1 when it hung.
"""
import os
import signal
import subprocess
import sys
import time

out, delay, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
cmd = sys.argv[sys.argv.index("--") + 1:]
job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rank1():
    """The pid of the job's rank 1 (lora-run with OMPI_COMM_WORLD_RANK=1 and this OUT_DIR), or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"OMPI_COMM_WORLD_RANK=1" in env and b"lora-run" in argv[0] and out.encode() in b" ".join(argv):
            return int(pid)
    return None


# DELAY counts from the moment rank 1's process exists (so that a short DELAY lands in its MPI
# start-up however slow the launcher is), up to 30 s of waiting for it.
t_launch = time.time()
while rank1() is None and time.time() - t_launch < 30 and job.poll() is None:
    time.sleep(0.01)
time.sleep(delay)
stopped, t_stop = rank1(), time.time()
if stopped is not None:
    os.kill(stopped, signal.SIGKILL if os.environ.get("STOP_PEER_SIGNAL") == "KILL" else signal.SIGSTOP)
try:
    text, _ = job.communicate(timeout=limit)
    print(text)
    print(f"stopped rank 1: {stopped is not None}; ended {time.time() - t_stop:.1f} s after the stop")
    ok = True
except subprocess.TimeoutExpired:
    job.kill()
    print(f"HUNG: the job was still running {limit} s after rank 1 was stopped")
    ok = False
if stopped:
    try:
        os.kill(stopped, signal.SIGKILL)
    except OSError:
        pass
sys.exit(0 if ok else 1)
