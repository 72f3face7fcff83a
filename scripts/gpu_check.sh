#!/usr/bin/env bash
# Everything that needs a GPU, in one script for a machine that has one (not a test; CI has no GPU).
#
#   scripts/gpu_check.sh [build] [plans] [kernels] [graphs] [equivalence] [trace] [bench] [all]   (default: all)
#
# ON THE LENT GPU MACHINE the project cannot be built (it has CUDA, CMake and PyTorch, but not MLIR,
# OpenBLAS, Open MPI or protobuf, and no network). Build the bundle HERE first:
#     scripts/gpu_bundle.sh            # -> .gpu/bundle.tar.xz (binaries, libraries, Open MPI, plans)
# then in the device tool: run(command="scripts/gpu_check.sh all", carry=[".gpu/bundle.tar.xz"]). With a bundle
# present this script unpacks and uses it (scripts/gpu_env.sh) and skips `build` and `plans`.
#
#   build        configure + build (Release, CUDA) into build-gpu/ with all cores (no bundle only)
#   plans        compile every plan the stages below run into $PLANS_DIR (no bundle only; the
#                bundle carries them, compiled by gpu_bundle.sh through this stage)
#   kernels      ctest -R "Cuda|Nccl": every CUDA kernel against its CPU twin on seeded inputs, f32 and
#                bf16 storage (the *Bf16 cases; bf16 outputs within one bf16 ulp of the largest value);
#                CUDA graph replay vs eager (CudaKernels.Graph*: bit-identical, fallbacks) and the NCCL
#                overlapped buckets (NcclComm.*: start/wait vs blocking all_reduce, bit-identical)
#   graphs       lora-run on the tiny LLaMA with and without --cuda-graphs (fp32, bf16, and a dp2 plan with
#                overlapped gradient buckets on one GPU through the host-staged MPI collectives): the
#                losses must match EXACTLY; [cuda-graphs] capture / fallback lines and the tokens/s of
#                both runs go to graphs/summary.txt
#   equivalence  the tiny LLaMA's 20-step loss curve on GPU vs the CPU backend (rtol 1e-4: both fp32);
#                a tp2 and a pp2 plan on one GPU (host-staged MPI path) vs the single-rank GPU run;
#                --precision bf16: the tiny LLaMA on GPU vs CPU (rtol 2e-4, the bf16 noise band) and
#                the HF parity fixture on GPU vs transformers + PEFT in bf16 (reference_bf16.json)
#   trace        lora-run --backend cuda --trace (kernel times from CUDA events, runtime/cuda/device_timer.h)
#                on the single plan and on the pp2 plan (two ranks on one GPU, host-staged MPI), each
#                validated by tests/tools/check_trace.py (tracks, ordering, nesting, steps, bytes), the
#                pp2 run's --viz viewer by tests/tools/check_viz_trace.py, and the compute kernels'
#                device durations summarized (trace/summary.txt); with 2+ GPUs also dp2 over NCCL, whose
#                overlapped buckets must show "bucket K on the device" slices (NCCL stream events)
#   bench        LoRA r=16 on all linear layers of Llama-3.2-1B (random weights, seq 2048): Parallora
#                vs Hugging Face transformers + PEFT (torch SDPA, bf16) in the same run: tokens/s,
#                peak memory, MFU (same FLOP count for both: lora-compile's FLOP per token)
#
# Results (logs, JSON, a summary) go to $OUT (the device tool's output folder) or out/gpu/.
# Record them with the command, device and date in docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RES="${OUT:-$ROOT/out/gpu}"
mkdir -p "$RES"
BUILD="$ROOT/build-gpu"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
want() { for s in "${STAGES[@]}"; do [ "$s" = "$1" ] || [ "$s" = all ] && return 0; done; return 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
PY="${PARALLORA_REF_PYTHON:-python3}"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } | tee "$RES/device.txt"

