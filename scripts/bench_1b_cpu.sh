#!/usr/bin/env bash
# Llama-3.2-1B LoRA training on CPU (benchmark, not a test): Parallora fp32 and bf16, a 2-rank
# mesh, and transformers + PEFT fp32 and bf16, from the same weights, adapter init and tokens.
#
#   scripts/bench_1b_cpu.sh [--dir DIR] [--threads N] [--steps S] [--mesh tp|pp] [--only LIST]
#
# Shape: random Llama-3.2-1B (models/configs/llama-3.2-1b.json), batch 1 x seq 512, LoRA r=16
# alpha=32 on all 7 linear projections, AdamW lr 1e-4, weight decay 0.01, clipping at 1.0,
# constant LR, S steps (default 3). DIR (default /tmp/bench_1b, about 5 GB) holds what
# scripts/reference/bench_1b_cpu.py --prepare writes: model/ (safetensors from transformers),
# adapter_init/ (PEFT's, with random lora_B) and tokens.bin; it is made once and reused.
# The pieces run one after another (each holds the 5 GB model): ours fp32, ours bf16, ours on a
# 2-rank mesh (--mesh tp: tensor parallel 2, default; pp: two pipeline stages), torch fp32,
# torch bf16. --only takes a comma list of those names (fp32,bf16,mesh,torch-fp32,torch-bf16).
# Prints per-step losses, the relative difference to torch fp32, tokens/s (median step) and
# peak RSS, side by side. Needs ~12 GiB of free memory (checked first) and the reference venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR=/tmp/bench_1b THREADS="$(nproc)" STEPS=3 MESH=tp ONLY="fp32,bf16,mesh,torch-fp32,torch-bf16"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --mesh) MESH="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_1b_cpu: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$MESH" in tp|pp) ;; *) echo "bench_1b_cpu: --mesh must be tp or pp, not '$MESH'" >&2; exit 2 ;; esac

BUILD="${BUILD_DIR:-$ROOT/build}"
COMPILE="$BUILD/tools/lora-compile/lora-compile"
RUN="$BUILD/tools/lora-run/lora-run"
PY="${PARALLORA_REF_PYTHON:-$HOME/.venvs/parallora-ref/bin/python}"
REF="$ROOT/scripts/reference/bench_1b_cpu.py"
for b in "$COMPILE" "$RUN"; do
  [ -x "$b" ] || { echo "bench_1b_cpu: $b not found; build first (scripts/build.sh)" >&2; exit 1; }
done
"$PY" -c 'import torch, transformers, peft' >/dev/null 2>&1 || {
  echo "bench_1b_cpu: reference venv $PY (torch, transformers, peft) not found; install it with scripts/install_deps.sh --reference" >&2
  exit 1; }
avail_gib=$(free -g | awk '/^Mem:/ {print $7}')
if [ "$avail_gib" -lt 12 ]; then
  echo "bench_1b_cpu: only ${avail_gib} GiB of memory available, need about 12 (free -g)" >&2; exit 1
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

echo "bench_1b_cpu: Llama-3.2-1B, batch 1 x 512, LoRA r16 all-linear, $STEPS steps, threads $THREADS, dir $DIR"
echo "  machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/ {print $2}') GiB"
echo "  load before: $(uptime)"
if [ ! -f "$DIR/tokens.bin" ] || [ ! -f "$DIR/adapter_init/adapter_model.safetensors" ]; then
  "$PY" "$REF" --prepare "$DIR" --steps "$STEPS" --seq 512 >"$DIR.prepare.log" 2>&1 \
    || { cat "$DIR.prepare.log" >&2; exit 1; }
fi
OUT="$DIR/runs"; mkdir -p "$OUT"
LORA=(--hf-config "$DIR/model/config.json" --batch 1 --seq-len 512 --lora-rank 16 --lora-alpha 32
      --lora-targets all-linear --lr 1e-4 --weight-decay 0.01 --max-grad-norm 1.0)
RUNARGS=(--weights "$DIR/model" --init-adapter "$DIR/adapter_init" --data "$DIR/tokens.bin" --no-shuffle
         --steps "$STEPS" --threads "$THREADS")

