#!/usr/bin/env python3
"""Prepare instruction / chat / text data for lora-run: a token file plus a label-mask file.

    prepare_data.py chat.jsonl --model BASE_MODEL_DIR -o data/chat.bin --val-fraction 0.05
    prepare_data.py alpaca.parquet --byte --max-seq-len 128 -o data/alpaca.bin

Reads JSONL (one record a line), JSON (a list of records) or Parquet (pyarrow) records in one of
three layouts (--format auto picks by the first record's fields):
    alpaca  {"instruction", "input" (optional), "output"}: user = instruction [+ "\\n\\n" + input],
            assistant = output
    chat    {"messages": [{"role", "content"}, ...]}: roles system (optional, first), then user and
            assistant alternating, ending with assistant. ShareGPT's from/value and human/gpt are
            accepted through --field (e.g. --field messages=conversations --field role=from
            --field content=value; human -> user, gpt -> assistant).
    text    {"text"}: every token is trained (no template)
--field KEY=NAME renames a field (keys: instruction input output messages role content text).

Conversations are rendered with the base model's chat template (tokenizer_config.json's
`chat_template`, rendered with jinja2 as transformers' apply_chat_template does: trim_blocks,
lstrip_blocks, raise_exception, bos_token / eos_token) or, for a model without one and for --byte,
the default template DEFAULT_TEMPLATE below (ChatML-style markers as plain text). Tokens come from
the model's tokenizer.json (Hugging Face `tokenizers`) or --byte (token = UTF-8 byte, vocabulary 256;
the tiny test models).

Labels: a token is trained (mask 1) when it belongs to an assistant message as the template renders
it (its content and the template's end-of-turn text), found by rendering each prefix of the
conversation with add_generation_prompt=True; --train-on-inputs trains every token. The first token
of every example is never trained (nothing precedes it in its example).

Output: OUT.bin (llm.c token file, as scripts/tokenize_text.py writes) and OUT.mask (format in
docs/training.md, "Label-mask files"); with --val-fraction or --val, OUT_val.bin / OUT_val.mask too.
Errors name the file and the record (line number for JSONL) and exit 1; usage errors exit 2.
"""
import argparse
import array
import json
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenize_text import write_llmc  # noqa: E402  (llm.c token files: one writer)

MASK_MAGIC, MASK_VERSION = 20261206, 1
HEADER_INTS = 256
FLAG_TRAIN_ON_INPUTS = 1

# The default chat template (models without `chat_template`, and --byte): ChatML-style markers as
# plain text, so it works with any tokenizer, the byte one included.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
FIELD_KEYS = ("instruction", "input", "output", "messages", "role", "content", "text")


class DataError(Exception):
    pass


def fail(msg, code=1):
    print(f"prepare_data: error: {msg}", file=sys.stderr)
    sys.exit(code)


def need(module, what):
    try:
        return __import__(module)
    except ImportError:
        fail(f"{what} needs the Python package `{module}`: scripts/install_deps.sh installs it into "
             f"~/.venvs/parallora-data (run this script with ~/.venvs/parallora-data/bin/python)")


# ---------------------------------------------------------------------------------------------
# Reading records: (where, record) with `where` = "file:line" (JSONL) or "file: record N".

def read_records(path):
    if not os.path.exists(path):
        fail(f"{path}: no such file")
    if path.endswith(".parquet"):
        import importlib
        need("pyarrow", "reading Parquet")
        pq = importlib.import_module("pyarrow.parquet")
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            fail(f"{path}: not a readable Parquet file ({e})")
        for i, r in enumerate(rows):
            yield f"{path}: row {i + 1}", r
        return
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if path.endswith(".json") and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{path}:{e.lineno}: invalid JSON ({e.msg})")
        for i, r in enumerate(rows):
            yield f"{path}: record {i + 1}", r
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}: invalid JSON ({e.msg})")
        yield f"{path}:{n}", r


def detect_format(record, fields, where):
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if fields["messages"] in record:
        return "chat"
    if fields["instruction"] in record and fields["output"] in record:
        return "alpaca"
    if fields["text"] in record:
        return "text"
    raise DataError(f"{where}: cannot tell the format from the fields {sorted(record)}: expected "
                    f"'{fields['messages']}' (chat), '{fields['instruction']}' + '{fields['output']}' "
                    f"(alpaca) or '{fields['text']}' (text); use --format / --field")


