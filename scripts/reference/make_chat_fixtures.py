#!/usr/bin/env python3
"""Reference LoRA fine-tuning on chat data with masked labels (PyTorch + transformers + PEFT).

Prepares tests/fixtures/chat/chats.jsonl (200 made-up conversations, tests/fixtures/chat/make_chats.py)
with scripts/prepare_data.py (--byte, default chat template, --max-seq-len 256, --val-fraction 0.1,
seed 0) into tests/fixtures/train/chat/{train,train_val}.{bin,mask}, then trains the committed tiny
checkpoint (tests/fixtures/onnx/tiny_llama.hf) from the committed adapter
tests/fixtures/train/tiny/adapter_init for 20 AdamW steps on CPU in float32 and writes:

    reference.json         padded rows (one example a row, right padding with pad_id, labels -100
                           where the mask is 0, at each example's first token and on padding; no
                           attention mask: causal attention never lets a real token see the
                           padding after it) -- what `lora-run --data-layout padded` feeds
    reference_packed.json  packed rows (next-fit in file order, lora-run --data-layout packed):
                           position_ids restarting at 0 per example and a 4D block-diagonal causal
                           mask (0 inside an example's causal block, dtype-min elsewhere). Needs a
                           plan compiled with lora-compile --packing (attention and rope take
                           segment_ids / position_ids): the pack helper's kernels. HOOK: the test
                           tests/tools/lora_run_chat_hf.test compares it once those exist.

Recipe (both layouts): global batch B=4 rows of T=256, M=2 micro-batches; rows in file order
(lora-run --no-shuffle): step s (1-based), micro-batch m uses rows (s-1)*B + m*B/M + j. The loss of
a step is the mean over the counted labels of the whole global batch (N = labels != -100 after
the causal shift, over all B rows): each micro-batch contributes sum_m / N (transformers'
`num_items_in_batch`, what its Trainer does under gradient accumulation), backward of that sum.
clip_grad_norm_ 1.0, AdamW lr 1e-3 betas (0.9, 0.999) eps 1e-8 weight decay 0.01, cosine schedule
with 5 warm-up steps over 20. Validation: every full batch of B rows of the val split, the mean
over all their counted labels, before and after training.

    ~/.venvs/parallora-ref/bin/python scripts/reference/make_chat_fixtures.py
"""
import json
import os
import platform
import struct
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_train_fixtures import BASE_REL, REPO, build_model, load_adapter  # noqa: E402

OUT = os.path.join(REPO, "tests", "fixtures", "train", "chat")
CHATS = os.path.join(REPO, "tests", "fixtures", "chat", "chats.jsonl")
INIT = os.path.join(REPO, "tests", "fixtures", "train", "tiny", "adapter_init")
B, T, M, STEPS, WARMUP = 4, 256, 2, 20, 5
LR, BETAS, EPS, WD, MAX_NORM = 1e-3, (0.9, 0.999), 1e-8, 0.01, 1.0
IGNORE = -100


def read_prepared(stem):
    with open(stem + ".bin", "rb") as f:
        h = np.frombuffer(f.read(1024), dtype=np.int32)
        toks = np.frombuffer(f.read(), dtype=np.uint16 if h[0] == 20240520 else np.uint32).astype(np.int64)
    with open(stem + ".mask", "rb") as f:
        data = f.read()
    hdr = struct.unpack("<256I", data[:1024])
    assert hdr[0] == 20261206 and hdr[1] == 1, stem
    n, docs, pad = hdr[2] | hdr[3] << 32, hdr[4] | hdr[5] << 32, hdr[8]
    assert n == len(toks)
    mask = np.frombuffer(data[1024:1024 + n], dtype=np.uint8)
    off = 1024 + (n + 7) // 8 * 8
    starts = np.frombuffer(data[off:], dtype=np.int64)
    assert len(starts) == docs + 1
    return toks, mask, starts, pad


def rows_of(toks, mask, starts, pad, packed):
    """[(input_ids, labels, position_ids, segment_ids)] per row, as runtime/io/example_data.h lays them out."""
    groups, used = [], 0
    for e in range(len(starts) - 1):
        length = int(starts[e + 1] - starts[e])
        assert length <= T
        if packed and groups and used + length <= T:
            groups[-1].append(e)
            used += length
        else:
            groups.append([e])
            used = length
    rows = []
    for g in groups:
        ids, lab, pos, seg = [], [], [], []
        for k, e in enumerate(g):
            s, t = int(starts[e]), int(starts[e + 1])
            for i in range(s, t):
                ids.append(int(toks[i]))
                lab.append(int(toks[i]) if i > s and mask[i] else IGNORE)
                pos.append(i - s)
                seg.append(k)
        rest = T - len(ids)
        ids += [pad] * rest
        lab += [IGNORE] * rest
        pos += list(range(rest))
        seg += [len(g)] * rest
        rows.append((ids, lab, pos, seg))
    return rows