BUNDLE=""
if [ -z "${PARALLORA_NO_BUNDLE:-}" ] && [ -f "$ROOT/.gpu/bundle.tar.xz" ]; then
  [ -d "$ROOT/.gpu/bundle" ] || tar -xJf "$ROOT/.gpu/bundle.tar.xz" -C "$ROOT/.gpu"
  BUNDLE="$ROOT/.gpu/bundle"
  # shellcheck source=gpu_env.sh
  source "$ROOT/scripts/gpu_env.sh" "$BUNDLE"
  echo "gpu_check: using the bundle built at commit $(cat "$BUNDLE/COMMIT" 2>/dev/null || echo '?')" | tee -a "$RES/device.txt"
  COMPILE=""
  RUN="$BUNDLE/bin/lora-run"
  PLANS="$BUNDLE/plans"
else
  if want build; then
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPARALLORA_ENABLE_CUDA=ON \
          -DCMAKE_CUDA_ARCHITECTURES=90a > "$RES/configure.log" 2>&1
    cmake --build "$BUILD" -j "$(nproc)" > "$RES/build.log" 2>&1 || { tail -40 "$RES/build.log"; exit 1; }
    echo "gpu_check: built $BUILD"
  fi
  COMPILE="${COMPILE:-$BUILD/tools/lora-compile/lora-compile}"
  RUN="$BUILD/tools/lora-run/lora-run"
  PLANS="${PLANS_DIR:-$RES/plans}"
fi

# Every plan the stages run, in one place (gpu_bundle.sh runs this stage with its own build).
if [ -z "$BUNDLE" ] && want plans; then
  mkdir -p "$PLANS"
  common=(--hf-config models/configs/tiny-llama-4l.json --batch 8 --seq-len 32 --lora-rank 4 --lora-alpha 8
          --lora-targets all-linear --lr 2e-3 --warmup 3 --lr-schedule cosine --weight-decay 0.01)
  {
    "$COMPILE" "${common[@]}" --micro-batches 2 -o "$PLANS/single.lp"
    "$COMPILE" "${common[@]}" --micro-batches 2 --precision bf16 -o "$PLANS/bf16.lp"
    "$COMPILE" "${common[@]}" --micro-batches 2 --dp 2 -o "$PLANS/dp2.lp"
    "$COMPILE" "${common[@]}" --micro-batches 2 --tp 2 -o "$PLANS/tp2.lp"
    "$COMPILE" "${common[@]}" --micro-batches 4 --pp 2 --schedule 1f1b -o "$PLANS/pp2.lp"
    H=tests/fixtures/onnx/tiny_llama.hf
    "$COMPILE" --hf-config "$H/config.json" --weights "$H" --batch 4 --seq-len 16 --micro-batches 2 --lora-rank 4 \
        --lora-alpha 8 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --lr 1e-3 --warmup 5 \
        --lr-schedule cosine --total-steps 20 --weight-decay 0.01 --precision bf16 -o "$PLANS/hf_bf16.lp"
  } > "$PLANS/compile.log"
  # The benchmark: Llama-3.2-1B, LoRA r=16 on all linear layers, batch 4 x 2048 in 2 micro-batches.
  for prec in bf16 fp32; do
    "$COMPILE" --model-size 1B --batch 4 --seq-len 2048 --micro-batches 2 --lora-rank 16 --lora-alpha 32 \
        --lora-targets all-linear --lr 1e-4 --precision $prec -o "$PLANS/bench_1b_$prec.lp" > "$PLANS/bench_1b_$prec.compile.log"
  done
  echo "gpu_check: plans in $PLANS"
fi
for p in single bf16 dp2 tp2 pp2 hf_bf16 bench_1b_bf16; do
  [ -f "$PLANS/$p.lp" ] || { echo "gpu_check: $PLANS/$p.lp missing (run the plans stage, or scripts/gpu_bundle.sh)" >&2; exit 1; }
done
[ "${STAGES[*]}" = plans ] && exit 0
# From here on a failing step is recorded and the next one still runs: a GPU lease is short.
set +e
try() { "$@" || { rc=$?; echo "gpu_check: FAILED (exit $rc): $*" | tee -a "$RES/failures.txt" >&2; }; }

