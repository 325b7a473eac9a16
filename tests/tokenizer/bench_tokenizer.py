#!/usr/bin/env python3
"""Tokenizer throughput: `glmtp tokenize --bench` against tiktoken, same text, one thread each.

Developers only (needs `pip install tiktoken`); not part of CI.

Usage:
    python3 tests/tokenizer/bench_tokenizer.py [--glmtp build/glmtp] [--repeat 10] [--json]

Documents (all deterministic, built by make_golden.py's generators):
  long      the ~200 KB mixed golden long document (English, code, Chinese, emoji, numbers, whitespace)
  chinese   ~200 KB of mostly Chinese sentences
  1M-token  the long-document generator run to ~2.5 MB, about 1M tokens
For each: best-of-N encode time of glmtp (C, PCRE2 JIT; timed inside the process, tokenizer load
excluded) and of tiktoken's Encoding.encode_ordinary (Rust; timed around the call from Python,
so it includes building the Python list of ids), MB/s (1e6 bytes/s), the ratio, and whether both
produced the same ids (glmtp's ids via `glmtp tokenize`, compared in full).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import make_golden  # noqa: E402  (generators and the reference Encoding)


def glmtp_run(glmtp, vocab, data, *extra):
    r = subprocess.run([glmtp, "tokenize", "--tokenizer", vocab, *extra], input=data, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"glmtp tokenize {' '.join(extra)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r.stdout


def tiktoken_best(enc, text, repeat):
    enc.encode_ordinary(text)  # warm-up, untimed
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        ids = enc.encode_ordinary(text)
        best = min(best, time.perf_counter() - t0)
    return best, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--glmtp", default=os.path.join(ROOT, "build", "glmtp"))
    ap.add_argument("--vocab", default=os.path.join(ROOT, "tests/data/glm4-tokenizer/tokenizer.model"))
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="also print one JSON line per document")
    a = ap.parse_args()

    t0 = time.perf_counter()
    enc = make_golden.load_encoding(a.vocab)
    tk_load = time.perf_counter() - t0
    docs = [("long", make_golden.long_document()),
            ("chinese", make_golden.chinese_document()),
            ("1M-token", make_golden.long_document(seed=3, nbytes=2_500_000))]

    print(f"# glmtp tokenizer bench: {a.glmtp}")
    print(f"# tiktoken {tiktoken.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"cpu {_cpu_name()}, repeat {a.repeat} (best of; 1 warm-up for tiktoken), single thread")
    print(f"# tiktoken Encoding build (from {os.path.basename(a.vocab)}): {tk_load:.3f} s")
    print(f"{'doc':>9} {'bytes':>9} {'tokens':>8} {'glmtp':>9} {'tiktoken':>9} {'glmtp':>8} {'tiktoken':>8} {'ratio':>6} {'ids':>5}")
    print(f"{'':>9} {'(B)':>9} {'':>8} {'(ms)':>9} {'(ms)':>9} {'(MB/s)':>8} {'(MB/s)':>8} {'':>6} {'':>5}")
    rows, all_same = [], True
    for name, text in docs:
        data = text.encode("utf-8")
        g = json.loads(glmtp_run(a.glmtp, a.vocab, data, "--bench", "--repeat", str(a.repeat)))
        g_ids = json.loads(glmtp_run(a.glmtp, a.vocab, data))
        t_best, t_ids = tiktoken_best(enc, text, a.repeat)
        same = g_ids == t_ids
        all_same &= same
        t_mbs = len(data) / 1e6 / t_best
        row = {"doc": name, "bytes": len(data), "tokens": len(t_ids), "glmtp_seconds": g["seconds_best"],
               "tiktoken_seconds": t_best, "glmtp_mb_per_s": g["mb_per_s"], "tiktoken_mb_per_s": t_mbs,
               "ratio": g["mb_per_s"] / t_mbs, "ids_equal": same, "glmtp_load_seconds": g["load_seconds"]}
        rows.append(row)
        print(f"{name:>9} {len(data):>9} {len(t_ids):>8} {1e3 * g['seconds_best']:>9.2f} {1e3 * t_best:>9.2f} "
              f"{g['mb_per_s']:>8.1f} {t_mbs:>8.1f} {row['ratio']:>5.2f}x {'OK' if same else 'DIFF':>5}")
    print(f"# glmtp tokenizer load (tok_load, 151329 tokens): {rows[0]['glmtp_load_seconds']:.3f} s")
    print(f"# ratio = glmtp MB/s / tiktoken MB/s; ids: {'all equal OK' if all_same else 'DIFFERENT -- FAILED'}")
    if a.json:
        for r in rows:
            print(json.dumps(r))
    return 0 if all_same else 1


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
