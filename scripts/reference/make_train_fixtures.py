#!/usr/bin/env python3
"""Reference LoRA fine-tuning run (PyTorch + transformers + PEFT) for training-parity tests.

Trains a PEFT LoRA adapter on the committed tiny checkpoint tests/fixtures/onnx/tiny_llama.hf for
20 optimizer steps on CPU in float32, deterministically, and writes what the C++ trainer must
reproduce into tests/fixtures/train/tiny/ (committed, so the test suite needs no torch):

    tokens.bin, val.bin          llm.c token files (256 x int32 header: magic 20240520, version 1,
                                 token count; then uint16 tokens). Token = byte value of ASCII text
                                 (the Zen of Python followed by the json module's docstring), vocab 256.
    adapter_init/                PEFT adapter the run starts from (save_pretrained). lora_A keeps
                                 PEFT's kaiming-uniform init under torch.manual_seed(0); every lora_B
                                 is set to normal(0, 0.02) from a fixed generator, because PEFT's zero
                                 B would make every lora_A gradient zero at step 1.
    step1.safetensors            after the FIRST micro-batch's backward of step 1 (before clipping and
                                 the optimizer): `loss` [1] (unscaled micro-batch loss), `logits`
                                 [2,16,256], and `grad.<name>` for every trainable parameter, holding
                                 d(loss_1 / M)/d(param). <name> is the HF module name without PEFT's
                                 prefix and adapter name: grad.model.layers.0.self_attn.q_proj.lora_A.weight
    adapter_final/               the adapter after 20 steps (save_pretrained).
    final_logits.safetensors     `logits` [4,16,256] F32 of the trained model on the first 4 val
                                 sequences, and those `input_ids` [4,16] I32.
    reference.json               versions, hyperparameters, per-step losses, gradient norms and
                                 learning rates, validation loss before and after.

Training recipe (what the C++ side must match):
  * global batch B=4 sequences of T=16 tokens, M=2 micro-batches of B/M=2 sequences each;
  * data order is sequential: optimizer step s (1-based), micro-batch m (0-based) uses sequences
    i = (s-1)*B + m*(B/M) + j for j < B/M, sequence i = tokens[i*T:(i+1)*T]; input_ids = labels =
    that block (HF shifts the labels internally: T-1 predicted tokens per sequence, mean loss);
  * per micro-batch: (model(ids, labels=ids).loss / M).backward();
  * clip_grad_norm_(trainable, 1.0) (the recorded grad norm is the pre-clip total norm), AdamW
    (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01 on every LoRA parameter),
    get_cosine_schedule_with_warmup(num_warmup_steps=5, num_training_steps=20): optimizer.step(),
    scheduler.step(), zero_grad(). Note the warm-up makes the learning rate of step 1 exactly 0.
  * step loss = mean of the M micro-batch losses.

The run uses attn_implementation="eager"; it is repeated with "sdpa" and the losses must agree to
1e-6. Run it from the reference virtual environment:

    ~/.venvs/parallora-ref/bin/python scripts/reference/make_train_fixtures.py [--out tests/fixtures/train/tiny]

--precision bf16 (after the fp32 run above) writes only reference_bf16.json: the same recipe with
the base model in bfloat16 (HF's usual mixed-precision LoRA: torch_dtype=bfloat16; PEFT keeps the
adapters in float32, autocast_adapter_dtype=True), starting from the committed adapter_init, on
the committed tokens; attn_implementation "sdpa" (what bf16 training uses) and "eager" are both
recorded. This is the bf16 reference for lora-compile --precision bf16 (tests/tools/lora_run_bf16.test).
"""
import argparse
import codecs
import contextlib
import io
import json
import os
import platform
import shutil
import sys

import numpy as np
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE_REL = "tests/fixtures/onnx/tiny_llama.hf"

