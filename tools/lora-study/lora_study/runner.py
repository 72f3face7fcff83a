"""Compiling and running each strategy: finding the tools, progress, resuming a killed study.

Each strategy lives in <out>/strategies/<name>/: plan.lp + compile.log (lora-compile), run/ (lora-run's
--out: metrics.jsonl, summary.json, adapter), run.log, and study-run.json (the exact commands and
timings). A strategy whose run/summary.json is complete and whose recorded commands equal the
current ones is not run again, so a killed study restarted with the same --out picks up where it
stopped; a cut-short or differently configured run is started again from scratch (--overwrite), so
every reported time is one uninterrupted run.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from . import results


def find_tool(name, bin_dir, script_path):
    """lora-compile / lora-run: --bin-dir, next to this script in a build tree, the source tree's
    build/, then PATH. Returns an absolute path or None."""
    cands = []
    if bin_dir:
        cands += [os.path.join(bin_dir, name), os.path.join(bin_dir, name, name),
                  os.path.join(bin_dir, "tools", name, name)]
    here = os.path.dirname(os.path.abspath(script_path))        # build/tools/lora-study (a link) or bin/
    cands += [os.path.join(here, "..", name, name), os.path.join(here, name)]
    src = os.path.dirname(os.path.realpath(script_path))        # <repo>/tools/lora-study
    cands += [os.path.join(src, "..", "..", "build", "tools", name, name)]
    if not bin_dir:
        for c in cands:
            if os.path.isfile(c) and os.access(c, os.X_OK):
                return os.path.normpath(os.path.abspath(c))
        w = shutil.which(name)
        return os.path.abspath(w) if w else None
    for c in cands[:3]:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.normpath(os.path.abspath(c))
    return None


def shown_path(p):
    r = os.path.relpath(p)
    return p if r.startswith("..") else r


def fmt_secs(s):
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """One line per strategy (start, end, elapsed, ETA); on a terminal also the live step of lora-run."""

    def __init__(self, total, stream=sys.stdout):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.t0 = time.time()
        self.done_rank_secs = []  # (ranks, seconds) of strategies run in this invocation

    def eta(self, remaining_ranks):
        # Time grows about with the number of ranks on few cores: seconds per rank, averaged.
        if not self.done_rank_secs:
            return None
        per_rank = sum(s for _, s in self.done_rank_secs) / max(1, sum(r for r, _ in self.done_rank_secs))
        return per_rank * remaining_ranks

    def line(self, text):
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def live(self, text):
        if self.tty:
            self.stream.write("\r\033[K" + text[:150])
            self.stream.flush()


STEP_LINE = re.compile(r"^step (\d+)/(\d+) \| loss ([0-9.eE+-]+|nan|inf)")


def run_logged(cmd, log_path, env, on_line=None):
    """Runs cmd with stdout+stderr into log_path (line by line, so a killed study keeps its logs);
    on_line(text) sees every line. Returns the exit status."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        try:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                 bufsize=1, errors="replace")
        except OSError as e:
            log.write(f"cannot start: {e}\n")
            return 127
        try:
            for text in p.stdout:
                log.write(text)
                if on_line:
                    on_line(text.rstrip("\n"))
            return p.wait()
        except BaseException:  # Ctrl-C or SIGTERM of the study: end the run (mpirun forwards it to its ranks)
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
            log.write("\nlora-study: stopped\n")
            raise


