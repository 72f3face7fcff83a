#!/usr/bin/env python3
"""Check that a LoRA adapter directory loads in PEFT and reproduces expected logits.

Loads the base checkpoint with transformers (float32, CPU), applies the adapter with
PeftModel.from_pretrained(DIR), runs the first BATCH x SEQ sequences of an llm.c token file
(sequence i = tokens[i*SEQ:(i+1)*SEQ]) and compares the logits with the `logits` tensor of a
safetensors file (shape [BATCH, SEQ, vocab]). If that file also holds `input_ids`, they must equal
the sequences read from the token file. Exits 1 on any mismatch.

The C++ trainer saves its adapter and a logits file; this proves PEFT reads our adapter the way we
meant it:

    ~/.venvs/parallora-ref/bin/python scripts/reference/check_adapter_in_peft.py \\
        --base tests/fixtures/onnx/tiny_llama.hf --adapter tests/fixtures/train/tiny/adapter_final \\
        --tokens tests/fixtures/train/tiny/val.bin --expect-logits tests/fixtures/train/tiny/final_logits.safetensors
"""
import argparse
import sys

import numpy as np
import torch

LLMC_MAGIC, LLMC_VERSION = 20240520, 1


def read_llmc_tokens(path):
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(1024), dtype=np.int32)
        if len(header) != 256 or header[0] != LLMC_MAGIC or header[1] != LLMC_VERSION:
            raise SystemExit(f"{path}: not an llm.c token file (magic {LLMC_MAGIC}, version {LLMC_VERSION})")
        toks = np.frombuffer(f.read(), dtype=np.uint16)
    if len(toks) != header[2]:
        raise SystemExit(f"{path}: header says {header[2]} tokens, file holds {len(toks)}")
    return toks.astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="HF checkpoint directory of the base model")
    ap.add_argument("--adapter", required=True, help="PEFT adapter directory (adapter_config.json + weights)")
    ap.add_argument("--tokens", required=True, help="llm.c token file (e.g. val.bin)")
    ap.add_argument("--expect-logits", required=True, help="safetensors file with `logits` [B, T, V]")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="pass when |got - want| <= tol + tol * |want| everywhere (default 1e-4)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    args = ap.parse_args()

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    expect = load_file(args.expect_logits)
    if "logits" not in expect:
        raise SystemExit(f"{args.expect_logits}: no `logits` tensor (has {sorted(expect)})")
    want = expect["logits"].float()

    toks = read_llmc_tokens(args.tokens)
    need = args.batch * args.seq
    if len(toks) < need:
        raise SystemExit(f"{args.tokens}: {len(toks)} tokens, need {need}")
    ids = torch.tensor(toks[:need].reshape(args.batch, args.seq))
    ok = True
    if "input_ids" in expect:
        if not torch.equal(expect["input_ids"].to(torch.int64).reshape(ids.shape), ids):
            print(f"MISMATCH: input_ids in {args.expect_logits} differ from the first "
                  f"{args.batch}x{args.seq} tokens of {args.tokens}")
            ok = False

    base = LlamaForCausalLM.from_pretrained(args.base, dtype=torch.float32, attn_implementation=args.attn)
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    print(f"adapter {args.adapter}: {n_lora} LoRA parameters loaded")

    if tuple(got.shape) != tuple(want.shape):
        print(f"MISMATCH: logits shape {tuple(got.shape)} vs expected {tuple(want.shape)}")
        sys.exit(1)
    err = (got - want).abs()
    max_abs = float(err.max())
    max_rel = float((err / want.abs().clamp_min(1e-6)).max())
    worst = float((err - args.tol * want.abs()).max())
    print(f"logits {tuple(got.shape)}: max abs error {max_abs:.3e}, max rel error {max_rel:.3e} "
          f"(tol {args.tol:g} abs + {args.tol:g} rel)")
    if worst > args.tol or not torch.isfinite(got).all():
        print("MISMATCH: logits differ beyond tolerance")
        ok = False
    # The adapter must matter: a file the base alone reproduces proves nothing about the adapter.
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(input_ids=ids).logits.float()
    print(f"adapter effect: max |logits(base+adapter) - logits(base)| = {float((got - base_logits).abs().max()):.3e}")
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
