#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, runs every test (unit, lit, fuzz smoke,
# sanitizers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
# Brief, repeatable libFuzzer runs of every reader (ONNX, safetensors, HF config, plan, token
# files, PEFT adapters, checkpoints; clang build in build-fuzz/; a fixed seed and input count, so
# CI is deterministic).
PARALLORA_FUZZ_RUNS="${PARALLORA_FUZZ_RUNS:-20000}" scripts/fuzz.sh
# Unit and lit tests.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
ctest --preset default -j"$(nproc)"
# The kernels, readers, collectives and tools again under ASan + UBSan (build-asan/; about 10 min
# of a 2-core machine, docs/reliability.md "Sanitizers"). PARALLORA_SANITIZERS=0 skips it.
if [ "${PARALLORA_SANITIZERS:-1}" != 0 ]; then
  scripts/test_sanitizers.sh
fi
