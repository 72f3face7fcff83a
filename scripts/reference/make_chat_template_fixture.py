#!/usr/bin/env python3
"""transformers' own chat-template rendering of the chat fixture, for prepare_data.py to match.

tests/fixtures/chat/zephyr_tok/ holds a byte-level BPE tokenizer.json of 400 ids (trained on
tests/fixtures/chat/chats.jsonl by scripts/tokenize_text.py --bpe 400) and a tokenizer_config.json
with a Zephyr-style chat template (eos_token <|endoftext|>). This script renders the first 40
conversations with transformers' `apply_chat_template(messages, tokenize=True)` and writes the
token ids to tests/fixtures/chat/zephyr_tok/reference_ids.json; tests/tools/prepare_data_hf.test
checks that scripts/prepare_data.py --model produces the same ids (it renders the template with
jinja2 the way transformers does, without transformers).

    ~/.venvs/parallora-ref/bin/python scripts/reference/make_chat_template_fixture.py
"""
import json
import os

import transformers
from transformers import AutoTokenizer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOK = os.path.join(REPO, "tests", "fixtures", "chat", "zephyr_tok")
N = 40


def main():
    tok = AutoTokenizer.from_pretrained(TOK)
    rows = [json.loads(line) for line in open(os.path.join(REPO, "tests", "fixtures", "chat", "chats.jsonl"))][:N]
    ids = []
    for r in rows:
        out = tok.apply_chat_template(r["messages"], tokenize=True)
        ids.append(list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out))
    with open(os.path.join(TOK, "reference_ids.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "records": N, "ids": ids}, f)
        f.write("\n")
    print(f"{N} conversations, {sum(map(len, ids))} tokens (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
