#!/usr/bin/env bash
# Installs everything Parallora needs on Debian 12 (run as root or with sudo).
#   scripts/install_deps.sh              # build + test dependencies (Debian packages)
#   scripts/install_deps.sh --reference  # also the PyPI reference tools (torch, transformers, peft,
#                                        # onnx) in ~/.venvs/parallora-ref, used only by the fixture and
#                                        # benchmark scripts; the test suite does not need them.
#   scripts/install_deps.sh --no-data    # without the data-preparation venv ~/.venvs/parallora-data
#                                        # (tokenizers, pyarrow; its tests then skip)
#   scripts/install_deps.sh --render     # also Debian's chromium (~300 MB) for scripts/render_viz.sh
#                                        # (headless screenshots of the plan viewer; tests do not need it)
set -euo pipefail

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
  llvm-16-dev llvm-16-tools libmlir-16-dev mlir-16-tools        # MLIR 16: dialect, passes, lit, FileCheck
  libonnx-dev libprotobuf-dev protobuf-compiler                 # ONNX import
  nlohmann-json3-dev libcli11-dev                               # config.json / safetensors headers, CLIs
  libopenmpi-dev openmpi-bin                                    # multi-rank CPU runs (mpirun)
  iproute2                                                      # ip netns + veth: the two-host tests (tests/tools/two_hosts*.test)
  libopenblas-dev                                               # CPU GEMM (cblas.h)
  libopenblas0-openmp                                           # the OpenMP build we link (runtime/cpu/CMakeLists.txt)
  libdnnl-dev                                                   # oneDNN: the CPU GEMMs (runtime/cpu/gemm.cpp)
  zlib1g-dev                                                    # CRC32 of checkpoint manifests
  libgtest-dev libgmock-dev                                     # unit tests
  clang-14 libclang-rt-14-dev                                   # libFuzzer targets
  graphviz                                                      # dot -> SVG for graph dumps
  librandom123-dev                                              # Philox reference in test_lora_dropout (headers only, tests only)
  python3-matplotlib python3-numpy                              # lora-study plots (run by /usr/bin/python3)
  python3-jinja2                                                # chat templates (scripts/prepare_data.py)
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${#missing[@]} Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all Debian packages present"
fi

# scripts/prepare_data.py's PyPI-only packages (Hugging Face tokenizers, pyarrow for Parquet, and
# jinja2 so the venv is self-contained: Debian's numpy 1.24 would break pyarrow's wheels if the venv
# saw the system site) in a small venv; the tests that need them are UNSUPPORTED without it.
# --byte preparation needs only Debian's python3-jinja2 (/usr/bin/python3).
# --no-data leaves the venv out (machines without PyPI access).
DATA_VENV="${PARALLORA_DATA_VENV:-$HOME/.venvs/parallora-data}"
if [[ " $* " != *" --no-data "* ]]; then
  if [ ! -x "$DATA_VENV/bin/python" ]; then
    /usr/bin/python3 -m venv "$DATA_VENV"
  fi
  "$DATA_VENV/bin/pip" install -q tokenizers pyarrow jinja2
  echo "install_deps: data-preparation packages (tokenizers, pyarrow, jinja2) in $DATA_VENV"
fi

if [[ " $* " == *" --render "* ]] && ! command -v chromium > /dev/null; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi

if [[ " $* " == *" --reference "* ]]; then
  VENV="${PARALLORA_REF_VENV:-$HOME/.venvs/parallora-ref}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch transformers peft onnx onnxscript onnxruntime safetensors numpy
  echo "install_deps: reference tools in $VENV"
fi
