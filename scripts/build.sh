#!/usr/bin/env bash
# Configures (CMake preset "default": Release, Ninja, ccache) and builds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --preset default > build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
grep -E "^-- Parallora:" build-configure.log || true
cmake --build --preset default -- -j"$(nproc)"
