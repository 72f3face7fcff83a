#!/usr/bin/env python3
"""Llama-3.2-1B LoRA on CPU: the transformers + PEFT side of scripts/bench_1b_cpu.sh.

--prepare DIR writes what both sides start from (about 5 GB, not committed):
    DIR/model/              random Llama-3.2-1B (models/configs/llama-3.2-1b.json, torch.manual_seed(0),
                            float32) saved by transformers as model.safetensors + config.json
    DIR/adapter_init/       PEFT LoRA r=16 alpha=32 on q,k,v,o,gate,up,down (save_pretrained): lora_A
                            keeps PEFT's kaiming-uniform init under torch.manual_seed(0); every lora_B is
                            normal(0, 0.02) from a fixed generator (PEFT's zero B would leave lora_A's
                            gradient zero at step 1 and the adapter out of the first losses), as in
                            scripts/reference/make_train_fixtures.py
    DIR/tokens.bin          llm.c uint32 token file (magic 20240801, version 7): STEPS * SEQ random tokens < vocab

--train DIR --dtype fp32|bf16 trains STEPS optimizer steps of batch 1 x SEQ from those files and
prints one JSON line: per-step losses, step times, tokens/s (median step), peak RSS. The recipe is
lora-compile's: sequence s = tokens[s*SEQ:(s+1)*SEQ], input_ids = labels (HF shifts), mean loss,
clip_grad_norm_(1.0), AdamW(lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01), constant LR.
bf16 is HF's usual mixed-precision LoRA: the base model in bfloat16 (torch_dtype), PEFT's adapters
in float32 (autocast_adapter_dtype=True).

    ~/.venvs/parallora-ref/bin/python scripts/reference/bench_1b_cpu.py --prepare /tmp/b1b
    ~/.venvs/parallora-ref/bin/python scripts/reference/bench_1b_cpu.py --train /tmp/b1b --dtype fp32 --threads 2
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import time

import numpy as np
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 16, 32
LR, BETAS, EPS, WD, MAX_NORM = 1e-4, (0.9, 0.999), 1e-8, 0.01, 1.0
MAGIC_U32, VERSION = 20240801, 7  # llm.c: uint32 tokens are version 7


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peft_model(base):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    torch.manual_seed(0)
    return get_peft_model(base, cfg)


def prepare(d, steps, seq):
    from transformers import LlamaConfig, LlamaForCausalLM
    with open(os.path.join(REPO, "models", "configs", "llama-3.2-1b.json")) as f:
        cfg = json.load(f)
    cfg["torch_dtype"] = "float32"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    model = peft_model(model)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    ad = os.path.join(d, "adapter_init")
    if os.path.exists(ad):
        shutil.rmtree(ad)
    model.save_pretrained(ad)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, cfg["vocab_size"], size=steps * seq, dtype=np.uint32)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = MAGIC_U32, VERSION, len(toks)
    with open(os.path.join(d, "tokens.bin"), "wb") as f:
        f.write(header.tobytes())
        f.write(toks.tobytes())


def train(d, dtype, steps, seq, threads):
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM
    import transformers, peft
    if threads:
        torch.set_num_threads(threads)
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    base = LlamaForCausalLM.from_pretrained(os.path.join(d, "model"), dtype=tdtype, attn_implementation="sdpa")
    model = peft_model(base)
    saved = load_file(os.path.join(d, "adapter_init", "adapter_model.safetensors"))
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(saved[name.replace(".default.", ".")].to(p.dtype))
                n += 1
    assert n == len(saved), f"adapter has {len(saved)} tensors, model {n}"
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params)
    with open(os.path.join(d, "tokens.bin"), "rb") as f:
        hdr = np.frombuffer(f.read(1024), dtype=np.int32)
        assert hdr[0] == MAGIC_U32
        toks = np.frombuffer(f.read(), dtype=np.uint32).astype(np.int64)
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    model.train()
    losses, times, norms = [], [], []
    for s in range(steps):
        ids = torch.tensor(toks[s * seq:(s + 1) * seq]).unsqueeze(0)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        print(f"step {s + 1}: loss {losses[-1]:.6f} ({times[-1]:.1f} s)", flush=True)
    med = statistics.median(times)
    print(json.dumps({"impl": "torch+peft", "dtype": dtype, "losses": losses, "grad_norms": norms,
                      "step_s": times, "step_s_median": med, "tokens_per_s_median": seq / med,
                      "peak_rss_mib": rss_mib(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "peft": peft.__version__, "python": platform.python_version()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--prepare", metavar="DIR", help="write model, adapter_init and tokens.bin into DIR")
    g.add_argument("--train", metavar="DIR", help="train from DIR (written by --prepare)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.prepare:
        os.makedirs(a.prepare, exist_ok=True)
        prepare(a.prepare, a.steps, a.seq)
    else:
        train(a.train, a.dtype, a.steps, a.seq, a.threads)


if __name__ == "__main__":
    main()
