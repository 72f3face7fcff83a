#!/usr/bin/env python3
"""Turn text files into llm.c token files (.bin) for lora-run.

Output format (what runtime/io/token_data.h reads): a header of 256 little-endian int32
(header[0] = magic, header[1] = version, header[2] = number of tokens, the rest 0), then the
tokens:
    magic 20240520, version 1   uint16 tokens (vocabularies up to 65536 ids)
    magic 20240801, version 7   uint32 tokens (larger vocabularies, e.g. Llama 3's 128256)

Tokenizers (pick one):
    --byte            token = byte value of the UTF-8 text, vocabulary 256 (the tiny demo
                      models). Needs nothing beyond the Python standard library. The default.
    --bpe N           train a byte-level BPE tokenizer of N ids (N >= 257: 256 bytes plus the
                      <|endoftext|> separator) on the given text with Hugging Face `tokenizers`
                      (pip install tokenizers) and save it as tokenizer.json next to the output.
    --tokenizer FILE  encode with an existing tokenizer.json (e.g. a base model's); needs
                      `tokenizers`.

Files are tokenized in the order given and concatenated; with --bpe/--tokenizer an end-of-text
token (when the tokenizer has one) separates them. With --val-fraction F the last F of the tokens
go to a second file (default: <output stem>_val.bin) and the rest to the output.

    python3 scripts/tokenize_text.py --byte -o data/train.bin --val-fraction 0.1 corpus.txt
    python3 scripts/tokenize_text.py --bpe 4096 -o data/train.bin a.txt b.txt
"""
import argparse
import array
import os
import struct
import sys

MAGIC_U16, VERSION_U16 = 20240520, 1
MAGIC_U32, VERSION_U32 = 20240801, 7
HEADER_INTS = 256
EOT = "<|endoftext|>"


def fail(msg):
    print(f"tokenize_text: error: {msg}", file=sys.stderr)
    sys.exit(1)


def write_llmc(path, tokens, vocab_size):
    """Writes `tokens` (a sequence of ints) as an llm.c file, atomically (tmp + rename)."""
    if len(tokens) > 2**31 - 1:
        fail(f"{path}: {len(tokens)} tokens do not fit the llm.c header's int32 count")
    wide = vocab_size > 65536
    arr = array.array("I" if wide else "H", tokens)
    if arr.itemsize != (4 if wide else 2):  # "I" is 4 bytes on every platform we support
        arr = array.array("L" if wide else "H", tokens)
    if sys.byteorder != "little":
        arr.byteswap()
    header = [0] * HEADER_INTS
    header[0], header[1] = (MAGIC_U32, VERSION_U32) if wide else (MAGIC_U16, VERSION_U16)
    header[2] = len(tokens)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return "uint32" if wide else "uint16"


def read_texts(paths):
    texts = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                texts.append(f.read())
        except OSError as e:
            fail(f"cannot read {p}: {e.strerror}")
    return texts


def tokenize_bytes(texts):
    tokens = array.array("H")
    for t in texts:
        tokens.extend(t)  # iterating bytes gives the byte values 0..255
    return tokens, 256


def load_tokenizers_module():
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        fail("--bpe and --tokenizer need Hugging Face `tokenizers` (pip install tokenizers); "
             "--byte needs nothing")
    return tokenizers


def train_bpe(texts, vocab_size, save_path):
    tk = load_tokenizers_module()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        fail(f"--bpe {vocab_size}: a byte-level BPE needs at least 257 ids (256 bytes + {EOT}); "
             "use --byte for a 256-id vocabulary")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    decoded = [t.decode("utf-8", errors="replace") for t in texts]
    tok.train_from_iterator(decoded, trainer=trainer)
    tok.save(save_path)
    print(f"tokenize_text: trained byte-level BPE, {tok.get_vocab_size()} ids "
          f"(tokenizers {tk.__version__}), saved {save_path}")
    return tok, decoded


def encode_with(tok, decoded):
    eot = tok.token_to_id(EOT)
    if eot is None:
        for name in ("<|end_of_text|>", "</s>", "<eos>"):
            eot = tok.token_to_id(name)
            if eot is not None:
                break
    tokens = []
    for i, text in enumerate(decoded):
        if i > 0 and eot is not None:
            tokens.append(eot)
        tokens.extend(tok.encode(text, add_special_tokens=False).ids)
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="text files (UTF-8), tokenized in this order")
    ap.add_argument("-o", "--output", required=True, help="llm.c token file to write (e.g. train.bin)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--byte", action="store_true", help="byte tokenizer, vocabulary 256 (default)")
    mode.add_argument("--bpe", type=int, metavar="N", help="train a byte-level BPE of N ids")
    mode.add_argument("--tokenizer", metavar="FILE", help="encode with an existing tokenizer.json")
    ap.add_argument("--save-tokenizer", metavar="FILE",
                    help="where --bpe saves tokenizer.json (default: next to the output)")
    ap.add_argument("--val-fraction", type=float, default=0.0,
                    help="fraction of tokens (taken from the end) written to the validation file")
    ap.add_argument("--val-output", help="validation file (default: <output stem>_val.bin)")
    args = ap.parse_args()

    if not 0.0 <= args.val_fraction < 1.0:
        fail(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    texts = read_texts(args.inputs)

    if args.bpe is not None:
        save = args.save_tokenizer or os.path.join(os.path.dirname(os.path.abspath(args.output)),
                                                   "tokenizer.json")
        tok, decoded = train_bpe(texts, args.bpe, save)
        tokens, vocab = encode_with(tok, decoded), tok.get_vocab_size()
    elif args.tokenizer is not None:
        load_tokenizers_module()
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(args.tokenizer)
        except Exception as e:  # tokenizers raises its own exception type
            fail(f"cannot load tokenizer {args.tokenizer}: {e}")
        decoded = [t.decode("utf-8", errors="replace") for t in texts]
        tokens, vocab = encode_with(tok, decoded), tok.get_vocab_size()
    else:
        tokens, vocab = tokenize_bytes(texts)

    n = len(tokens)
    if n == 0:
        fail("the input holds no tokens")
    n_val = int(n * args.val_fraction)
    if args.val_fraction > 0 and n_val == 0:
        fail(f"--val-fraction {args.val_fraction} of {n} tokens leaves no validation tokens")
    n_train = n - n_val
    kind = write_llmc(args.output, tokens[:n_train], vocab)
    print(f"tokenize_text: {args.output}: {n_train} tokens ({kind}, vocab {vocab})")
    if n_val:
        val_path = args.val_output or os.path.splitext(args.output)[0] + "_val.bin"
        write_llmc(val_path, tokens[n_train:], vocab)
        print(f"tokenize_text: {val_path}: {n_val} tokens ({kind}, vocab {vocab})")
    print(f"tokenize_text: {n} tokens from {len(args.inputs)} file(s), {sum(len(t) for t in texts)} bytes; "
          f"set the model's vocab_size >= {vocab}")


if __name__ == "__main__":
    main()