B, T, M = 4, 16, 2          # global batch (sequences), sequence length, micro-batches per step
STEPS = 20
WARMUP = 5
LR, BETAS, EPS, WD, MAX_NORM = 1e-3, (0.9, 0.999), 1e-8, 0.01, 1.0
LORA_R, LORA_ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
N_TRAIN = STEPS * B * T + 64  # 1280 tokens are consumed; a few spare
N_VAL = 256
VAL_BATCH = 4
LLMC_MAGIC, LLMC_VERSION = 20240520, 1


def corpus_text():
    """ASCII text from Python's own stdlib: the Zen of Python, then the json module's docstring."""
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
        import this
    import json as json_mod
    text = codecs.decode(this.s, "rot13") + "\n\n" + json_mod.__doc__
    data = text.encode("ascii")
    if len(data) < N_TRAIN + N_VAL:
        raise SystemExit(f"corpus too short: {len(data)} bytes")
    return data


def write_llmc_tokens(path, tokens):
    tokens = np.asarray(tokens, dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = LLMC_MAGIC, LLMC_VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def read_llmc_tokens(path):
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(1024), dtype=np.int32)
        assert header[0] == LLMC_MAGIC and header[1] == LLMC_VERSION, path
        toks = np.frombuffer(f.read(), dtype=np.uint16)
    assert len(toks) == header[2], path
    return toks.astype(np.int64)


def hf_name(peft_name):
    """base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
       -> model.layers.0.self_attn.q_proj.lora_A.weight"""
    name = peft_name
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".default.", ".")


