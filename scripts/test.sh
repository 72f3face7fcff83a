#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, runs every test (unit, lit, fuzz smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
ctest --preset default -j"$(nproc)"
# Brief libFuzzer runs of the ONNX and safetensors readers (clang build in build-fuzz/).
if [ -x scripts/fuzz.sh ]; then
  scripts/fuzz.sh "${PARALLORA_FUZZ_SECONDS:-20}"
fi
