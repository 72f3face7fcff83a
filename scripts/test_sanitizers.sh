#!/usr/bin/env bash
# Builds the "asan" preset (ASan + UBSan, -fno-sanitize-recover=undefined, RelWithDebInfo, CPU
# only, build-asan/) and runs, under the sanitizers, the tests that cover every CPU kernel,
# reader and collective: the unit tests of the kernels, the executor, the plan / safetensors /
# token / adapter / checkpoint readers, the training session and the 4-rank MPI communicator,
# plus the lit tests of the tools (train, save, resume, errors; dp/tp/pp under mpirun).
#
#   scripts/test_sanitizers.sh            (scripts/test.sh calls it after the normal tests)
#
# A sanitizer report fails the test it occurs in: UBSan does not recover, ASan stops at the first
# error. LeakSanitizer runs in every process that does not start Open MPI; Open MPI's components
# keep allocations past MPI_Finalize and are unloaded before LSan looks, so their leaks cannot be
# told apart from ours by a suppression, and the mpirun tests run with detect_leaks=0.
# docs/reliability.md "Sanitizers" lists the findings and the measured times.
set -euo pipefail
cd "$(dirname "$0")/.."

UNIT_TESTS=(test_cpu_kernels test_bf16 test_comm test_safetensors test_plan_io test_schedule
            test_weight_init test_runtime_io test_executor test_train_session)
# tests/tools lit tests: one process per rank, no MPI (leaks checked) ...
LIT_SINGLE='lora_compile|lora_run_train|lora_run_errors|lora_run_cuda_nogpu|lora_run_full_disk'
# ... and under mpirun (dp/tp/pp collectives, stops, resumes). lora_run_kill_during_save (20 kill -9
# during saves, ~130 s under ASan) tests durability, not memory, and stays in the normal run only.
LIT_MPI='lora_run_mpi|lora_run_defects|lora_run_bf16|lora_run_metrics|lora_run_onnx_train|recompute|overlap_grad_sync|parallel_equivalence|pipeline_stage_without_adapter|lora_run_stopped_peer'
LIT="python3 /usr/lib/llvm-16/build/utils/lit/lit.py"

ASAN_COMMON="strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

start=$SECONDS
cmake --preset asan >/dev/null
cmake --build --preset asan --target "${UNIT_TESTS[@]}" lora-compile lora-run
built=$SECONDS

# The ctest tests whose command runs one of UNIT_TESTS (gtest cases are named Suite.Case, so the
# selection goes by executable).
select_tests() {
  ctest --preset asan --show-only=json-v1 | python3 -c '
import json, os, re, sys
binaries = set(sys.argv[1:])
names = [t["name"] for t in json.load(sys.stdin)["tests"]
         if any(os.path.basename(a) in binaries for a in t.get("command", []))]
print("^(" + "|".join(re.escape(n) for n in names) + ")$")' "$@"
}
status=0
ASAN_OPTIONS="detect_leaks=1:$ASAN_COMMON" ctest --preset asan -j"$(nproc)" \
  -R "$(select_tests "${UNIT_TESTS[@]/test_comm/}")" || status=1
ASAN_OPTIONS="detect_leaks=0:$ASAN_COMMON" ctest --preset asan -R '^test_comm_mpi4$' || status=1
ASAN_OPTIONS="detect_leaks=1:$ASAN_COMMON" $LIT -s build-asan/tests --filter "tools/($LIT_SINGLE)\.test" || status=1
ASAN_OPTIONS="detect_leaks=0:$ASAN_COMMON" $LIT -s build-asan/tests --filter "tools/($LIT_MPI)\.test" || status=1
echo "test_sanitizers.sh: build $((built - start)) s, tests $((SECONDS - built)) s"
exit $status
