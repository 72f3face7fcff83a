#!/usr/bin/env python3
"""Writes the committed seed corpora of the runtime-reader fuzz targets (tests/fuzz/corpus/).

    tests/fuzz/make_seeds.py --lora-compile build/tools/lora-compile/lora-compile \
                             --lora-run build/tools/lora-run/lora-run

Seeds come from real files: plans compiled by lora-compile for a 1-layer variant of
tests/fixtures/onnx/tiny_llama.hf (and the 2-layer one for --pp 2), the tiny token files, the
tiny adapter_init (cut down to two tensors) and a checkpoint written by lora-run, plus a few
near misses. Every seed stays under 32 KiB. Input layouts are those of the targets'
LLVMFuzzerTestOneInput comments and tests/fuzz/fuzz_files.h.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def files(*blobs):
    """fuzz_files.h layout: u16 length + bytes for all but the last (None: absent)."""
    out = b""
    for blob in blobs[:-1]:
        out += struct.pack("<H", 0xFFFF) if blob is None else struct.pack("<H", len(blob)) + blob
    return out + (blobs[-1] or b"")


def safetensors(entries, metadata=None):
    """entries: (name, dtype, shape, raw bytes)."""
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def read_safetensors(path):
    raw = read(path)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def write_corpus(target, seeds):
    d = os.path.join(OUT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, blob in seeds.items():
        assert len(blob) < 32768, (target, name, len(blob))
        with open(os.path.join(d, name), "wb") as f:
            f.write(blob)


def plan_seeds(lora_compile, tmp):
    cfg = json.load(open(os.path.join(FIX, "onnx", "tiny_llama.hf", "config.json")))
    cfg["num_hidden_layers"] = 1
    l1 = os.path.join(tmp, "l1.json")
    json.dump(cfg, open(l1, "w"))
    common = ["--batch", "2", "--seq-len", "2", "--lora-rank", "1", "--lora-alpha", "2",
              "--lora-targets", "q_proj", "--total-steps", "2"]
    variants = {
        "single": ["--hf-config", l1],
        "bf16_recompute": ["--hf-config", l1, "--precision", "bf16", "--recompute", "layers"],
        "dp2_zero1": ["--hf-config", l1, "--dp", "2", "--zero1"],
        "tp2": ["--hf-config", l1, "--tp", "2"],
        "pp2": ["--hf-config", os.path.join(FIX, "onnx", "tiny_llama.hf", "config.json"),
                "--pp", "2", "--micro-batches", "2"],
    }
    seeds = {}
    for name, args in variants.items():
        path = os.path.join(tmp, name + ".lp")
        subprocess.run([lora_compile, *args, *common, "-o", path], check=True, stdout=subprocess.DEVNULL)
        raw = read(path)
        seeds["payload_" + name] = b"\x00" + raw[20:-4]  # header 20 bytes, CRC 4
        if name == "single":
            seeds["file_" + name] = b"\x01" + raw
            seeds["file_truncated"] = b"\x01" + raw[:100]
            seeds["file_bad_crc"] = b"\x01" + raw[:-1] + bytes([raw[-1] ^ 1])
            seeds["file_old_version"] = b"\x01" + raw[:8] + struct.pack("<I", 1) + raw[12:]
    return seeds, os.path.join(tmp, "single.lp")


def token_seeds():
    tokens = read(os.path.join(FIX, "train", "tiny", "tokens.bin"))
    val = read(os.path.join(FIX, "train", "tiny", "val.bin"))
    # [format: 0 auto 1 llmc 2 u16 3 u32][seq_len byte][vocab byte][flags: shuffle | restore<<1]
    n = 64
    hdr16 = struct.pack("<3i", 20240520, 1, n) + bytes(1024 - 12)
    hdr32 = struct.pack("<3i", 20240801, 7, 16) + bytes(1024 - 12)
    return {
        "llmc_u16_tiny_cut": bytes([0, 7, 255, 1]) + hdr16 + tokens[1024:1024 + 2 * n],
        "llmc_u16_val": bytes([1, 3, 1, 6]) + val,
        "llmc_u16_tiny_shuffle": bytes([0, 15, 255, 9]) + tokens,
        "llmc_u32": bytes([0, 4, 200, 1]) + hdr32 + struct.pack("<16I", *range(0, 160, 10)),
        "llmc_truncated": bytes([0, 4, 255, 0]) + tokens[:1500],
        "raw_u16": bytes([2, 5, 255, 3]) + tokens[1024:1024 + 300],
        "raw_u32": bytes([3, 2, 1, 0]) + struct.pack("<12I", *range(12)),
        "raw_odd": bytes([3, 2, 1, 0]) + b"\x01\x02\x03",
        "no_header_auto": bytes([0, 2, 255, 0]) + tokens[1024:1100],
        "empty": bytes([2, 1, 1, 0]),
    }


def adapter_seeds(ckpt_dir):
    init = os.path.join(FIX, "train", "tiny", "adapter_init")
    init_cfg = read(os.path.join(init, "adapter_config.json"))
    tensors = read_safetensors(os.path.join(init, "adapter_model.safetensors"))
    q = {k: v for k, v in tensors.items() if ".layers.0.self_attn.q_proj." in k}
    assert len(q) == 2, q.keys()
    two = safetensors([(k, *v) for k, v in sorted(q.items())], {"format": "pt"})
    old_names = safetensors([(k.replace(".weight", ".default.weight"), *v) for k, v in sorted(q.items())])

    def to_half(dtype_name, v):
        d, shape, data = v
        floats = struct.unpack("<%df" % (len(data) // 4), data)
        if dtype_name == "F16":
            return (dtype_name, shape, struct.pack("<%de" % len(floats), *floats))
        return (dtype_name, shape, b"".join(struct.pack("<f", x)[2:] for x in floats))  # BF16
    halves = safetensors([(k, *to_half("F16" if "lora_A" in k else "BF16", v)) for k, v in sorted(q.items())])
    small_cfg = json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "q_proj",
                            "use_rslora": True, "lora_dropout": None}).encode()
    ours_cfg = read(os.path.join(ckpt_dir, "adapter_config.json"))
    ours = read(os.path.join(ckpt_dir, "adapter_model.safetensors"))
    return {
        "init_q_proj": files(init_cfg, two),
        "ours_checkpoint": files(ours_cfg, ours),
        "old_peft_names": files(small_cfg, old_names),
        "f16_bf16": files(small_cfg, halves),
        "not_lora": files(small_cfg, safetensors([("model.embed_tokens.weight", "F32", [2, 2], bytes(16))])),
        "bad_r": files(b'{"r": 0}', two),
        "no_weights": files(ours_cfg, None),
    }, ours_cfg


def checkpoint_seeds(ckpt_dir):
    state = read(os.path.join(ckpt_dir, "trainer_state.json"))
    cfg = read(os.path.join(ckpt_dir, "adapter_config.json"))
    opt = read(os.path.join(ckpt_dir, "optimizer.safetensors"))
    ada = read(os.path.join(ckpt_dir, "adapter_model.safetensors"))
    unsealed = json.loads(state)
    unsealed.pop("checksum")
    unsealed.pop("files")
    unsealed = json.dumps(unsealed).encode()
    # Regressions: mistyped values that load_checkpoint once met with an uncaught
    # nlohmann::json::type_error (std::terminate) instead of an error.
    def mistyped(edit):
        js = json.loads(unsealed)
        edit(js)
        return b"\x00" + files(json.dumps(js).encode(), cfg, opt, ada)
    sealed = json.loads(state)
    sealed.pop("checksum")

    def manifest_entry(entry):
        js = json.loads(json.dumps(sealed))
        js["files"]["adapter_config.json"].update(entry)
        return b"\x00" + files(json.dumps(js).encode(), cfg, opt, ada)
    # byte 0: layout (0 the checkpoint dir, 1 an out dir with `latest`, 2 without `latest`)
    return {
        "regress_format_number": mistyped(lambda js: js.update(format=5)),
        "regress_manifest_bytes_string": manifest_entry({"bytes": str(len(cfg))}),
        "regress_manifest_crc32_number": manifest_entry({"crc32": 7}),
        "sealed_dir": b"\x00" + files(state, cfg, opt, ada),
        "sealed_latest": b"\x01" + files(state, cfg, opt, ada),
        "sealed_newest": b"\x02" + files(state, cfg, opt, ada),
        "unsealed_dir": b"\x00" + files(unsealed, cfg, opt, ada),
        "no_optimizer": b"\x00" + files(unsealed, cfg, None, ada),
        "no_state": b"\x02" + files(None, cfg, opt, ada),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lora-compile", required=True)
    ap.add_argument("--lora-run", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds, plan = plan_seeds(args.lora_compile, tmp)
        write_corpus("fuzz_plan", seeds)
        write_corpus("fuzz_token_data", token_seeds())
        out = os.path.join(tmp, "run")
        subprocess.run([args.lora_run, plan, "--data", os.path.join(FIX, "train", "tiny", "tokens.bin"),
                        "--steps", "2", "--save-every", "2", "--out", out], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = os.path.join(out, "checkpoint-2")
        seeds, _ = adapter_seeds(ckpt)
        write_corpus("fuzz_peft_adapter", seeds)
        write_corpus("fuzz_checkpoint", checkpoint_seeds(ckpt))


if __name__ == "__main__":
    main()
