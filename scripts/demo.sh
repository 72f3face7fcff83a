#!/usr/bin/env bash
# The README's main job on a small built-in model: installs dependencies, builds, then compiles the
# tiny LLaMA (ONNX export and HF config) with LoRA, prints the summaries and draws the graph, then
# trains the tiny LLaMA with LoRA on real text on one device, then under every parallel strategy on
# CPU ranks (mpirun) and prints the comparison table of the study's metrics, and ends with a short
# lora-study (table, plots and index.html of five strategies).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
OUT=${1:-out/demo}  # rerunnable: its lora-run calls replace their own earlier runs (--overwrite)
mkdir -p "$OUT"
BIN=build/tools/lora-compile/lora-compile
echo
echo "== 1. HF torch.onnx export of a tiny LlamaForCausalLM (GQA), LoRA r=8 on all linear layers"
$BIN --onnx tests/fixtures/onnx/tiny_llama.onnx --lora-rank 8 --lora-alpha 16 --lora-targets all-linear \
     --dump-ir "$OUT/tiny_llama.mlir" --dump-graph "$OUT/tiny_llama.dot"
echo
echo "== 2. the same model from its HF config.json + safetensors"
$BIN --hf-config tests/fixtures/onnx/tiny_llama.hf/config.json --weights tests/fixtures/onnx/tiny_llama.hf \
     --batch 2 --seq-len 16 --lora-rank 8 --lora-alpha 16 --lora-targets all-linear --dump-ir "$OUT/tiny_llama_hf.mlir"
echo
echo "== 3. a PEFT model exported with its adapters (recognised, not re-injected)"
$BIN --onnx tests/fixtures/onnx/tiny_llama_lora.onnx
echo
echo "== 4. Llama-3.2-1B from its config (random init; no weights needed to compile)"
$BIN --hf-config models/configs/llama-3.2-1b.json --batch 1 --seq-len 2048 --lora-rank 16 --lora-alpha 32 \
     --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
if command -v dot > /dev/null; then
  dot -Tsvg "$OUT/tiny_llama.dot" -o "$OUT/tiny_llama.svg"
  echo
  echo "graph picture: $OUT/tiny_llama.svg"
fi

# ---------------------------------------------------------------------------------------------
echo
echo "== 5. train: LoRA on the tiny LLaMA (random base) over real text, the GPL-3 from Debian's base-files"
TEXT=/usr/share/common-licenses/GPL-3
python3 scripts/tokenize_text.py --byte -o "$OUT/gpl.bin" --val-fraction 0.05 "$TEXT"
$BIN --hf-config models/configs/tiny-llama.json --batch 8 --seq-len 64 --micro-batches 2 \
     --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --lr 3e-3 --warmup 10 --schedule cosine \
     -o "$OUT/plan.lp"
build/tools/lora-run/lora-run --describe "$OUT/plan.lp"
build/tools/lora-run/lora-run "$OUT/plan.lp" --data "$OUT/gpl.bin" --val-data "$OUT/gpl_val.bin" --val-every 50 \
     --steps 200 --log-every 25 --save-every 100 --out "$OUT/train" --overwrite
python3 - "$OUT/train/metrics.jsonl" <<'PY'
import json, sys
val = [json.loads(l) for l in open(sys.argv[1]) if "val_loss" in l]
print(f"validation loss: {val[0]['val_loss']:.4f} before training -> {val[-1]['val_loss']:.4f} after {val[-1]['step']} steps")
if not val[-1]["val_loss"] < val[0]["val_loss"] - 0.1:
    sys.exit("demo: the validation loss did not fall")
PY
echo "PEFT adapter: $OUT/train/adapter (load with peft.PeftModel.from_pretrained)"

echo
echo "== 5b. the same run with --precision bf16 (frozen weights + activations bf16, adapters/optimizer fp32)"
$BIN --hf-config models/configs/tiny-llama.json --batch 8 --seq-len 64 --micro-batches 2 \
     --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --lr 3e-3 --warmup 10 --schedule cosine \
     --precision bf16 -o "$OUT/plan_bf16.lp" | grep -E "memory|plan written"
build/tools/lora-run/lora-run "$OUT/plan_bf16.lp" --data "$OUT/gpl.bin" --val-data "$OUT/gpl_val.bin" --val-every 50 \
     --steps 200 --log-every 100 --out "$OUT/train_bf16" --overwrite
python3 - "$OUT/train/metrics.jsonl" "$OUT/train_bf16/metrics.jsonl" <<'PY'
import json, sys
fp32, bf16 = ([json.loads(l)["val_loss"] for l in open(p) if "val_loss" in l] for p in sys.argv[1:])
print(f"validation loss after 200 steps: fp32 {fp32[-1]:.4f}, bf16 {bf16[-1]:.4f} (rel. diff {abs(bf16[-1] - fp32[-1]) / fp32[-1]:.1e})")
if abs(bf16[-1] - fp32[-1]) > 1e-2 * fp32[-1]:
    sys.exit("demo: bf16 training diverged from fp32")
PY

# ---------------------------------------------------------------------------------------------
echo
echo "== 6. every parallel strategy on CPU ranks (mpirun): the same 30 steps, compared with one device"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
$BIN --hf-config models/configs/tiny-llama-4l.json --batch 8 --seq-len 64 --micro-batches 4 \
     --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --strategy hybrid --dp 2 --tp 2 --pp 2 --schedule 1f1b \
     -o "$OUT/hybrid/plan.lp" --viz "$OUT/hybrid/viz"
mpirun -np 8 build/tools/lora-run/lora-run "$OUT/hybrid/plan.lp" --data "$OUT/gpl.bin" --steps 10 --log-every 5 \
     --threads 1 --out "$OUT/hybrid/train" --overwrite
python3 scripts/compare_strategies.py --build build --config models/configs/tiny-llama-4l.json \
     --data "$OUT/gpl.bin" --val-data "$OUT/gpl_val.bin" --batch 8 --seq-len 64 --steps 30 --out "$OUT/strategies"
echo "plan pictures: $OUT/hybrid/viz/index.html"

# ---------------------------------------------------------------------------------------------
echo
echo "== 7. lora-study: five strategies side by side (study.md, study.json, plots, index.html)"
build/tools/lora-study/lora-study single,dp2,tp2,pp2-1f1b-m4,dp2xtp2xpp2 --hf-config models/configs/tiny-llama-4l.json \
     --data "$OUT/gpl.bin" --val-data "$OUT/gpl_val.bin" --batch 8 --seq-len 64 --steps 30 --out "$OUT/study"
echo "study report: $OUT/study/index.html (table: $OUT/study/study.md)"
