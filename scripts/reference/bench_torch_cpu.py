#!/usr/bin/env python3
"""CPU baseline: PyTorch eager + PEFT LoRA fine-tuning step time on a random LLaMA.

Builds a LlamaForCausalLM with random weights (torch.manual_seed(0)) from the command-line shape,
wraps it in PEFT LoRA on all seven linear projections (q/k/v/o/gate/up/down, alpha = 2 * rank,
no dropout), and times full training steps in float32 on CPU: forward with labels (HF's shifted
mean cross-entropy), backward, AdamW (lr 1e-4, weight decay 0.01), zero_grad. Tokens are random.
The first --warmup steps are not timed. Reports the median step time, tokens/s (batch * seq per
step) and the process's peak RSS (resource.getrusage ru_maxrss; rss_after_imports_mib is the same
figure taken before the model is built, i.e. what importing torch/transformers/peft costs).

    ~/.venvs/parallora-ref/bin/python scripts/reference/bench_torch_cpu.py --layers 4 --hidden 256 \\
        --heads 4 --kv-heads 4 --intermediate 688 --vocab 1024 --seq 256 --batch 4 --rank 16 \\
        --steps 10 --threads 2 --json

--save-config DIR writes the model's HF config.json so the C++ side can build the same shape.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_config(a):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads,
                       num_key_value_heads=a.kv_heads, max_position_embeddings=max(a.seq, 256),
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                       attn_implementation=a.attn, dtype="float32")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 * rank)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--save-config", metavar="DIR", help="write the model's HF config.json to DIR")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the results")
    a = ap.parse_args()
    alpha = a.alpha if a.alpha is not None else 2 * a.rank

    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    cfg = make_config(a)
    if a.save_config:
        os.makedirs(a.save_config, exist_ok=True)
        cfg.save_pretrained(a.save_config)

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    # Peak RSS before any model exists: the libraries alone (a CUDA build of torch maps a lot).
    import_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    lcfg = LoraConfig(r=a.rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    gen = torch.Generator().manual_seed(1)
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= a.warmup:
            times.append(dt)

    step_s = statistics.median(times)
    tokens = a.batch * a.seq
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    import peft
    import transformers
    res = {
        "impl": "torch+peft", "tokens_per_s_median": tokens / step_s, "step_s_median": step_s,
        "step_s_min": min(times), "step_s_max": max(times), "peak_rss_mib": peak_rss_mib,
        "rss_after_imports_mib": import_rss_mib,
        "threads": threads, "steps": a.steps, "warmup": a.warmup, "tokens_per_step": tokens,
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads,
        "intermediate": a.intermediate, "vocab": a.vocab, "seq": a.seq, "batch": a.batch,
        "rank": a.rank, "alpha": alpha, "attn": a.attn, "dtype": "float32",
        "params_total": n_total, "params_trainable": n_trainable,
        "loss_first": losses[0], "loss_last": losses[-1],
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    print(f"torch+peft CPU fp32 ({a.attn}, {threads} threads): {a.layers}L h{a.hidden} "
          f"heads {a.heads}/{a.kv_heads} ffn {a.intermediate} vocab {a.vocab}, batch {a.batch}x{a.seq}, "
          f"LoRA r{a.rank}: median step {step_s * 1e3:.1f} ms, {tokens / step_s:.0f} tokens/s, "
          f"peak RSS {peak_rss_mib:.0f} MiB ({import_rss_mib:.0f} MiB after imports)", file=sys.stderr if a.json else sys.stdout)
    if a.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