def build_model(base_dir, attn, dtype=torch.float32):
    from transformers import LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=dtype, attn_implementation=attn)
    cfg = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                     bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(0)  # lora_A: PEFT's kaiming-uniform init drawn from the global RNG
    model = get_peft_model(base, cfg)
    model.peft_config["default"].base_model_name_or_path = BASE_REL
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():  # named_parameters order is deterministic
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def save_adapter(model, d):
    if os.path.exists(d):
        shutil.rmtree(d)
    model.save_pretrained(d)
    readme = os.path.join(d, "README.md")  # PEFT's model-card boilerplate: version noise only
    if os.path.exists(readme):
        os.remove(readme)
    # PEFT keeps target_modules in a set, so its saved order follows the string hash seed: sort it
    # so the committed file does not change from run to run.
    cfg_path = os.path.join(d, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def seq_block(tokens, i):
    return tokens[i * T:(i + 1) * T]


def load_adapter(model, adapter_dir):
    """Overwrites every LoRA weight with the saved PEFT adapter's (float32) values."""
    from safetensors.torch import load_file
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" not in name:
                continue
            key = name.replace(".default.", ".")
            p.copy_(saved[key].to(p.dtype))
            n += 1
    assert n == len(saved), f"adapter has {len(saved)} tensors, model {n}"


def run(base_dir, train_tokens, val_tokens, attn, out=None, dtype=torch.float32, init_adapter=None):
    """One full training run; returns the record. Writes fixtures when out is given."""
    from transformers import get_cosine_schedule_with_warmup
    from safetensors.torch import save_file

    model = build_model(base_dir, attn, dtype)
    if init_adapter is not None:
        load_adapter(model, init_adapter)
    if out is not None:
        save_adapter(model, os.path.join(out, "adapter_init"))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    assert all("lora_" in n for n, _ in trainable), "only LoRA parameters may train"
    assert all(p.dtype == torch.float32 for p in params), "adapters must be the fp32 master copies"

    val_ids = torch.tensor(np.stack([seq_block(val_tokens, i) for i in range(VAL_BATCH)]))

    def val_loss():
        model.eval()
        with torch.no_grad():
            return float(model(input_ids=val_ids, labels=val_ids).loss)

    rec = {"val_loss_initial": val_loss(), "losses": [], "grad_norms": [], "lrs": []}

    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    mb = B // M
    model.train()
    for step in range(1, STEPS + 1):
        micro_losses = []
        for m in range(M):
            idx = [(step - 1) * B + m * mb + j for j in range(mb)]
            ids = torch.tensor(np.stack([seq_block(train_tokens, i) for i in idx]))
            outp = model(input_ids=ids, labels=ids)
            (outp.loss / M).backward()
            micro_losses.append(outp.loss.detach().item())
            if step == 1 and m == 0 and out is not None:
                tensors = {"loss": outp.loss.detach().reshape(1).clone().contiguous(),
                           "logits": outp.logits.detach().clone().contiguous()}
                for n, p in trainable:
                    tensors["grad." + hf_name(n)] = p.grad.detach().clone().contiguous()
                save_file(tensors, os.path.join(out, "step1.safetensors"))
        gn = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        rec["lrs"].append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        rec["losses"].append(sum(micro_losses) / M)
        rec["grad_norms"].append(float(gn))

    rec["val_loss_final"] = val_loss()
    if out is not None:
        save_adapter(model, os.path.join(out, "adapter_final"))
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=val_ids).logits
        save_file({"logits": logits.detach().contiguous(),
                   "input_ids": val_ids.to(torch.int32).contiguous()},
                  os.path.join(out, "final_logits.safetensors"))
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "train", "tiny"))
    ap.add_argument("--base", default=os.path.join(REPO, BASE_REL))
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    torch.set_num_threads(1)  # fixed reduction order: bitwise-reproducible reference numbers
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    if args.precision == "bf16":
        return main_bf16(args, out)

    data = corpus_text()
    write_llmc_tokens(os.path.join(out, "tokens.bin"), np.frombuffer(data[:N_TRAIN], dtype=np.uint8))
    write_llmc_tokens(os.path.join(out, "val.bin"), np.frombuffer(data[N_TRAIN:N_TRAIN + N_VAL], dtype=np.uint8))
    train_tokens = read_llmc_tokens(os.path.join(out, "tokens.bin"))
    val_tokens = read_llmc_tokens(os.path.join(out, "val.bin"))
    assert len(train_tokens) >= STEPS * B * T and len(val_tokens) >= VAL_BATCH * T

    rec = run(args.base, train_tokens, val_tokens, "eager", out=out)
    rec_sdpa = run(args.base, train_tokens, val_tokens, "sdpa")
    diff = max(abs(a - b) for a, b in zip(rec["losses"] + [rec["val_loss_initial"], rec["val_loss_final"]],
                                          rec_sdpa["losses"] + [rec_sdpa["val_loss_initial"],
                                                                rec_sdpa["val_loss_final"]]))
    print(f"eager vs sdpa: max |loss difference| = {diff:.3e}")
    if diff > 1e-6:
        raise SystemExit(f"eager and sdpa attention disagree by {diff:.3e} > 1e-6")

    import peft
    import safetensors
    import transformers
    reference = {
        "description": "PyTorch+PEFT LoRA reference run on the tiny LLaMA checkpoint, written by "
                       "scripts/reference/make_train_fixtures.py (see its docstring for the exact recipe).",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "safetensors": safetensors.__version__, "python": platform.python_version(),
        "base": BASE_REL,
        "attn_implementation": "eager",
        "eager_vs_sdpa_max_loss_diff": diff,
        "data": {"train": "tokens.bin", "val": "val.bin", "format": "llm.c (magic 20240520, version 1, uint16)",
                 "source": "ASCII bytes: Zen of Python (this.s rot13) + '\\n\\n' + json.__doc__",
                 "train_tokens": int(len(train_tokens)), "val_tokens": int(len(val_tokens)),
                 "order": "sequential: step s (1-based), micro-batch m (0-based) uses sequences "
                          "(s-1)*B + m*(B/M) + j, j < B/M; sequence i = tokens[i*T:(i+1)*T]; labels = input_ids",
                 "val_batch": "first 4 val sequences, one batch of [4, 16]"},
        "lr": LR, "warmup_steps": WARMUP, "schedule": "cosine", "total_steps": STEPS,
        "weight_decay": WD, "betas": list(BETAS), "eps": EPS, "max_grad_norm": MAX_NORM,
        "global_batch": B, "seq_len": T, "micro_batches": M, "micro_batch_size": B // M,
        "loss": "mean token cross-entropy over the T-1 shifted positions of a micro-batch; step loss = "
                "mean over micro-batches; gradients accumulate loss_m / M",
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "bias": "none", "targets": TARGETS,
                 "init": "lora_A: PEFT default (kaiming uniform) under torch.manual_seed(0); "
                         "lora_B: normal(0, 0.02) from torch.Generator().manual_seed(1234) in named_parameters order"},
        "losses": rec["losses"], "grad_norms": rec["grad_norms"], "lrs": rec["lrs"],
        "val_loss_initial": rec["val_loss_initial"], "val_loss_final": rec["val_loss_final"],
        "files": {"step1": "step1.safetensors", "adapter_init": "adapter_init", "adapter_final": "adapter_final",
                  "final_logits": "final_logits.safetensors"},
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=2)
        f.write("\n")

    print(f"{'step':>4} {'loss':>10} {'grad_norm':>10} {'lr':>10}")
    for s, (l, g, lr) in enumerate(zip(rec["losses"], rec["grad_norms"], rec["lrs"]), 1):
        print(f"{s:>4} {l:>10.6f} {g:>10.6f} {lr:>10.3e}")
    print(f"val loss: {rec['val_loss_initial']:.6f} -> {rec['val_loss_final']:.6f}")
    first, last = np.mean(rec["losses"][:3]), np.mean(rec["losses"][-3:])
    if not (last < first and rec["val_loss_final"] < rec["val_loss_initial"]):
        raise SystemExit(f"losses did not fall: first3 {first:.6f} last3 {last:.6f}")
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out) for fn in fns)
    print(f"wrote fixtures to {out} ({total} bytes)")


