#!/usr/bin/env bash
# CPU benchmark (not a test): one LoRA training step of a small random LLaMA, Parallora vs
# PyTorch eager + PEFT, on the same machine in one run.
#
#   scripts/bench_cpu.sh [--threads N] [--repeats R] [--shape small|large] [--keep DIR]
#
# Shape: 4 layers, hidden 256, 4 heads (4 kv heads), intermediate 688, vocab 1024, batch 4 x seq 256
# (1024 tokens per step), LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, AdamW lr 1e-4, fp32.
# --shape large: 8 layers, hidden 512, 8 heads (8 kv heads), intermediate 1376, batch 2 x seq 512.
# Both sides use weight decay 0.01 and no gradient clipping (what bench_torch_cpu.py does).
#
# The HF config.json comes from the torch script (--save-config), so both sides build the same
# model. The two implementations are run alternately (ours, torch, ours, torch, ...) R times
# (default 3) so that background load hits both alike; each run reports its own median step
# (ours: lora-run --steps 12, first step excluded; torch: 2 warmup + 10 timed steps), and the table
# shows the median over the R runs. Also prints the per-op profile of our median run.
#
# Needs the build (scripts/build.sh) and, for the torch side, the reference venv
# (scripts/install_deps.sh --reference); without the venv only our side runs, and the same
# config.json is written with plain python3 instead of --save-config.
# --keep DIR keeps the work files (plan, runs, JSON) in DIR instead of a temporary folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS="$(nproc)"
REPEATS=3
KEEP=""
SHAPE=small
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    --shape) SHAPE="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_cpu: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

BUILD="${BUILD_DIR:-$ROOT/build}"
COMPILE="$BUILD/tools/lora-compile/lora-compile"
RUN="$BUILD/tools/lora-run/lora-run"
PY="${PARALLORA_REF_PYTHON:-$HOME/.venvs/parallora-ref/bin/python}"
for b in "$COMPILE" "$RUN"; do
  [ -x "$b" ] || { echo "bench_cpu: $b not found; build first (scripts/build.sh)" >&2; exit 1; }
done

LAYERS=4 HIDDEN=256 HEADS=4 KV_HEADS=4 INTER=688 VOCAB=1024 SEQ=256 BATCH=4 RANK=16 ALPHA=32
case "$SHAPE" in
  small) ;;
  large) LAYERS=8 HIDDEN=512 HEADS=8 KV_HEADS=8 INTER=1376 SEQ=512 BATCH=2 ;;
  *) echo "bench_cpu: --shape $SHAPE: choose small or large" >&2; exit 2 ;;
esac
OUR_STEPS=12 TORCH_STEPS=10
TARGETS=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj

if [ -n "$KEEP" ]; then WORK="$KEEP"; mkdir -p "$WORK"; else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench_cpu.XXXXXX")"; trap 'rm -rf "$WORK"' EXIT
fi

HAVE_TORCH=1
if [ ! -x "$PY" ] || ! "$PY" -c 'import torch, transformers, peft' >/dev/null 2>&1; then
  HAVE_TORCH=0
  echo "bench_cpu: reference venv $PY (torch, transformers, peft) not found;" >&2
  echo "  install it with: scripts/install_deps.sh --reference" >&2
  echo "  running Parallora only." >&2
fi

TORCH_ARGS=(--layers $LAYERS --hidden $HIDDEN --heads $HEADS --kv-heads $KV_HEADS
            --intermediate $INTER --vocab $VOCAB --seq $SEQ --batch $BATCH --rank $RANK
            --alpha $ALPHA --steps $TORCH_STEPS --threads "$THREADS" --json)

echo "bench_cpu: ${LAYERS}L h$HIDDEN heads $HEADS/$KV_HEADS ffn $INTER vocab $VOCAB, batch ${BATCH}x$SEQ," \
     "LoRA r$RANK alpha $ALPHA on 7 projections, AdamW; threads $THREADS, repeats $REPEATS"
echo "  machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "  load before: $(uptime)"

# 1. the model's HF config (from the torch script, so both sides build the same LlamaConfig).
if [ "$HAVE_TORCH" = 1 ]; then
  "$PY" "$ROOT/scripts/reference/bench_torch_cpu.py" "${TORCH_ARGS[@]}" --steps 1 --warmup 0 \
      --save-config "$WORK/model" >/dev/null 2>"$WORK/save-config.log" \
    || { cat "$WORK/save-config.log" >&2; exit 1; }
else
  mkdir -p "$WORK/model"
  python3 - "$WORK/model/config.json" <<EOF
import json, sys
json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": $VOCAB,
           "hidden_size": $HIDDEN, "intermediate_size": $INTER, "num_hidden_layers": $LAYERS,
           "num_attention_heads": $HEADS, "num_key_value_heads": $KV_HEADS, "head_dim": $HIDDEN // $HEADS,
           "max_position_embeddings": max($SEQ, 256), "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32"},
          open(sys.argv[1], "w"), indent=2)
EOF
fi

