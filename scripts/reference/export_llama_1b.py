#!/usr/bin/env python3
"""Exports a randomly initialised Llama-3.2-1B (models/configs/llama-3.2-1b.json) to ONNX with
external data, for the import benchmark in docs/benchmarks.md (not committed: ~5 GB in fp32).

    ~/.venvs/parallora-ref/bin/python scripts/reference/export_llama_1b.py --out /tmp/llama1b --seq-len 512
"""
import argparse
import json
import os
import shutil
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from make_onnx_fixtures import LogitsOnly  # same wrapper as the fixtures (one input, logits out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/llama1b")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "models", "configs", "llama-3.2-1b.json")) as f:
        cfg_dict = json.load(f)
    cfg_dict["torch_dtype"] = "float32"
    cfg = LlamaConfig(**cfg_dict)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    print(f"init {time.time() - t0:.1f}s, {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len))
    t0 = time.time()
    torch.onnx.export(LogitsOnly(model), (ids,), os.path.join(args.out, "model.onnx"), input_names=["input_ids"],
                      output_names=["logits"], opset_version=18, dynamo=True, external_data=True)
    print(f"export {time.time() - t0:.1f}s", flush=True)
    cfg.save_pretrained(args.out)


if __name__ == "__main__":
    main()