def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def run_strategy(st, i, total, a, tools, common_compile, progress, remaining_ranks):
    """Compiles and runs one strategy (or reuses a finished run). Returns its record."""
    d = os.path.join(a.out, "strategies", st.name)
    os.makedirs(d, exist_ok=True)
    plan = os.path.join(d, "plan.lp")
    run_dir = os.path.join(d, "run")
    record_path = os.path.join(d, "study-run.json")
    compile_cmd = [tools["lora-compile"]] + common_compile + st.compile_flags() + ["-o", plan]
    train = [tools["lora-run"], plan, "--data", a.data, "--steps", str(a.steps), "--seed", str(a.seed),
             "--threads", str(a.threads), "--comm-timeout", str(a.comm_timeout), "--backend", a.backend,
             "--log-every", str(max(1, a.steps // 10)), "--out", run_dir,
             "--trace", os.path.join(d, "trace.json")]  # the measured timeline (plots.timelines)
    if a.backend == "cuda" and st.ranks > 1:
        train += ["--collectives", a.collectives]
    if a.weights and not a.onnx:
        train += ["--weights", a.weights]
    if a.val_data:
        train += ["--val-data", a.val_data, "--val-every", str(a.val_every or max(1, a.steps // 10))]
        if a.val_batches:
            train += ["--val-batches", str(a.val_batches)]
    launch = ([a.mpirun, "-np", str(st.ranks), "--oversubscribe", "--bind-to", "none"] if st.ranks > 1 else [])
    run_cmd = launch + train
    head = f"[{i}/{total}] {st.name}: {st.ranks} rank{'s' if st.ranks > 1 else ''} " \
           f"(dp {st.dp} x tp {st.tp} x pp {st.pp}{', ' + st.schedule if st.pp > 1 else ''}), {st.micro} micro-batches" \
           + (f" [{st.alias}]" if st.alias else "")

    rec = None
    if os.path.exists(record_path):
        try:
            rec = json.load(open(record_path))
        except ValueError:
            rec = None
    summary = results.read_complete_summary(run_dir, a.steps)
    if (not a.rerun and summary is not None and rec and rec.get("compile") == compile_cmd
            and rec.get("run") == run_cmd and rec.get("status") == "ok"):
        progress.line(f"{head}: finished earlier ({shown_path(run_dir)}), not run again")
        rec["reused"] = True
        return rec
    used = os.path.isdir(run_dir) and bool(os.listdir(run_dir))  # lora-run refuses a used --out without --overwrite
    finished = os.path.exists(os.path.join(run_dir, "summary.json"))  # finished, maybe with other settings
    status = rec.get("status") if rec else None
    reason = ("--rerun" if a.rerun and (used or rec) else
              "cut short" if status == "running" else
              status if status and status != "ok" else
              "settings changed" if finished else
              "cut short" if used else "")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if st.ranks > 1:
        env.update(OMPI_MCA_rmaps_base_oversubscribe="1")
        if os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    progress.line(head + (f" (earlier run {reason}: starting again)" if reason else ""))
    rec = {"name": st.name, "compile": compile_cmd, "run": run_cmd, "status": "running", "started": time.time()}
    json.dump(rec, open(record_path, "w"), indent=1)

    t0 = time.time()
    rc = run_logged(compile_cmd, os.path.join(d, "compile.log"), env)
    rec["compile_s"] = time.time() - t0
    if rc != 0:
        rec.update(status="compile failed", exit_code=rc, log=os.path.join(d, "compile.log"))
        progress.line(f"  lora-compile failed ({rc}); {rec['log']}:\n" + tail(rec["log"]))
        json.dump(rec, open(record_path, "w"), indent=1)
        return rec
    run_cmd_now = run_cmd + (["--overwrite"] if used else [])

    t1 = time.time()

    def on_line(text):
        m = STEP_LINE.match(text)
        if m:
            progress.live(f"  {st.name}: step {m.group(1)}/{m.group(2)}, loss {m.group(3)}, {fmt_secs(time.time() - t1)}")

    rc = run_logged(run_cmd_now, os.path.join(d, "run.log"), env, on_line)
    rec["run_s"] = time.time() - t1
    rec["overwrite"] = used
    summary = results.read_complete_summary(run_dir, a.steps) if rc == 0 else None
    if summary is None:
        rec.update(status="run failed", exit_code=rc, log=os.path.join(d, "run.log"))
        progress.line(f"  lora-run failed ({rc}); {rec['log']}:\n" + tail(rec["log"]))
    else:
        rec["status"] = "ok"
        progress.done_rank_secs.append((st.ranks, rec["compile_s"] + rec["run_s"]))
        eta = progress.eta(remaining_ranks)
        progress.line(f"  done in {rec['compile_s'] + rec['run_s']:.1f} s (compile {rec['compile_s']:.1f} s, "
                      f"lora-run {rec['run_s']:.1f} s): {summary['tokens_per_s_median']:.0f} tok/s, final loss "
                      f"{summary['final_loss']:.4f} | elapsed {fmt_secs(time.time() - progress.t0)}"
                      + (f", ETA {fmt_secs(eta)}" if eta is not None and remaining_ranks else ""))
    json.dump(rec, open(record_path, "w"), indent=1)
    return rec