ours() {  # name, extra lora-compile flags..., -- launcher...
  local name="$1"; shift
  local flags=(); while [ "$1" != "--" ]; do flags+=("$1"); shift; done; shift
  "$COMPILE" "${LORA[@]}" "${flags[@]}" -o "$OUT/$name.lp" >"$OUT/$name.compile.log" 2>&1 \
    || { cat "$OUT/$name.compile.log" >&2; exit 1; }
  rm -rf "${OUT:?}/$name"
  echo "  running $name ($(date -u +%H:%M:%S))"
  "$@" "$RUN" "$OUT/$name.lp" "${RUNARGS[@]}" --out "$OUT/$name" >"$OUT/$name.log" 2>&1 \
    || { cat "$OUT/$name.log" >&2; exit 1; }
}
torch() {  # dtype
  echo "  running torch-$1 ($(date -u +%H:%M:%S))"
  "$PY" "$REF" --train "$DIR" --dtype "$1" --steps "$STEPS" --seq 512 --threads "$THREADS" \
      >"$OUT/torch-$1.json" 2>"$OUT/torch-$1.log" || { cat "$OUT/torch-$1.log" >&2; exit 1; }
  tail -n 1 "$OUT/torch-$1.json" >"$OUT/torch-$1.json.tmp" && mv "$OUT/torch-$1.json.tmp" "$OUT/torch-$1.json"
}

want fp32 && ours fp32 --
want bf16 && ours bf16 --precision bf16 --
if want mesh; then
  # two ranks share the cores: each gets half of them
  half=$(( THREADS > 1 ? THREADS / 2 : 1 ))
  RUNARGS[-1]="$half"
  if [ "$MESH" = tp ]; then ours mesh --strategy tensor --tp 2 -- mpirun -np 2
  else ours mesh --strategy pipeline --pp 2 -- mpirun -np 2; fi
  RUNARGS[-1]="$THREADS"
fi
want torch-fp32 && torch fp32
want torch-bf16 && torch bf16
echo "  load after: $(uptime)"

python3 - "$OUT" "$STEPS" "$MESH" <<'EOF'
import json, os, statistics, sys
out, steps, mesh = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {}
for name in ["fp32", "bf16", "mesh"]:
    d = os.path.join(out, name)
    if not os.path.exists(os.path.join(d, "summary.json")):
        continue
    s = json.load(open(os.path.join(d, "summary.json")))
    m = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()]
    losses = [r["loss"] for r in m if "step_time_s" in r]
    st = [r["step_time_s"] for r in m if "step_time_s" in r]
    label = {"fp32": "parallora fp32", "bf16": "parallora bf16", "mesh": f"parallora fp32 {mesh}2 (2 ranks)"}[name]
    rows[name] = (label, losses, statistics.median(st), s.get("peak_rss_mib"))
for dt in ["fp32", "bf16"]:
    p = os.path.join(out, f"torch-{dt}.json")
    if os.path.exists(p):
        t = json.load(open(p))
        rows["torch-" + dt] = (f"torch+peft {dt}", t["losses"], t["step_s_median"], t["peak_rss_mib"])
        vers = f"torch {t['torch']}, transformers {t['transformers']}, peft {t['peft']}, Python {t['python']}"
ref = rows.get("torch-fp32")
print()
print("| run | " + " | ".join(f"loss step {i + 1}" for i in range(steps)) +
      " | max rel. diff vs torch fp32 | step time (median) | tokens/s | peak RSS |")
print("|---|" + "---:|" * steps + "---:|---:|---:|---:|")
for key in ["fp32", "mesh", "torch-fp32", "bf16", "torch-bf16"]:
    if key not in rows:
        continue
    label, losses, st, rss = rows[key]
    rel = "-" if ref is None else "%.1e" % max(abs(a - b) / abs(b) for a, b in zip(losses, ref[1]))
    rss_s = "-" if rss is None else f"{rss / 1024:.2f} GiB"
    print(f"| {label} | " + " | ".join(f"{l:.6f}" for l in losses) +
          f" | {rel} | {st:.1f} s | {512 / st:.1f} | {rss_s} |")
if "fp32" in rows and "mesh" in rows:
    d = max(abs(a - b) / abs(b) for a, b in zip(rows["mesh"][1], rows["fp32"][1]))
    print(f"\n{mesh}2 vs single-device fp32: max relative loss difference {d:.1e}")
if "bf16" in rows and "torch-bf16" in rows:
    d = max(abs(a - b) / abs(b) for a, b in zip(rows["bf16"][1], rows["torch-bf16"][1]))
    print(f"parallora bf16 vs torch+peft bf16: max relative loss difference {d:.1e}")
for a, b in [("fp32", "torch-fp32"), ("bf16", "torch-bf16")]:
    if a in rows and b in rows:
        print(f"tokens/s ratio {a}: ours/torch = {rows[b][2] / rows[a][2]:.2f}x; peak RSS ours/torch = "
              f"{rows[a][3] / rows[b][3]:.2f}x")
if ref:
    print("versions:", vers)
EOF
