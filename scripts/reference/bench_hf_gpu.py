#!/usr/bin/env python3
"""GPU baseline (not a test): Hugging Face transformers + PEFT LoRA training on one GPU.

Llama-3.2-1B's configuration (or any HF config.json) with random weights (torch.manual_seed(0)),
bf16 weights and activations, torch SDPA attention, PEFT LoRA (rank, alpha, all seven linear
projections, no dropout), AdamW (lr 1e-4, fused) over the adapters, labels = input ids (HF's shifted
mean cross-entropy). Random tokens. The first --warmup steps are not timed; reports the median step
time, tokens/s, peak GPU memory (torch.cuda.max_memory_allocated and max_memory_reserved) and, with
--flops-per-token (take it from lora-compile's "FLOP per token" for the same shape, so both sides
count the same work), MFU against --peak-tflops (989 for an H100 SXM, dense bf16).

    python scripts/reference/bench_hf_gpu.py --config models/configs/llama-3.2-1b.json --seq 2048 --batch 4 \\
        --rank 16 --steps 20 --flops-per-token 5.4e9 --json
"""
import argparse
import json
import statistics
import sys
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="HF config.json")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 * rank)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--flops-per-token", type=float, default=0.0)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_hf_gpu: no CUDA device (torch.cuda.is_available() is False)")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_json_file(a.config)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dev = torch.device("cuda")
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha or 2 * a.rank, lora_dropout=0.0,
                                             target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    # fp32 master copies of the adapters (what our backend keeps), bf16 everything else.
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tokens = a.batch * a.seq
    res = {
        "impl": "hf+peft", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "batch": a.batch, "seq": a.seq, "rank": a.rank, "median_step_s": med, "tokens_per_s": tokens / med,
        "peak_mem_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
        "peak_mem_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        "final_loss": float(loss.item()),
    }
    if a.flops_per_token > 0:
        res["mfu"] = a.flops_per_token * tokens / med / (a.peak_tflops * 1e12)
    print(f"hf+peft on {res['device']}: {res['tokens_per_s']:.0f} tokens/s (median step {med * 1e3:.1f} ms), "
          f"peak memory {res['peak_mem_allocated_mib']:.0f} MiB allocated / {res['peak_mem_reserved_mib']:.0f} MiB reserved"
          + (f", MFU {100 * res['mfu']:.1f}%" if "mfu" in res else ""))
    if a.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