# 2. random tokens < VOCAB as an llm.c file (256 int32 header: magic, version, count; uint16 tokens).
python3 - "$WORK/tokens.bin" <<EOF
import random, struct, sys
n = $BATCH * $SEQ * ($OUR_STEPS + 4) + 1
rng = random.Random(0)
toks = [rng.randrange($VOCAB) for _ in range(n)]
hdr = [0] * 256
hdr[0], hdr[1], hdr[2] = 20240520, 1, n
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", *hdr))
    f.write(struct.pack("<%dH" % n, *toks))
EOF

# 3. compile the plan (random init: no --weights).
"$COMPILE" --hf-config "$WORK/model/config.json" --batch $BATCH --seq-len $SEQ \
    --lora-rank $RANK --lora-alpha $ALPHA --lora-targets $TARGETS --lr 1e-4 \
    --weight-decay 0.01 --max-grad-norm 0 -o "$WORK/plan.lp" >"$WORK/compile.log" 2>&1 \
  || { cat "$WORK/compile.log" >&2; exit 1; }

# 4. alternate ours / torch.
for i in $(seq 1 "$REPEATS"); do
  rm -rf "$WORK/run$i"  # each run starts from an empty --out (matters with --keep)
  "$RUN" "$WORK/plan.lp" --data "$WORK/tokens.bin" --steps $OUR_STEPS --threads "$THREADS" \
      --out "$WORK/run$i" --profile >"$WORK/run$i.log" 2>&1 \
    || { cat "$WORK/run$i.log" >&2; exit 1; }
  ours="$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["tokens_per_s_median"])' "$WORK/run$i/summary.json")"
  line="  run $i: parallora $ours tok/s"
  if [ "$HAVE_TORCH" = 1 ]; then
    "$PY" "$ROOT/scripts/reference/bench_torch_cpu.py" "${TORCH_ARGS[@]}" \
        >"$WORK/torch$i.json" 2>"$WORK/torch$i.log" \
      || { cat "$WORK/torch$i.log" >&2; exit 1; }
    tail -n 1 "$WORK/torch$i.json" >"$WORK/torch$i.json.tmp" && mv "$WORK/torch$i.json.tmp" "$WORK/torch$i.json"
    th="$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["tokens_per_s_median"])' "$WORK/torch$i.json")"
    line="$line, torch+peft $th tok/s"
  fi
  echo "$line"
done
echo "  load after: $(uptime)"
[ "$HAVE_TORCH" = 1 ] && "$PY" -c 'import torch, transformers, peft; print(f"  torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")' 2>/dev/null

# 5. table and profile.
python3 - "$WORK" "$REPEATS" "$HAVE_TORCH" "$BATCH" "$SEQ" <<'EOF'
import json, os, statistics, sys
work, repeats, have_torch = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
tokens = int(sys.argv[4]) * int(sys.argv[5])

def step_times(metrics):
    rows = [json.loads(l) for l in open(metrics) if l.strip()]
    return [r["step_time_s"] for r in rows if "step_time_s" in r][1:]  # first step excluded

ours = [json.load(open(f"{work}/run{i}/summary.json")) for i in range(1, repeats + 1)]
ours_tps = [s["tokens_per_s_median"] for s in ours]
ours_step = [statistics.median(step_times(f"{work}/run{i}/metrics.jsonl")) for i in range(1, repeats + 1)]
rows = [("parallora", ours_tps, ours_step, max(s["peak_rss_mib"] for s in ours))]
if have_torch:
    th = [json.load(open(f"{work}/torch{i}.json")) for i in range(1, repeats + 1)]
    rows.append(("torch+peft", [t["tokens_per_s_median"] for t in th], [t["step_s_median"] for t in th],
                 max(t["peak_rss_mib"] for t in th)))
    imp = statistics.median(t["rss_after_imports_mib"] for t in th)

print()
print(f"| impl | tokens/s (median of {repeats}) | per run | step time | peak RSS |")
print("|---|---:|---|---:|---:|")
for name, tps, st, rss in rows:
    per = ", ".join(f"{x:.0f}" for x in tps)
    print(f"| {name} | {statistics.median(tps):.0f} | {per} | {statistics.median(st) * 1e3:.1f} ms | {rss:.0f} MiB |")
if have_torch:
    r = statistics.median(rows[0][1]) / statistics.median(rows[1][1])
    print(f"\nratio ours/torch (tokens/s): {r:.2f}x  (torch peak RSS includes {imp:.0f} MiB for importing torch/transformers/peft)")

# profile of our median run
order = sorted(range(repeats), key=lambda i: ours_tps[i])
mid = order[len(order) // 2]
prof = ours[mid].get("profile", {})
total = sum(v["seconds"] for v in prof.values())
nsteps = ours[mid]["steps"]
print(f"\nparallora per-op profile (run {mid + 1}, {nsteps} steps, kernel time {total:.2f} s, "
      f"{total / nsteps * 1e3:.0f} ms/step):")
print("| op | s/step | share | calls/step | GFLOP/s |")
print("|---|---:|---:|---:|---:|")
for op, v in sorted(prof.items(), key=lambda kv: -kv[1]["seconds"])[:10]:
    gf = f"{v['flops'] / v['seconds'] / 1e9:.1f}" if v.get("flops") else "-"
    print(f"| {op} | {v['seconds'] / nsteps * 1e3:.1f} ms | {100 * v['seconds'] / total:.1f}% | "
          f"{v['calls'] // nsteps} | {gf} |")
EOF
