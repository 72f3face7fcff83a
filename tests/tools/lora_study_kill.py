#!/usr/bin/python3
"""Stops a running lora-study the way a user or a batch system would (tests/tools/lora_study.test).

  lora_study_kill.py WAIT_FOR -- lora-study ARGS...

Starts the command, waits until the file WAIT_FOR exists (e.g. the second strategy's run.log: its
lora-run has started), sends SIGTERM, and prints the exit status and how many processes still name
the study's --out directory a few seconds later (lora-run ranks or mpirun left behind)."""
import os
import signal
import subprocess
import sys
import time

wait_for, cmd = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
out = os.path.abspath(cmd[cmd.index("--out") + 1])
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
deadline = time.time() + 120
while not os.path.exists(wait_for) and p.poll() is None and time.time() < deadline:
    time.sleep(0.02)
if p.poll() is not None:
    sys.exit(f"lora_study_kill: the study ended before {wait_for} appeared (exit {p.returncode})")
p.send_signal(signal.SIGTERM)
err = p.communicate(timeout=60)[1]
print(f"lora-study exit status {p.returncode} after SIGTERM")
print(err.strip().splitlines()[-1] if err.strip() else "(no message)")
time.sleep(3)
left = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if out in args and int(pid) != os.getpid():
            left.append(f"{pid}: {args[:120]}")
print(f"processes left naming {os.path.basename(out)}: {len(left)}")
for l in left:
    print("  " + l)