def get_str(record, key, where, fmt, optional=False):
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if key not in record or record[key] is None:
        if optional:
            return ""
        raise DataError(f"{where}: the {fmt} record has no field '{key}' (its fields: {', '.join(sorted(record)) or 'none'})")
    v = record[key]
    if not isinstance(v, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(v).__name__}")
    return v


def to_messages(record, fmt, fields, where):
    """A record as chat messages [{"role", "content"}], checked: roles alternate, answers non-empty."""
    if fmt == "alpaca":
        instr = get_str(record, fields["instruction"], where, fmt)
        inp = get_str(record, fields["input"], where, fmt, optional=True)
        out = get_str(record, fields["output"], where, fmt)
        user = instr + ("\n\n" + inp if inp.strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
    else:
        if not isinstance(record, dict) or fields["messages"] not in record:
            raise DataError(f"{where}: the chat record has no field '{fields['messages']}' "
                            f"(its fields: {', '.join(sorted(record)) if isinstance(record, dict) else type(record).__name__})")
        raw = record[fields["messages"]]
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{where}: '{fields['messages']}' must be a non-empty list of messages")
        msgs = []
        for k, m in enumerate(raw):
            w = f"{where}: message {k + 1}"
            role = get_str(m, fields["role"], w, "chat message")
            content = get_str(m, fields["content"], w, "chat message")
            msgs.append({"role": ROLE_ALIASES.get(role, role), "content": content})
    check_roles(msgs, where)
    return msgs


def check_roles(msgs, where):
    start = 1 if msgs[0]["role"] == "system" else 0
    for k, m in enumerate(msgs):
        want = "system" if k < start else ("user" if (k - start) % 2 == 0 else "assistant")
        if m["role"] != want:
            raise DataError(f"{where}: message {k + 1} has role '{m['role']}' but the template needs "
                            f"'{want}' (an optional system message, then user and assistant alternating)")
        if m["role"] == "assistant" and not m["content"].strip():
            raise DataError(f"{where}: message {k + 1} is an empty assistant answer (nothing to train on)")
    if len(msgs) - start < 2 or msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation must end with an assistant answer "
                        f"(roles: {[m['role'] for m in msgs]})")


# ---------------------------------------------------------------------------------------------
# Chat template: rendered as transformers' apply_chat_template renders it.

class Template:
    def __init__(self, source, special):
        jinja2 = need("jinja2", "rendering chat templates")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda f: time.strftime(f)
        self.template = env.from_string(source)
        self.special = special
        self.error = jinja2.exceptions.TemplateError

    def render(self, messages, add_generation_prompt, where):
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special)
        except self.error as e:
            raise DataError(f"{where}: the chat template refused the conversation: {e}")

    def pieces(self, msgs, where):
        """[(text, is_answer)] whose concatenation is the rendered conversation."""
        full = self.render(msgs, False, where)
        out, pos = [], 0
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = self.render(msgs[:k], True, where)
            upto = self.render(msgs[:k + 1], False, where)
            if not full.startswith(upto) or not upto.startswith(prompt) or len(prompt) < pos:
                raise DataError(f"{where}: the chat template does not render the conversation's prefixes "
                                f"as prefixes of the whole (message {k + 1}), so the answer tokens cannot be found")
            out.append((full[pos:len(prompt)], False))
            out.append((full[len(prompt):len(upto)], True))
            pos = len(upto)
        out.append((full[pos:], False))
        return [p for p in out if p[0]]


# ---------------------------------------------------------------------------------------------
# Tokenizers: encode([(text, trained)]) -> (ids, mask).

class ByteTokenizer:
    vocab_size = 256
    pad_id = 0
    eos_text = None
    name = "byte (UTF-8 bytes, vocabulary 256)"

    def encode(self, pieces):
        ids, mask = [], []
        for text, trained in pieces:
            b = text.encode("utf-8")
            ids.extend(b)
            mask.extend([1 if trained else 0] * len(b))
        return ids, mask


