"""The machine a study ran on: what the report must state to be read honestly."""
import datetime
import os
import platform
import shutil
import subprocess


def _first(cmd, cwd=None):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (p.stdout or p.stderr).strip()
    return out.splitlines()[0].strip() if p.returncode == 0 and out else None


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def usable_cores():
    """Cores this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    # A CPU quota (containers) can be smaller than the affinity mask.
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def gpus():
    if not shutil.which("nvidia-smi"):
        return []
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if p.returncode != 0:
        return []
    out = []
    for line in p.stdout.strip().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 3:
            out.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return out


def os_name():
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def collect(repo_dir, tools, cores_override=None):
    commit = _first(["git", "rev-parse", "HEAD"], cwd=repo_dir)
    dirty = None
    if commit:
        try:
            p = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=20, cwd=repo_dir)
            dirty = bool(p.stdout.strip()) if p.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import matplotlib
        mpl = matplotlib.__version__
    except ImportError:
        mpl = None
    cores = usable_cores()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": os_name(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": cores,
        "cores_assumed": cores_override or cores,
        "mem_total_gib": mem_total_gib(),
        # Other processes on the cores make every time noisy; the report says so (load at the end: main).
        "load_avg_1m_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpus": gpus(),
        "git_commit": commit,
        "git_dirty": dirty,
        "mpirun": _first(["mpirun", "--version"]),
        "python": platform.python_version(),
        "matplotlib": mpl,
        "tools": tools,
    }