def counted(rows):
    return sum(sum(1 for x in r[1][1:] if x != IGNORE) for r in rows)


def forward(model, rows, packed):
    ids = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    kw = {}
    if packed:
        seg = torch.tensor([r[3] for r in rows])
        same = seg[:, :, None] == seg[:, None, :]
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        allowed = same & causal[None]
        mask = torch.zeros(len(rows), 1, T, T)
        mask.masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)
        kw = {"position_ids": torch.tensor([r[2] for r in rows]), "attention_mask": mask}
    return model(input_ids=ids, **kw).logits, labels


def summed_loss(logits, labels):
    """Sum of the token cross-entropies over the counted (shifted) labels."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")


def val_loss(model, rows, packed):
    batches = [rows[i * B:(i + 1) * B] for i in range(len(rows) // B)]
    n = sum(counted(b) for b in batches)
    model.eval()
    with torch.no_grad():
        total = sum(float(summed_loss(*forward(model, b, packed))) for b in batches)
    model.train()
    return total / n


def train(train_rows, val_rows, packed):
    from transformers import get_cosine_schedule_with_warmup
    model = build_model(os.path.join(REPO, BASE_REL), "eager")
    load_adapter(model, INIT)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    rec = {"val_loss_initial": val_loss(model, val_rows, packed), "losses": [], "grad_norms": [], "lrs": [],
           "trained_tokens": []}
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    mb = B // M
    model.train()
    for step in range(1, STEPS + 1):
        batch = [train_rows[((step - 1) * B + i) % len(train_rows)] for i in range(B)]
        n = counted(batch)
        loss = 0.0
        for m in range(M):
            logits, labels = forward(model, batch[m * mb:(m + 1) * mb], packed)
            part = summed_loss(logits, labels) / n
            if m == 0 and step == 1:  # transformers' own loss with num_items_in_batch agrees
                hf = model.loss_function(logits, labels, logits.shape[-1], num_items_in_batch=torch.tensor(n))
                assert abs(float(hf) - float(part)) <= 1e-6 * abs(float(part)), (float(hf), float(part))
            part.backward()
            loss += float(part)
        gn = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        rec["lrs"].append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        rec["losses"].append(loss)
        rec["grad_norms"].append(float(gn))
        rec["trained_tokens"].append(n)
    rec["val_loss_final"] = val_loss(model, val_rows, packed)
    return rec


def check_packing_isolates(tr):
    """Reference self-check: an example's logits inside a packed row equal its logits alone."""
    model = build_model(os.path.join(REPO, BASE_REL), "eager")
    load_adapter(model, INIT)
    model.eval()
    packed = rows_of(*tr, packed=True)
    row = next(r for r in packed if r[3].count(1) > 0 and r[3][-1] != 1)  # a row whose example 1 is real
    first, length = row[3].index(1), row[3].count(1)
    with torch.no_grad():
        lp, _ = forward(model, [row], True)
        alone = model(input_ids=torch.tensor([row[0][first:first + length]])).logits
    diff = float((lp[0, first:first + length] - alone[0]).abs().max())
    assert diff < 1e-4, f"packed example differs from the example alone by {diff}"
    return diff


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    stem = os.path.join(OUT, "train")
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "prepare_data.py"), CHATS, "--byte", "--max-seq-len",
                    str(T), "--val-fraction", "0.1", "--seed", "0", "-o", stem + ".bin"], check=True)
    tr, va = read_prepared(stem), read_prepared(stem + "_val")
    diff = check_packing_isolates(tr)
    import peft
    import transformers
    common = {
        "description": "PyTorch+PEFT LoRA reference on masked chat data, written by "
                       "scripts/reference/make_chat_fixtures.py (see its docstring for the recipe).",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "base": BASE_REL, "adapter_init": "tests/fixtures/train/tiny/adapter_init",
        "data": "train.bin + train.mask (val: train_val.*), prepared from tests/fixtures/chat/chats.jsonl",
        "global_batch": B, "seq_len": T, "micro_batches": M, "lr": LR, "warmup_steps": WARMUP,
        "schedule": "cosine", "total_steps": STEPS, "weight_decay": WD, "max_grad_norm": MAX_NORM,
        "loss": "sum of token cross-entropies over the counted labels of each micro-batch / the counted labels "
                "of the whole global batch; step loss = sum over micro-batches",
    }
    for packed, name in ((False, "reference.json"), (True, "reference_packed.json")):
        rec = train(rows_of(*tr, packed=packed), rows_of(*va, packed=packed), packed)
        out = dict(common, layout="packed" if packed else "padded", **rec)
        if packed:
            out["packed_vs_alone_max_logit_diff"] = diff
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"{name}: losses {rec['losses'][0]:.6f} .. {rec['losses'][-1]:.6f}, val "
              f"{rec['val_loss_initial']:.6f} -> {rec['val_loss_final']:.6f}")


if __name__ == "__main__":
    main()
