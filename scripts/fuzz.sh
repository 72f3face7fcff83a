#!/usr/bin/env bash
# Builds the libFuzzer targets (every target named fuzz_*: frontend/fuzz for the ONNX, safetensors
# and HF config readers, tests/fuzz for the plan, token file, PEFT adapter and checkpoint readers)
# in a clang build directory and runs each for N seconds (or PARALLORA_FUZZ_RUNS inputs) on its
# seed corpus: generated here for frontend/fuzz, committed in tests/fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh [seconds-per-target]        default 30
#
# Environment: PARALLORA_FUZZ_BUILD_DIR (default build-fuzz), PARALLORA_FUZZ_CXX / _CC
# (default clang++-14 / clang-14), MLIR_DIR (default the Debian LLVM 16 location).
# Exits non-zero when a target crashes; the crashing input is left in <build>/fuzz-artifacts/.
set -euo pipefail

SECONDS_PER_TARGET="${1:-30}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${PARALLORA_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
CXX_BIN="${PARALLORA_FUZZ_CXX:-clang++-14}"
CC_BIN="${PARALLORA_FUZZ_CC:-clang-14}"
MLIR_DIR="${MLIR_DIR:-/usr/lib/llvm-16/lib/cmake/mlir}"

if ! command -v "$CXX_BIN" >/dev/null; then
  echo "fuzz.sh: $CXX_BIN not found; set PARALLORA_FUZZ_CXX to a clang++ with libFuzzer" >&2
  exit 2
fi

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$CC_BIN" -DCMAKE_CXX_COMPILER="$CXX_BIN" -DMLIR_DIR="$MLIR_DIR" \
  -DPARALLORA_ENABLE_FUZZERS=ON -DPARALLORA_BUILD_TESTS=ON -DPARALLORA_ENABLE_CUDA=OFF >/dev/null
mapfile -t TARGETS < <(ninja -C "$BUILD" -t targets all | sed -n 's/^\(fuzz_[A-Za-z0-9_]*\): phony$/\1/p' | sort -u)
if [ "${#TARGETS[@]}" -eq 0 ]; then
  echo "fuzz.sh: no fuzz_* targets configured in $BUILD" >&2
  exit 2
fi
ninja -C "$BUILD" "${TARGETS[@]}"

# ------------------------------------------------------------------ seed corpora
CORPUS="$BUILD/fuzz-corpus"
ARTIFACTS="$BUILD/fuzz-artifacts"
mkdir -p "$CORPUS" "$ARTIFACTS"

# safetensors seeds: a few valid files (metadata, several dtypes, an empty and a scalar
# tensor) and near misses; written with python3's struct so no build product is needed.
seed_safetensors() {
  local dir="$1"
  python3 - "$dir" <<'PY'
import json, struct, sys, os
out = sys.argv[1]
def st(entries, metadata=None, pad=True, data=None):
    header, offset, blob = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, size in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        blob += bytes((offset + i) % 251 for i in range(size))
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + (blob if data is None else data)
seeds = {
    "f32_meta": st([("w", "F32", [2, 3], 24)], {"format": "pt"}),
    "halfs": st([("a", "F16", [4], 8), ("b", "BF16", [2, 2], 8), ("c", "F64", [1], 8)]),
    "ints": st([("i", "I64", [2], 16), ("j", "I32", [1], 4), ("k", "I16", [3], 6),
                ("l", "I8", [1], 1), ("m", "U8", [2], 2), ("n", "BOOL", [1], 1)]),
    "empty_and_scalar": st([("e", "F32", [0, 4], 0), ("s", "F32", [], 4)]),
    "no_tensors": st([], {"k": "v"}),
    "truncated": st([("a", "F32", [4], 16), ("b", "F32", [2], 8)])[:-3],
    "unpadded": st([("w", "F32", [1], 4)], pad=False),
    "short": b"\x08\x00\x00",
    "overlap": (lambda h: struct.pack("<Q", len(h)) + h + bytes(24))(
        b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
        b'"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}'),
}
for name, blob in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(blob)
PY
  # Real files written by Python safetensors, when the fixtures are checked out and small.
  find "$ROOT/tests/fixtures" -name '*.safetensors' -size -64k -exec cp {} "$dir/" \; 2>/dev/null || true
}

seed_hf_config() {
  local dir="$1"
  cp "$ROOT"/models/configs/*.json "$dir/" 2>/dev/null || true
  local i=0
  for f in $(find "$ROOT/tests/fixtures" -name config.json 2>/dev/null); do
    cp "$f" "$dir/fixture_$i.json"; i=$((i + 1))
  done
  printf '{}' >"$dir/empty_object.json"
  printf '{"rope_parameters":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,"original_max_position_embeddings":8192,"rope_theta":500000}}' \
    >"$dir/rope_parameters.json"
}

# ------------------------------------------------------------------ runs
failed=()
summary=()
for target in "${TARGETS[@]}"; do
  dir="$CORPUS/$target"
  mkdir -p "$dir"
  case "$target" in
    fuzz_safetensors) seed_safetensors "$dir" ;;
    fuzz_hf_config) seed_hf_config "$dir" ;;
    fuzz_onnx) cp "$ROOT"/tests/fixtures/fuzz/onnx/*.onnx "$dir/" ;;
  esac
  # Committed seeds (tests/fuzz/make_seeds.py); copied, since libFuzzer adds new inputs to the
  # first corpus directory.
  if [ -d "$ROOT/tests/fuzz/corpus/$target" ]; then cp "$ROOT/tests/fuzz/corpus/$target"/* "$dir/"; fi
  # Plan seeds are whole compiled plans (up to ~23 KiB); other inputs stay small.
  max_len=16384
  case "$target" in fuzz_plan) max_len=32768 ;; esac
  if [ -n "${PARALLORA_FUZZ_RUNS:-}" ]; then what="$PARALLORA_FUZZ_RUNS runs"; else what="${SECONDS_PER_TARGET}s"; fi
  echo "fuzz.sh: $target for $what ($(ls "$dir" | wc -l) corpus files)"
  binary="$(find "$BUILD" -type f -name "$target" -perm -u+x | head -n 1)"
  # PARALLORA_FUZZ_RUNS=N: a fixed number of inputs from a fixed seed (CI: repeatable);
  # otherwise fuzz for SECONDS_PER_TARGET seconds (exploration).
  if [ -n "${PARALLORA_FUZZ_RUNS:-}" ]; then budget=(-runs="$PARALLORA_FUZZ_RUNS" -seed=1); else budget=(-max_total_time="$SECONDS_PER_TARGET"); fi
  t0=$SECONDS
  if ! "$binary" "$dir" "${budget[@]}" \
       -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$ARTIFACTS/$target-" 2>"$BUILD/$target.log"; then
    tail -n 40 "$BUILD/$target.log" >&2
    failed+=("$target")
    crashes=1
  else
    crashes=0
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$BUILD/$target.log" | tail -n 1)"
  summary+=("$(printf '%-20s executions %8s  crashes %d  %4d s' "$target" "${execs:-?}" "$crashes" $((SECONDS - t0)))")
done

echo "fuzz.sh: per target:"
printf '  %s\n' "${summary[@]}"

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in $ARTIFACTS)" >&2
  exit 1
fi
echo "fuzz.sh: all ${#TARGETS[@]} targets ran $what each without a crash"
