#!/usr/bin/env python3
"""HF transformers + PEFT reference for LoRA dropout with Parallora's mask.

The recipe of make_train_fixtures.py (tiny LLaMA, 20 AdamW steps, batch 4 x 16 in 2 micro-batches,
the committed adapter_init and tokens.bin of tests/fixtures/train/tiny) with LoraConfig's
lora_dropout = 0.1. PEFT's dropout draws from torch's RNG, which no other program can reproduce;
so every PEFT `lora_dropout` module is replaced by one that applies Parallora's mask, computed
here in numpy by scripts/reference/philox.py (an independent reproduction of runtime/base/philox.h,
checked against Random123's known answers first):

    dropout(x)[j, t, k] = x[j, t, k] * keep(seed, step, first_sample + j, t, k, module) / (1 - p)

with `module` the PEFT module path without PEFT's prefix (model.layers.0.self_attn.q_proj),
`step` the optimizer step (1-based) and `first_sample` the global batch index of the micro-batch's
first sequence. In eval mode (validation) the module is the identity, as nn.Dropout is.

Writes tests/fixtures/train/tiny/reference_dropout.json (per-step losses, gradient norms, validation
losses; compare_losses.py reads it). Run from the reference virtual environment:

    ~/.venvs/parallora-ref/bin/python scripts/reference/make_dropout_fixture.py
"""
import argparse
import json
import os
import platform
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_train_fixtures as mtf  # noqa: E402
import philox  # noqa: E402

P = 0.1
SEED = 7  # lora-run --seed


class ParalloraDropout(torch.nn.Module):
    """Inverted dropout with Parallora's Philox mask; context = (step, first_sample)."""

    def __init__(self, module, ctx):
        super().__init__()
        self.module, self.ctx = module, ctx

    def forward(self, x):
        if not self.training:
            return x
        step, first = self.ctx["step"], self.ctx["first_sample"]
        b, t, k = x.shape
        keep = philox.keep_mask(SEED, step, self.module, P, first, b, t, k)
        self.ctx["kept"] += int(keep.sum())
        self.ctx["total"] += keep.size
        scale = torch.tensor(1.0 / (1.0 - P), dtype=torch.float32)  # the kernels' float(1 / (1 - p))
        return x * torch.from_numpy(keep.astype(np.float32)) * scale


def install(model, ctx):
    n = 0
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_dropout") and "default" in mod.lora_dropout:
            path = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
            mod.lora_dropout["default"] = ParalloraDropout(path, ctx)
            n += 1
    assert n == 2 * 7, f"expected 14 adapted modules, found {n}"


def run(base_dir, train_tokens, val_tokens, init_adapter):
    from transformers import get_cosine_schedule_with_warmup
    model = mtf.build_model(base_dir, "eager")
    mtf.load_adapter(model, init_adapter)
    ctx = {"step": 0, "first_sample": 0, "kept": 0, "total": 0}
    install(model, ctx)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    val_ids = torch.tensor(np.stack([mtf.seq_block(val_tokens, i) for i in range(mtf.VAL_BATCH)]))

    def val_loss():
        model.eval()
        with torch.no_grad():
            return float(model(input_ids=val_ids, labels=val_ids).loss)

    rec = {"val_loss_initial": val_loss(), "losses": [], "grad_norms": [], "lrs": []}
    opt = torch.optim.AdamW(params, lr=mtf.LR, betas=mtf.BETAS, eps=mtf.EPS, weight_decay=mtf.WD)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=mtf.WARMUP, num_training_steps=mtf.STEPS)
    B, M = mtf.B, mtf.M
    mb = B // M
    model.train()
    for step in range(1, mtf.STEPS + 1):
        micro = []
        for m in range(M):
            ctx["step"], ctx["first_sample"] = step, m * mb
            idx = [(step - 1) * B + m * mb + j for j in range(mb)]
            ids = torch.tensor(np.stack([mtf.seq_block(train_tokens, i) for i in idx]))
            out = model(input_ids=ids, labels=ids)
            (out.loss / M).backward()
            micro.append(out.loss.detach().item())
        gn = torch.nn.utils.clip_grad_norm_(params, mtf.MAX_NORM)
        rec["lrs"].append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        model.train()
        rec["losses"].append(sum(micro) / M)
        rec["grad_norms"].append(float(gn))
    rec["val_loss_final"] = val_loss()
    rec["keep_rate"] = ctx["kept"] / ctx["total"]
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=os.path.join(mtf.REPO, "tests", "fixtures", "train", "tiny"))
    ap.add_argument("--base", default=os.path.join(mtf.REPO, mtf.BASE_REL))
    args = ap.parse_args()
    if philox.main() != 0:
        raise SystemExit("philox.py fails its known-answer tests")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    d = os.path.abspath(args.fixtures)
    train_tokens = mtf.read_llmc_tokens(os.path.join(d, "tokens.bin"))
    val_tokens = mtf.read_llmc_tokens(os.path.join(d, "val.bin"))
    rec = run(args.base, train_tokens, val_tokens, os.path.join(d, "adapter_init"))
    with open(os.path.join(d, "reference.json")) as f:
        nodrop = json.load(f)
    import peft
    import transformers
    ref = {
        "description": "PyTorch+PEFT LoRA reference with lora_dropout 0.1 applying Parallora's Philox mask "
                       "(scripts/reference/make_dropout_fixture.py; recipe, data and adapter_init of reference.json)",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "base": mtf.BASE_REL,
        "lora_dropout": P, "seed": SEED, "keep_rate": rec["keep_rate"],
        "max_abs_loss_diff_vs_no_dropout": max(abs(a - b) for a, b in zip(rec["losses"], nodrop["losses"])),
        "losses": rec["losses"], "grad_norms": rec["grad_norms"], "lrs": rec["lrs"],
        "val_loss_initial": rec["val_loss_initial"], "val_loss_final": rec["val_loss_final"],
    }
    with open(os.path.join(d, "reference_dropout.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print(f"{'step':>4} {'loss':>10} {'no dropout':>10}")
    for s, (a, b) in enumerate(zip(rec["losses"], nodrop["losses"]), 1):
        print(f"{s:>4} {a:>10.6f} {b:>10.6f}")
    print(f"keep rate {rec['keep_rate']:.5f}; val loss {rec['val_loss_initial']:.6f} -> {rec['val_loss_final']:.6f}")
    print(f"wrote {os.path.join(d, 'reference_dropout.json')}")


if __name__ == "__main__":
    main()
