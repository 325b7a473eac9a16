#!/usr/bin/env python3
"""glmtp tokenize --chat against the ids HF transformers' apply_chat_template
gives for glm-4-9b-chat's own chat template (tests/chat/cases.json, written by
make_chat_golden.py with transformers and tiktoken): every role, multi-turn
history, tools at request and message level (one and several, Chinese
descriptions, nested parameters, floats, built-in tools, an empty list),
tool-call history and observations, empty content, the generation prompt on and
off, special-token text in user content encoded as plain text. Cases of the
"chatglm" template revision run on a model directory whose
tokenizer_config.json holds that template (template/chatglm), so the preamble
is read from there. Also: a bad role and bad JSON fail with the field named.
usage: check_chat.py GLMTP VOCAB_DIR"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import check, finish  # noqa: E402


def tokenize(glmtp, vocab_dir, payload, gen=True):
    cmd = [glmtp, "tokenize", "--model", vocab_dir, "--chat"] + ([] if gen else ["--no-generation-prompt"])
    return subprocess.run(cmd, input=payload, capture_output=True, text=True, timeout=60)


def main():
    glmtp, vocab_dir = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    cases = json.load(open(os.path.join(here, "cases.json")))["cases"]
    tmp = tempfile.mkdtemp(prefix="glmtp-chat-")
    dirs = {"glm-4": vocab_dir, "chatglm": tmp}  # glm-4: no tokenizer_config.json, the built-in preamble
    shutil.copy(os.path.join(vocab_dir, "tokenizer.model"), tmp)
    shutil.copy(os.path.join(here, "template", "chatglm", "tokenizer_config.json"), tmp)
    for c in cases:
        payload = json.dumps({"messages": c["messages"], "tools": c["tools"]}, ensure_ascii=False)
        p = tokenize(glmtp, dirs[c["template"]], payload, c["add_generation_prompt"])
        got = json.loads(p.stdout) if p.returncode == 0 else None
        first = None if got is None else next((i for i, (x, y) in enumerate(zip(got, c["ids"])) if x != y),
                                              None if len(got) == len(c["ids"]) else min(len(got), len(c["ids"])))
        check(c["name"], got == c["ids"], "" if got == c["ids"] else f"first difference at {first}; {p.stderr.strip()}")
    shutil.rmtree(tmp)
    p = tokenize(glmtp, vocab_dir, json.dumps([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]))
    check("unknown role names the field", p.returncode != 0 and "messages[1].role" in p.stderr, p.stderr.strip())
    p = tokenize(glmtp, vocab_dir, json.dumps([{"role": "user", "content": 5}]))
    check("non-string content names the field", p.returncode != 0 and "messages[0].content" in p.stderr, p.stderr.strip())
    p = tokenize(glmtp, vocab_dir, "[{not json")
    check("bad JSON is refused", p.returncode != 0 and "not JSON" in p.stderr, p.stderr.strip())
    finish()


if __name__ == "__main__":
    main()
