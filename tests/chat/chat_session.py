#!/usr/bin/env python3
"""glmtp chat, scripted on stdin under mpirun -np 2: the first reply equals
what `generate` gives for the same messages; a second turn sees the history
(its prompt equals generate's with that history); /reset and /system are
obeyed; a history past the context is refused with a message and the session
goes on; /exit ends every rank with status 0.
usage: chat_session.py GLMTP VOCAB [--mpirun "mpiexec --oversubscribe"]"""
import argparse
import json
import shlex
import subprocess
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import check, finish  # noqa: E402


def generate(glmtp, model, messages, tmp):
    with open(f"{tmp}/in.jsonl", "w") as f:
        f.write(json.dumps({"messages": messages, "max_new_tokens": 10}) + "\n")
    p = subprocess.run([glmtp, "generate", "--model", model, "--input", f"{tmp}/in.jsonl"], capture_output=True,
                       text=True, timeout=120)
    return json.loads(p.stdout)["text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    launch = shlex.split(a.mpirun) + ["-np", "2"] if a.mpirun else []
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/m"
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "9", "--tokenizer",
                        a.vocab], check=True, capture_output=True)
        script = "hello there\nand again\n/reset\n/system be brief\nwho are you\n" + "word " * 300 + "\nok\n/exit\n"
        p = subprocess.run(launch + [a.glmtp, "chat", "--model", model, "--max-new-tokens", "10", "--kv-tokens",
                                     "128"], input=script, capture_output=True, text=True, timeout=300)
        check("chat exits 0 on /exit", p.returncode == 0, p.stderr[-300:])
        out = p.stdout.split("\n")
        replies = [l for l in out if l and not l.startswith("(")]
        r1 = generate(a.glmtp, model, [{"role": "user", "content": "hello there"}], tmp)
        check("first reply equals generate on the same message", len(replies) > 0 and replies[0] == r1,
              f"{replies[:1]} vs {[r1]}")
        r2 = generate(a.glmtp, model, [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": r1},
                                       {"role": "user", "content": "and again"}], tmp)
        check("second reply continues the history", len(replies) > 1 and replies[1] == r2, f"{replies[1:2]} vs {[r2]}")
        check("/reset and /system acknowledged", "(history cleared)" in out and
              "(system prompt set; history cleared)" in out)
        r3 = generate(a.glmtp, model, [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "who are you"}], tmp)
        check("after /system the history is only the system prompt", len(replies) > 2 and replies[2] == r3,
              f"{replies[2:3]} vs {[r3]}")
        check("a history past the context is refused, the session goes on",
              "exceeds the context of 128 tokens" in p.stderr and len(replies) == 4, p.stderr[-300:])
    finish()


if __name__ == "__main__":
    main()
