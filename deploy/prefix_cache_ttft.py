#!/usr/bin/env python3
"""Time to first token of questions over one long document, with and without
the prefix cache: `glmtp serve` on a made-up tiny model (its context raised to
fit the document), glmtp-client --json for each question, one at a time.

For each server (cache on, then --no-prefix-cache) it asks: question 1 (cold),
question 1 again (the repeated question), question 2 on the same document.
Prints a # preamble, a table with a units row, and the same rows as JSON.
usage: prefix_cache_ttft.py GLMTP GLMTP_CLIENT VOCAB [--words N] [--np N] [--mpirun "mpiexec"] [--threads N]
"""
import argparse
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(a, model, tmp, extra):
    addr = f"127.0.0.1:{free_port()}"
    errf = open(f"{tmp}/serve.{len(extra)}.err", "w+")
    launch = shlex.split(a.mpirun) + ["-np", str(a.np)] if a.np > 1 else []
    p = subprocess.Popen(launch + [a.glmtp, "serve", "--model", model, "--listen", addr, "--threads", str(a.threads),
                                   "--kv-tokens", str(a.kv_tokens), "--step-tokens", "2048", *extra],
                         stdout=subprocess.DEVNULL, stderr=errf)
    t0 = time.time()
    while time.time() - t0 < 120:
        errf.seek(0)
        m = re.search(r"listening on .* \(pid (\d+)", errf.read())
        if m:
            return p, int(m.group(1)), addr
        if p.poll() is not None:
            break
        time.sleep(0.1)
    errf.seek(0)
    sys.exit(f"serve did not start: {errf.read()[-2000:]}")


def ask(a, addr, tmp, doc, question):
    path = f"{tmp}/chat.json"
    with open(path, "w") as f:
        json.dump([{"role": "user", "content": doc + "\n\n" + question}], f)
    p = subprocess.run([a.client, "--connect", addr, "--json", "--chat", path, "--max-new-tokens", "4",
                        "--temperature", "0"], capture_output=True, text=True, timeout=600)
    if p.returncode:
        sys.exit(f"glmtp-client failed: {p.stderr[-1000:]}")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("vocab")
    ap.add_argument("--words", type=int, default=16000, help="document length in words (about 2 tokens each)")
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--mpirun", default="mpiexec --oversubscribe")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    rnd = random.Random(1)
    vocab = "river stone lamp window garden silver orange quiet thunder paper bridge winter".split()
    doc = " ".join(f"{rnd.choice(vocab)}{rnd.randrange(100)}" for _ in range(a.words))
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/model"
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "1", "--dtype", "f32",
                        "--tokenizer", a.vocab], check=True, capture_output=True)
        cfg = json.load(open(f"{model}/config.json"))
        cfg["seq_length"] = 8 * a.words + 4096  # the tiny preset's 4096 is too short for the document
        json.dump(cfg, open(f"{model}/config.json", "w"))
        a.kv_tokens = cfg["seq_length"] * 2
        rows = []
        for label, extra in (("on", []), ("off", ["--no-prefix-cache"])):
            p, pid, addr = start(a, model, tmp, extra)
            for what, q in (("question 1 (cold)", "What is the first word?"),
                            ("question 1 again", "What is the first word?"),
                            ("question 2, same document", "What is the last word?")):
                r = ask(a, addr, tmp, doc, q)
                u = r.get("usage", {})
                rows.append({"cache": label, "request": what, "prompt_tokens": u.get("prompt_tokens"),
                             "cached_tokens": u.get("cached_tokens", 0), "ttft_ms": r["ttft_ms"]})
            os.kill(pid, signal.SIGTERM)
            p.wait(timeout=120)
        print(f"# glmtp prefix cache TTFT: tiny model (2 layers, hidden 128), {a.np} rank(s), "
              f"threads {a.threads or 'all'}, CPU, {os.cpu_count()} cores; document {rows[0]['prompt_tokens']} tokens")
        print(f"{'cache':>5} {'request':>27} {'prompt':>8} {'cached':>8} {'TTFT':>10}")
        print(f"{'':>5} {'':>27} {'(tok)':>8} {'(tok)':>8} {'(ms)':>10}")
        for r in rows:
            print(f"{r['cache']:>5} {r['request']:>27} {r['prompt_tokens']:>8} {r['cached_tokens']:>8} "
                  f"{r['ttft_ms']:>10.1f}")
        on = [r["ttft_ms"] for r in rows if r["cache"] == "on"]
        off = [r["ttft_ms"] for r in rows if r["cache"] == "off"]
        print(f"# repeated question: {off[1]:.1f} ms without the cache, {on[1]:.1f} ms with it "
              f"({off[1] / on[1]:.1f}x)")
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
