# lit configuration for Parallora's IR, pass, frontend and tool tests.
import os
import lit.formats

config.name = "Parallora"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".mlir", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.parallora_obj_root, "tests")
config.excludes = ["unit", "fixtures", "lit.cfg.py", "lit.site.cfg.py.in", "CMakeLists.txt", "lit.cmake"]

tool_dirs = [
    os.path.join(config.parallora_obj_root, "tools", "lora-opt"),
    os.path.join(config.parallora_obj_root, "tools", "lora-compile"),
    os.path.join(config.parallora_obj_root, "tools", "lora-run"),
    config.filecheck_dir,
]
config.environment["PATH"] = os.pathsep.join(tool_dirs + [config.environment.get("PATH", os.environ.get("PATH", ""))])
config.substitutions.append(("%fixtures", os.path.join(config.parallora_src_root, "tests", "fixtures")))
config.substitutions.append(("%src", config.parallora_src_root))
config.substitutions.append(("%obj", config.parallora_obj_root))
# lora-run's --threads cap (tools/common/cli.h: 4 x the hardware threads, at most 1024).
config.substitutions.append(("%max_threads", str(min(4 * (os.cpu_count() or 1), 1024))))
# lora-run chooses libgomp's wait policy (ACTIVE when its ranks x threads fit the cores); tests
# share the cores with each other (lit -j, ctest -j), so they run PASSIVE unless a test unsets it.
config.environment["OMP_WAIT_POLICY"] = "PASSIVE"
# Multi-rank tests: mpirun as root in containers, more ranks than cores.
for k, v in {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
             "OMPI_MCA_rmaps_base_oversubscribe": "1"}.items():
    config.environment[k] = v
# A usable NVIDIA GPU (driver + device): tests of the no-GPU paths declare UNSUPPORTED: gpu.
import shutil, subprocess
if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
    config.available_features.add("gpu")

# Tests that make their own small filesystem (a tmpfs in a private mount namespace: full-disk
# behaviour) need root and mount rights; elsewhere lit reports them UNSUPPORTED.
import subprocess as _sp
try:
    if _sp.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
               stdout=_sp.DEVNULL, stderr=_sp.DEVNULL, timeout=10).returncode == 0:
        config.available_features.add("tmpfs-mount")
except (OSError, _sp.TimeoutExpired):
    pass

# Multi-host tests make two "hosts" out of Linux network namespaces joined by a veth pair
# (tests/tools/netns_hosts.sh: needs root, CAP_NET_ADMIN and iproute2); elsewhere UNSUPPORTED.
try:
    if _sp.run([os.path.join(config.parallora_src_root, "tests", "tools", "netns_hosts.sh"), "probe"],
               stdout=_sp.DEVNULL, stderr=_sp.DEVNULL, timeout=20).returncode == 0:
        config.available_features.add("netns")
except (OSError, _sp.TimeoutExpired):
    pass

# scripts/prepare_data.py needs jinja2 (Debian python3-jinja2) and, for --model tokenizers and
# Parquet, `tokenizers` + `pyarrow` from the venv scripts/install_deps.sh makes
# (~/.venvs/parallora-data, or PARALLORA_DATA_VENV). %pydata is the Python that has the most of
# them; features: jinja2, data-venv (tokenizers + pyarrow). Tests without them are UNSUPPORTED.
_venv = os.environ.get("PARALLORA_DATA_VENV", os.path.expanduser("~/.venvs/parallora-data"))
_pydata = None
for _py in (os.path.join(_venv, "bin", "python"), "/usr/bin/python3", shutil.which("python3")):
    if _py and os.path.exists(_py) and _sp.run([_py, "-c", "import jinja2"], capture_output=True).returncode == 0:
        _pydata = _py
        break
if _pydata:
    config.available_features.add("jinja2")
    if _sp.run([_pydata, "-c", "import tokenizers, pyarrow"], capture_output=True).returncode == 0:
        config.available_features.add("data-venv")
config.substitutions.append(("%pydata", _pydata or "false"))

# Plans with packed rows (issue 20): lora-compile --packing gives attention and RoPE segment and
# position ids. The packed-data tests run once the compiler has the flag (feature "packing").
try:
    _help = _sp.run([os.path.join(config.parallora_obj_root, "tools", "lora-compile", "lora-compile"), "--help"],
                    capture_output=True, text=True, timeout=30).stdout
    if "--packing" in _help:
        config.available_features.add("packing")
except (OSError, _sp.TimeoutExpired):
    pass