class HfTokenizer:
    def __init__(self, model_dir):
        tokenizers = need("tokenizers", "--model (tokenizer.json)")
        path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.exists(path):
            fail(f"--model {model_dir}: no tokenizer.json (use --byte for the byte-level tiny models)", 2)
        self.tok = tokenizers.Tokenizer.from_file(path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        self.config = {}
        if os.path.exists(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                self.config = json.load(f)
        eos = token_text(self.config.get("eos_token"))
        pad = token_text(self.config.get("pad_token")) or eos
        self.pad_id = (self.tok.token_to_id(pad) if pad else None) or 0
        self.eos_text = eos
        self.name = f"{path} (vocabulary {self.vocab_size})"

    def encode(self, pieces):
        text = "".join(p[0] for p in pieces)
        enc = self.tok.encode(text, add_special_tokens=False)
        spans, pos = [], 0
        for t, trained in pieces:
            if trained:
                spans.append((pos, pos + len(t)))
            pos += len(t)
        mask = []
        for (s, e) in enc.offsets:
            mask.append(1 if any(a <= s < b for a, b in spans) else 0)
        return list(enc.ids), mask


def token_text(t):
    if isinstance(t, dict):  # AddedToken serialised as a dict
        return t.get("content")
    return t


# ---------------------------------------------------------------------------------------------

def write_mask(path, mask, starts, vocab_size, pad_id, flags, num_trained, max_len):
    header = [0] * HEADER_INTS
    n, docs = len(mask), len(starts) - 1
    header[0], header[1] = MASK_MAGIC, MASK_VERSION
    header[2], header[3] = n & 0xFFFFFFFF, n >> 32
    header[4], header[5] = docs & 0xFFFFFFFF, docs >> 32
    header[6], header[7], header[8] = vocab_size, flags, pad_id
    header[9], header[10] = num_trained & 0xFFFFFFFF, num_trained >> 32
    header[11] = max_len
    body = bytes(mask)
    pad = (-len(body)) % 8
    offs = array.array("q", starts)
    if sys.byteorder != "little":
        offs.byteswap()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<256I", *header))
        f.write(body)
        f.write(b"\0" * pad)
        f.write(offs.tobytes())
    os.replace(tmp, path)


def write_split(stem, examples, tok, flags, label):
    ids, mask, starts = [], [], [0]
    for e_ids, e_mask in examples:
        ids.extend(e_ids)
        mask.extend(e_mask)
        starts.append(len(ids))
    bad = next((t for t in ids if t >= tok.vocab_size or t < 0), None)
    if bad is not None:
        fail(f"token id {bad} is outside the tokenizer's vocabulary of {tok.vocab_size}")
    write_llmc(stem + ".bin", ids, tok.vocab_size)
    trained = sum(mask)
    write_mask(stem + ".mask", mask, starts, tok.vocab_size, tok.pad_id, flags, trained,
               max((len(e[0]) for e in examples), default=0))
    print(f"  {label}: {stem}.bin + {stem}.mask: {len(examples)} examples, {len(ids)} tokens, "
          f"{trained} trained ({100.0 * (1 - trained / max(1, len(ids))):.1f}% masked)")
    return len(ids), trained


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("inputs", nargs="+", help="JSONL, JSON or Parquet files (records in file order)")
    ap.add_argument("-o", "--output", required=True, help="token file OUT.bin (OUT.mask written next to it)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="base model directory: tokenizer.json [+ tokenizer_config.json]")
    src.add_argument("--byte", action="store_true", help="token = UTF-8 byte, vocabulary 256 (tiny models)")
    ap.add_argument("--format", default="auto", choices=["auto", "alpaca", "chat", "text"])
    ap.add_argument("--field", action="append", default=[], metavar="KEY=NAME",
                    help=f"field name override, KEY one of {', '.join(FIELD_KEYS)}")
    ap.add_argument("--chat-template", help="a Jinja file replacing the model's chat template")
    ap.add_argument("--train-on-inputs", action="store_true", help="train on the prompt tokens too")
    ap.add_argument("--max-seq-len", type=int, default=0, help="longest example in tokens (0: no limit)")
    ap.add_argument("--overlong", default="drop", choices=["drop", "truncate"],
                    help="what happens to an example longer than --max-seq-len (counted either way)")
    ap.add_argument("--val-fraction", type=float, default=0.0, help="share of examples held out to OUT_val")
    ap.add_argument("--val", nargs="+", default=[], help="held-out files prepared the same way into OUT_val")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction draw")
    a = ap.parse_args()

    fields = {k: k for k in FIELD_KEYS}
    for f in a.field:
        k, _, v = f.partition("=")
        if k not in fields or not v:
            fail(f"--field {f}: expected KEY=NAME with KEY one of {', '.join(FIELD_KEYS)}", 2)
        fields[k] = v
    if not 0.0 <= a.val_fraction < 1.0:
        fail(f"--val-fraction {a.val_fraction}: must be in [0, 1)", 2)
    if a.val and a.val_fraction:
        fail("--val and --val-fraction exclude each other", 2)
    if a.max_seq_len < 0:
        fail(f"--max-seq-len {a.max_seq_len}: must be >= 0", 2)
    stem = a.output[:-4] if a.output.endswith(".bin") else a.output

    tok = ByteTokenizer() if a.byte else HfTokenizer(a.model)
    special = {"bos_token": "", "eos_token": "", "pad_token": "", "unk_token": ""}
    source, template_name = DEFAULT_TEMPLATE, "default (ChatML-style, docs/training.md)"
    if not a.byte:
        for k in special:
            special[k] = token_text(tok.config.get(k)) or ""
        t = tok.config.get("chat_template")
        if isinstance(t, list):  # named templates: take "default"
            t = next((x["template"] for x in t if x.get("name") == "default"), None)
        if t:
            source, template_name = t, f"{a.model}/tokenizer_config.json"
    if a.chat_template:
        with open(a.chat_template, encoding="utf-8") as f:
            source, template_name = f.read(), a.chat_template
    template = Template(source, special)
    flags = FLAG_TRAIN_ON_INPUTS if a.train_on_inputs else 0

    stats = {"records": 0, "truncated": 0, "dropped_long": 0, "dropped_empty": 0}
    t0 = time.time()

    def prepare(paths):
        out = []
        for path in paths:
            fmt = None if a.format == "auto" else a.format
            for where, rec in read_records(path):
                stats["records"] += 1
                try:
                    if fmt is None:
                        fmt = detect_format(rec, fields, where)
                    if fmt == "text":
                        text = get_str(rec, fields["text"], where, fmt)
                        if not text:
                            raise DataError(f"{where}: empty '{fields['text']}'")
                        pieces = [(text + (tok.eos_text or ""), True)]
                    else:
                        msgs = to_messages(rec, fmt, fields, where)
                        pieces = template.pieces(msgs, where)
                        if a.train_on_inputs:
                            pieces = [(p, True) for p, _ in pieces]
                    ids, mask = tok.encode(pieces)
                except DataError as e:
                    fail(str(e))
                cut = a.max_seq_len and len(ids) > a.max_seq_len
                if cut:
                    if a.overlong == "drop":
                        stats["dropped_long"] += 1
                        continue
                    stats["truncated"] += 1
                    ids, mask = ids[:a.max_seq_len], mask[:a.max_seq_len]
                if mask:
                    mask[0] = 0  # nothing of this example precedes its first token
                if not any(mask):
                    if not cut:
                        fail(f"{where}: no token to train on (the answer renders to no token)")
                    stats["dropped_empty"] += 1  # truncation cut the whole answer
                    continue
                out.append((ids, mask))
                if sys.stderr.isatty() and stats["records"] % 200 == 0:
                    print(f"\r  {stats['records']} records, {time.time() - t0:.1f} s", end="", file=sys.stderr)
        if sys.stderr.isatty():
            print("\r", end="", file=sys.stderr)
        return out

    train = prepare(a.inputs)
    val = prepare(a.val) if a.val else []
    if a.val_fraction:
        order = list(range(len(train)))
        random.Random(a.seed).shuffle(order)
        k = max(1, int(round(a.val_fraction * len(train))))
        held = set(order[:k])
        val = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
    if not train:
        fail("no example left to train on")

    print(f"prepare_data: {stats['records']} records from {len(a.inputs) + len(a.val)} file(s), "
          f"tokenizer {tok.name}, template {template_name}"
          f"{', training on inputs' if a.train_on_inputs else ''}")
    if a.max_seq_len:
        print(f"  --max-seq-len {a.max_seq_len}: {stats['dropped_long']} dropped as too long, "
              f"{stats['truncated']} truncated ({stats['dropped_empty']} of them dropped: no answer token left)")
    write_split(stem, train, tok, flags, "train")
    if val:
        write_split(stem + "_val", val, tok, flags, "val")


if __name__ == "__main__":
    main()