if want kernels; then
  if [ -n "$BUNDLE" ]; then
    { test_cuda_kernels && test_nccl_comm; } > "$RES/kernels.log" 2>&1 && k=ok || k=FAILED
  else
    (cd "$BUILD" && ctest -R "Cuda|Nccl" --output-on-failure -V) > "$RES/kernels.log" 2>&1 && k=ok || k=FAILED
  fi
  grep -E "max abs|max rel|Passed|Failed|Skipped" "$RES/kernels.log" | tail -60
  echo "gpu_check: kernels $k"
  [ "$k" = ok ] || echo "gpu_check: FAILED: kernels (see kernels.log)" >> "$RES/failures.txt"
fi

if want graphs; then
  G="$RES/graphs"; mkdir -p "$G"
  T=tests/fixtures/train/tiny/tokens.bin
  common=(--hf-config models/configs/tiny-llama-4l.json --batch 8 --seq-len 32 --lora-rank 4 --lora-alpha 8
          --lora-targets all-linear --lr 2e-3 --warmup 3 --lr-schedule cosine --weight-decay 0.01)
  for p in single bf16 dp2; do cp "$PLANS/$p.lp" "$G/"; done
  run=(--data "$T" --steps 20 --seed 7 --log-every 1 --backend cuda)
  status=ok
  for plan in single bf16; do
    "$RUN" "$G/$plan.lp" "${run[@]}" --out "$G/${plan}_eager" > "$G/${plan}_eager.log" 2>&1 || status=FAILED
    PARALLORA_CUDA_GRAPHS_VERBOSE=1 "$RUN" "$G/$plan.lp" "${run[@]}" --cuda-graphs --out "$G/${plan}_graphs" \
        > "$G/${plan}_graphs.log" 2>&1 || status=FAILED
  done
  mpirun -np 2 "$RUN" "$G/dp2.lp" "${run[@]}" --out "$G/dp2_eager" > "$G/dp2_eager.log" 2>&1 || status=FAILED
  mpirun -np 2 -x PARALLORA_CUDA_GRAPHS_VERBOSE=1 "$RUN" "$G/dp2.lp" "${run[@]}" --cuda-graphs --out "$G/dp2_graphs" \
      > "$G/dp2_graphs.log" 2>&1 || status=FAILED
  {
    for plan in single bf16 dp2; do
      echo "== $plan: --cuda-graphs vs eager (exact)"
      python3 scripts/compare_losses.py "$G/${plan}_graphs/metrics.jsonl" --against "$G/${plan}_eager/metrics.jsonl" \
          --exact | tail -1 || status=FAILED
      grep -h "\[cuda-graphs\]" "$G/${plan}_graphs.log" | sort | uniq -c || true
      for m in eager graphs; do
        python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print('  $m tokens/s median', s.get('tokens_per_s_median'))" \
            "$G/${plan}_$m/summary.json" 2>/dev/null || true
      done
    done
    [ "$status" = ok ] || echo "gpu_check: FAILED: graphs (see graphs/)" >> "$RES/failures.txt"
    echo "gpu_check: graphs $status (expect: micro_step captured for single/bf16, optimizer_step and dp2's"
    echo "  micro_step (all_reduce_start) running eagerly, losses identical)"
  } 2>&1 | tee "$G/summary.txt"
fi

