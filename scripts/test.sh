#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, runs every test (unit, lit, fuzz smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
# Brief, repeatable libFuzzer runs of the ONNX, safetensors and config readers (clang build in
# build-fuzz/; a fixed seed and input count, so CI is deterministic).
PARALLORA_FUZZ_RUNS="${PARALLORA_FUZZ_RUNS:-20000}" scripts/fuzz.sh
# Unit and lit tests last, so ctest's summary closes the output.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
ctest --preset default -j"$(nproc)"
