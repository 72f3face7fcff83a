#!/usr/bin/env python3
"""Reference for sequence packing (lora-compile --packing): transformers + PEFT on a packed batch.

On the committed tiny checkpoint tests/fixtures/onnx/tiny_llama.hf with the committed PEFT adapter
tests/fixtures/train/tiny/adapter_init (r 4, alpha 8, all seven projections, non-zero lora_B), one
batch of B=2 rows x T=16 tokens packs made-up examples:

    row 0: three examples of 5, 7 and 4 tokens
    row 1: two examples of 6 and 7 tokens, then 3 padding tokens (id 0, a segment of their own)

  input_ids     (2, 16) the examples' tokens (seeded random ids in [1, 256))
  position_ids  (2, 16) 0, 1, .. restarting at every example (and for the padding)
  segment_ids   (2, 16) 0, 1, 2 .. numbering the examples of a row; padding is the next number
  labels        (2, 16) input_ids, with -100 at the first token of every example (HF shifts the
                labels: logits at t predict labels at t+1, so no token is predicted from another
                example), at the padding, and at the first 2 ("prompt") tokens of row 0's second
                example (a loss mask as chat fine-tuning has)

HF is run with attn_implementation="eager", position_ids, and a 4D additive block-diagonal causal
mask (0 where key j is visible to query i: j <= i and segment_ids[j] == segment_ids[i]; the dtype's
minimum elsewhere), model(input_ids, attention_mask=mask4d, position_ids=..., labels=...).
Self-check: the logits of every example equal those of the example run alone (no packing) within
1e-5, and the packed logits differ from an unmasked run without position_ids (the check can fail).

Writes tests/fixtures/train/packing/ (committed; the test suite needs no torch):
    batch.safetensors   input_ids, position_ids, segment_ids, labels (I32, (2, 16)); logits (F32,
                        (2, 16, 256)); loss (F32, [1]); grad.<name> = d loss / d <adapter param>
                        (F32, names as in tests/fixtures/train/tiny/step1.safetensors)
    reference.json      versions, the layout above, the loss, the self-check's numbers

    ~/.venvs/parallora-ref/bin/python scripts/reference/make_packing_fixtures.py [--out DIR]
"""
import argparse
import json
import os
import platform

import numpy as np
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = os.path.join(REPO, "tests/fixtures/onnx/tiny_llama.hf")
ADAPTER = os.path.join(REPO, "tests/fixtures/train/tiny/adapter_init")
T = 16
ROWS = [[5, 7, 4], [6, 7]]          # example lengths per row; the rest of a row is padding
PROMPT = {(0, 1): 2}                 # (row, example) -> leading tokens kept out of the loss
PAD_ID = 0


def hf_name(peft_name):
    name = peft_name
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".default.", ".")


def make_batch(seed=7):
    rng = np.random.default_rng(seed)
    B = len(ROWS)
    ids = np.full((B, T), PAD_ID, np.int64)
    pos = np.zeros((B, T), np.int64)
    seg = np.zeros((B, T), np.int64)
    labels = np.full((B, T), -100, np.int64)
    for b, lens in enumerate(ROWS):
        t = 0
        for e, n in enumerate(lens):
            ids[b, t:t + n] = rng.integers(1, 256, n)
            pos[b, t:t + n] = np.arange(n)
            seg[b, t:t + n] = e
            labels[b, t + 1:t + n] = ids[b, t + 1:t + n]          # first token: never a target
            skip = PROMPT.get((b, e), 0)
            labels[b, t:t + skip] = -100
            t += n
        if t < T:  # padding: its own segment, positions restart, never scored
            pos[b, t:] = np.arange(T - t)
            seg[b, t:] = len(lens)
    return ids, pos, seg, labels


def mask4d(seg, dtype):
    seg = torch.as_tensor(seg)
    T_ = seg.shape[1]
    causal = torch.tril(torch.ones(T_, T_, dtype=torch.bool))
    same = seg[:, :, None] == seg[:, None, :]
    visible = (same & causal)[:, None, :, :]
    m = torch.zeros(visible.shape, dtype=dtype)
    return m.masked_fill(~visible, torch.finfo(dtype).min)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests/fixtures/train/packing"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    from transformers import LlamaForCausalLM
    from peft import PeftModel
    import transformers
    import peft
    from safetensors.numpy import save_file

    base = LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, ADAPTER, is_trainable=True)
    model.train()  # lora_dropout is 0: train mode changes nothing but lets gradients flow
    ids, pos, seg, labels = make_batch()
    t = lambda a: torch.as_tensor(a)
    out = model(input_ids=t(ids), attention_mask=mask4d(seg, torch.float32), position_ids=t(pos), labels=t(labels))
    out.loss.backward()
    grads = {"grad." + hf_name(n): p.grad.detach().numpy().astype(np.float32)
             for n, p in model.named_parameters() if p.requires_grad}
    logits = out.logits.detach().numpy().astype(np.float32)

    # Self-check 1: each example alone (no mask, default positions) gives the same logits.
    worst = 0.0
    with torch.no_grad():
        for b, lens in enumerate(ROWS):
            s = 0
            for n in lens:
                alone = model(input_ids=t(ids[b:b + 1, s:s + n])).logits[0].numpy()
                worst = max(worst, float(np.abs(alone - logits[b, s:s + n]).max()))
                s += n
        unpacked = model(input_ids=t(ids)).logits.numpy()
    cross = float(np.abs(unpacked - logits).max())
    if worst > 1e-5:
        raise SystemExit(f"packed logits differ from the examples run alone by {worst:.3e}")
    if cross < 1e-3:
        raise SystemExit(f"packing changed nothing ({cross:.3e}): the mask or the positions were ignored")
    print(f"self-check: packed vs examples alone max abs {worst:.3e}; vs unpacked row {cross:.3e}")

    os.makedirs(args.out, exist_ok=True)
    tensors = {"input_ids": ids.astype(np.int32), "position_ids": pos.astype(np.int32),
               "segment_ids": seg.astype(np.int32), "labels": labels.astype(np.int32),
               "logits": logits, "loss": np.array([out.loss.item()], np.float32)}
    tensors.update(grads)
    save_file(tensors, os.path.join(args.out, "batch.safetensors"))
    ref = {
        "generator": "scripts/reference/make_packing_fixtures.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "base": os.path.relpath(BASE, REPO), "adapter_init": os.path.relpath(ADAPTER, REPO),
        "attn_implementation": "eager", "seq_len": T, "rows": ROWS, "prompt_tokens_masked": 2,
        "scored_tokens": int((labels[:, 1:] != -100).sum()),
        "loss": out.loss.item(), "adapter_tensors": len(grads),
        "self_check": {"max_abs_vs_examples_alone": worst, "max_abs_vs_unpacked_rows": cross},
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}: loss {out.loss.item():.8f}, {len(grads)} adapter gradients, "
          f"{ref['scored_tokens']} scored tokens")


if __name__ == "__main__":
    main()