if want equivalence; then
  E="$RES/equiv"; mkdir -p "$E"
  T=tests/fixtures/train/tiny/tokens.bin
  common=(--hf-config models/configs/tiny-llama-4l.json --batch 8 --seq-len 32 --lora-rank 4 --lora-alpha 8
          --lora-targets all-linear --lr 2e-3 --warmup 3 --lr-schedule cosine --weight-decay 0.01)
  for p in single tp2 pp2 bf16 hf_bf16; do cp "$PLANS/$p.lp" "$E/"; done
  run=(--data "$T" --steps 20 --seed 7 --log-every 20)
  try "$RUN" "$E/single.lp" "${run[@]}" --backend cpu --out "$E/cpu" > "$E/cpu.log" 2>&1
  try "$RUN" "$E/single.lp" "${run[@]}" --backend cuda --out "$E/gpu" > "$E/gpu.log" 2>&1
  try mpirun -np 2 "$RUN" "$E/tp2.lp" "${run[@]}" --backend cuda --out "$E/gpu_tp2" > "$E/gpu_tp2.log" 2>&1
  try mpirun -np 2 "$RUN" "$E/pp2.lp" "${run[@]}" --backend cuda --out "$E/gpu_pp2" > "$E/gpu_pp2.log" 2>&1
  try "$RUN" "$E/bf16.lp" "${run[@]}" --backend cpu --out "$E/cpu_bf16" > "$E/cpu_bf16.log" 2>&1
  try "$RUN" "$E/bf16.lp" "${run[@]}" --backend cuda --out "$E/gpu_bf16" > "$E/gpu_bf16.log" 2>&1
  try "$RUN" "$E/hf_bf16.lp" --data "$T" --no-shuffle --steps 20 --init-adapter tests/fixtures/train/tiny/adapter_init \
      --backend cuda --out "$E/gpu_hf_bf16" > "$E/gpu_hf_bf16.log" 2>&1
  {
    for r in gpu gpu_tp2 gpu_pp2; do
      echo "== $r vs cpu"
      python3 scripts/compare_losses.py "$E/$r/metrics.jsonl" --against "$E/cpu/metrics.jsonl" --rtol 1e-4 | tail -1
    done
    echo "== gpu_bf16 vs cpu_bf16"
    python3 scripts/compare_losses.py "$E/gpu_bf16/metrics.jsonl" --against "$E/cpu_bf16/metrics.jsonl" --rtol 2e-4 | tail -1
    echo "== gpu_hf_bf16 vs transformers + PEFT bf16"
    python3 scripts/compare_losses.py "$E/gpu_hf_bf16/metrics.jsonl" \
        --reference tests/fixtures/train/tiny/reference_bf16.json --rtol 2e-4 | tail -1
  } 2>&1 | tee "$E/summary.txt"
fi

if want trace; then
  TR="$RES/trace"; mkdir -p "$TR"
  T=tests/fixtures/train/tiny/tokens.bin
  run=(--data "$T" --steps 4 --seed 7 --backend cuda)
  status=ok
  "$RUN" "$PLANS/single.lp" "${run[@]}" --out "$TR/single" --trace "$TR/single/trace.json" > "$TR/single.log" 2>&1 || status=FAILED
  mpirun -np 2 "$RUN" "$PLANS/pp2.lp" "${run[@]}" --out "$TR/pp2" --trace "$TR/pp2/trace.json" --viz "$TR/pp2/viz" \
      > "$TR/pp2.log" 2>&1 || status=FAILED
  ngpu="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  if [ "${ngpu:-0}" -ge 2 ]; then
    mpirun -np 2 "$RUN" "$PLANS/dp2.lp" "${run[@]}" --collectives nccl --out "$TR/dp2_nccl" --trace "$TR/dp2_nccl/trace.json" \
        > "$TR/dp2_nccl.log" 2>&1 || status=FAILED
  fi
  {
    echo "== single: check_trace"; python3 tests/tools/check_trace.py "$TR/single/trace.json" --ranks 1 --steps 4 || status=FAILED
    echo "== pp2: check_trace"
    python3 tests/tools/check_trace.py "$TR/pp2/trace.json" --ranks 2 --steps 4 --expect-comm send recv || status=FAILED
    echo "== pp2: the viewer's measured timeline"
    python3 tests/tools/check_viz_trace.py "$TR/pp2/viz/index.html" "$TR/pp2/trace.json" "$TR/pp2/summary.json" --ranks 2 \
        --pp 2 --micro-batches 4 || status=FAILED
    grep -h -A3 "^trace:" "$TR/single.log" "$TR/pp2.log" || status=FAILED
    # The compute kernels' device durations: many distinct, mostly non-zero values (CUDA events),
    # every kernel inside its program span (check_trace checks the nesting).
    python3 - "$TR/single/trace.json" "$TR/pp2/trace.json" <<'PYEOF' || status=FAILED
import json, statistics, sys
bad = 0
for path in sys.argv[1:]:
    ev = json.load(open(path))["traceEvents"]
    k = [e["dur"] for e in ev if e.get("ph") == "X" and e.get("cat") == "compute"]
    nz = sum(1 for d in k if d > 0)
    print(f"{path}: {len(k)} compute kernels, {nz} with a non-zero device time, median {statistics.median(k):.2f} us, "
          f"max {max(k):.1f} us, {len(set(k))} distinct durations")
    bad += len(k) == 0 or nz < 0.9 * len(k)
sys.exit(1 if bad else 0)
PYEOF
    if [ -f "$TR/dp2_nccl/trace.json" ]; then
      echo "== dp2 over NCCL: check_trace and the buckets' device slices"
      python3 tests/tools/check_trace.py "$TR/dp2_nccl/trace.json" --ranks 2 --steps 4 || status=FAILED
      python3 -c "import json,sys; ev=json.load(open(sys.argv[1]))['traceEvents']; n=sum(1 for e in ev if e.get('cat')=='bucket_device' and e['ph']=='b'); print('bucket_device slices:', n); sys.exit(0 if n else 1)" \
          "$TR/dp2_nccl/trace.json" || status=FAILED
    else
      echo "== dp2 over NCCL: skipped (needs 2 GPUs; found ${ngpu:-0})"
    fi
    [ "$status" = ok ] || echo "gpu_check: FAILED: trace (see trace/)" >> "$RES/failures.txt"
    echo "gpu_check: trace $status"
  } 2>&1 | tee "$TR/summary.txt"
