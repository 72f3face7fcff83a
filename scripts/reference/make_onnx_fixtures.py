#!/usr/bin/env python3
"""Export tiny Hugging Face LlamaForCausalLM models (with and without PEFT LoRA) to ONNX.

The fixtures under tests/fixtures/onnx/ are produced by this script and committed, so the test
suite needs no torch. Run it from the reference virtual environment:

    scripts/install_deps.sh --reference
    ~/.venvs/parallora-ref/bin/python scripts/reference/make_onnx_fixtures.py [--out tests/fixtures/onnx]

Every model is exported with torch.onnx.export (the dynamo exporter, the default since torch 2.9;
the TorchScript exporter cannot export transformers 5's masking code). Variants cover what users
hand us: the default optimised export (weights pre-transposed and renamed, identical initialisers
de-duplicated), the unoptimised export (parameter names kept, every shape subgraph present), a
dynamic batch/sequence export, tied embeddings, and a PEFT LoRA model.
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

BATCH, SEQ = 2, 16


def tiny_config(**over):
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                attn_implementation="sdpa")
    base.update(over)
    return LlamaConfig(**base)


class LogitsOnly(torch.nn.Module):
    """Wraps the model so the ONNX graph has one input (input_ids) and one output (logits)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def randomize_norms(model, gen):
    # HF initialises RMSNorm weights to ones; give them distinct values so a test can tell
    # which norm weight went where (and so the exporter cannot merge them).
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            with torch.no_grad():
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))


def export(model, path, dynamic=False, optimize=True):
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    kwargs = dict(input_names=["input_ids"], output_names=["logits"], opset_version=18,
                  dynamo=True, optimize=optimize, external_data=True)
    if dynamic:
        kwargs["dynamic_shapes"] = {"input_ids": {0: torch.export.Dim("batch", max=64),
                                                  1: torch.export.Dim("seq", max=256)}}
    torch.onnx.export(LogitsOnly(model).eval(), (ids,), path, **kwargs)
    with torch.no_grad():
        logits = LogitsOnly(model).eval()(ids)
    return ids, logits


def save_reference(out_dir, stem, model, ids, logits):
    d = os.path.join(out_dir, stem + ".hf")
    if os.path.exists(d):
        shutil.rmtree(d)
    model.save_pretrained(d, safe_serialization=True)
    np.save(os.path.join(out_dir, stem + ".input_ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(out_dir, stem + ".logits.npy"), logits.numpy().astype(np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "onnx"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    manifest = {}

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config()).eval()
    randomize_norms(base, gen)
    for stem, kw in [("tiny_llama", {}), ("tiny_llama_noopt", {"optimize": False}),
                     ("tiny_llama_dynamic", {"dynamic": True})]:
        ids, logits = export(base, os.path.join(args.out, stem + ".onnx"), **kw)
        manifest[stem] = {"config": "tiny_llama", **kw}
    save_reference(args.out, "tiny_llama", base, ids, logits)

    torch.manual_seed(1)
    tied = LlamaForCausalLM(tiny_config(num_key_value_heads=4, tie_word_embeddings=True)).eval()
    randomize_norms(tied, gen)
    ids, logits = export(tied, os.path.join(args.out, "tiny_llama_tied.onnx"))
    save_reference(args.out, "tiny_llama_tied", tied, ids, logits)
    manifest["tiny_llama_tied"] = {"config": "tiny_llama_tied"}

    from peft import LoraConfig, get_peft_model
    torch.manual_seed(2)
    lbase = LlamaForCausalLM(tiny_config()).eval()
    randomize_norms(lbase, gen)
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(lbase, lcfg).eval()
    # PEFT initialises B to zero; make it non-zero so the adapter changes the logits.
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    ids, logits = export(peft_model.base_model.model, os.path.join(args.out, "tiny_llama_lora.onnx"))
    np.save(os.path.join(args.out, "tiny_llama_lora.input_ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(args.out, "tiny_llama_lora.logits.npy"), logits.numpy().astype(np.float32))
    d = os.path.join(args.out, "tiny_llama_lora.adapter")
    if os.path.exists(d):
        shutil.rmtree(d)
    peft_model.save_pretrained(d)
    manifest["tiny_llama_lora"] = {"config": "tiny_llama", "lora": {"r": 4, "alpha": 8,
                                   "targets": ["q_proj", "v_proj", "down_proj"]}}

    import transformers, peft, onnx
    manifest["_versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__, "onnx": onnx.__version__}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    print("wrote fixtures to", os.path.abspath(args.out))


if __name__ == "__main__":
    main()