def main_bf16(args, out):
    train_tokens = read_llmc_tokens(os.path.join(out, "tokens.bin"))
    val_tokens = read_llmc_tokens(os.path.join(out, "val.bin"))
    init = os.path.join(out, "adapter_init")
    rec = run(args.base, train_tokens, val_tokens, "sdpa", dtype=torch.bfloat16, init_adapter=init)
    rec_eager = run(args.base, train_tokens, val_tokens, "eager", dtype=torch.bfloat16, init_adapter=init)
    with open(os.path.join(out, "reference.json")) as f:
        fp32 = json.load(f)
    rel = max(abs(a - b) / abs(b) for a, b in zip(rec["losses"], fp32["losses"]))
    rel_eager = max(abs(a - b) / abs(b) for a, b in zip(rec["losses"], rec_eager["losses"]))
    import peft
    import transformers
    reference = {
        "description": "PyTorch+PEFT LoRA reference run in bfloat16 (base weights and activations bf16, adapters "
                       "and optimizer fp32), written by scripts/reference/make_train_fixtures.py --precision bf16; "
                       "same recipe, data and adapter_init as reference.json.",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "base": BASE_REL, "dtype": "bfloat16",
        "attn_implementation": "sdpa",
        "max_rel_loss_diff_vs_fp32_reference": rel,
        "max_rel_loss_diff_sdpa_vs_eager": rel_eager,
        "losses": rec["losses"], "grad_norms": rec["grad_norms"], "lrs": rec["lrs"],
        "val_loss_initial": rec["val_loss_initial"], "val_loss_final": rec["val_loss_final"],
        "losses_eager": rec_eager["losses"],
    }
    with open(os.path.join(out, "reference_bf16.json"), "w") as f:
        json.dump(reference, f, indent=2)
        f.write("\n")
    print(f"{'step':>4} {'bf16 sdpa':>10} {'bf16 eager':>10} {'fp32':>10}")
    for s, (a, b, c) in enumerate(zip(rec["losses"], rec_eager["losses"], fp32["losses"]), 1):
        print(f"{s:>4} {a:>10.6f} {b:>10.6f} {c:>10.6f}")
    print(f"max relative loss difference: bf16 vs fp32 {rel:.3e}, bf16 sdpa vs eager {rel_eager:.3e}")
    print(f"val loss: {rec['val_loss_initial']:.6f} -> {rec['val_loss_final']:.6f}")


if __name__ == "__main__":
    main()