fi

if want bench; then
  B="$RES/bench"; mkdir -p "$B"
  SEQ=2048 BATCH=4 MICRO=2 STEPS=10
  # Random llama-3 tokens in llm.c's uint32 format, enough for the steps.
  python3 - "$B/tokens.bin" $((SEQ * BATCH * (STEPS + 2))) <<'PY'
import random, struct, sys
n = int(sys.argv[2]); random.seed(0)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240801, 7, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}I", *(random.randrange(128256) for _ in range(n))))
PY
  # The plan (bf16: frozen weights + activations bf16, as HF's bf16 model) was compiled with
  # --batch $BATCH --seq-len $SEQ --micro-batches $MICRO (plans stage).
  cp "$PLANS/bench_1b_bf16.lp" "$B/plan.lp"
  cp "$PLANS/bench_1b_bf16.compile.log" "$B/compile.log"
  FPT=$(grep -o '([0-9]* FLOP per token)' "$B/compile.log" | tr -dc 0-9)
  try "$RUN" "$B/plan.lp" --data "$B/tokens.bin" --steps $STEPS --backend cuda --profile --log-every 1 \
      --out "$B/ours" 2>&1 | tee "$B/ours.log"
  try "$PY" scripts/reference/bench_hf_gpu.py --config models/configs/llama-3.2-1b.json --seq $SEQ --batch $BATCH \
      --rank 16 --steps $STEPS --flops-per-token "$FPT" --json 2>&1 | tee "$B/hf.log"
  python3 - "$B" <<'PY'
import json, sys
b = sys.argv[1]
ours = json.load(open(f"{b}/ours/summary.json"))
hf = json.loads([l for l in open(f"{b}/hf.log") if l.startswith("{")][-1])
t_o, t_h = ours["tokens_per_s_median"], hf["tokens_per_s"]
m_o = ours.get("gpu_peak_mem_mib") or ours.get("peak_rss_mib")
m_h = hf["peak_mem_reserved_mib"]
print(f"tokens/s: ours {t_o:.0f}, hf+peft {t_h:.0f}, ratio {t_o / t_h:.2f}x (target >= 1.5x)")
print(f"peak memory MiB: ours {m_o:.0f}, hf+peft {m_h:.0f} reserved, ratio {m_o / m_h:.2f}x (target <= 0.7x)")
print(f"MFU: ours {ours.get('mfu')}, hf+peft {hf.get('mfu')}")
PY
fi

if [ -s "$RES/failures.txt" ]; then
  echo "gpu_check: some steps failed:"; cat "$RES/failures.txt"; exit 1
fi
echo "gpu_check: done (results in $RES)"
