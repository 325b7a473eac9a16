#!/usr/bin/env python3
"""Compares glmtp score against the committed HF transformers reference.

For one golden case and layout: runs `glmtp score` as one prefill and with
--incremental (decode path, KV cache), dumping logits and hidden states, and
checks every value against reference.json (made by make_golden.py with HF
GlmForCausalLM) within --tol. Also checks greedy generation from the first 4
ids against the reference's greedy tokens. Standard library only (CI has no
PyTorch). Exit 0 on match, 1 with the worst mismatch printed otherwise.

usage: check_golden.py GLMTP CASE_DIR LAYOUT [--launcher "mpirun -np 2 ..."] [--tol 1e-4]
"""
import argparse
import json
import shlex
import subprocess
import sys


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr}")
    return p.stdout


def score(launcher, glmtp, model, ids, extra):
    out = run(launcher + [glmtp, "score", "--model", model, "--ids", ",".join(map(str, ids))] + extra)
    rows = [json.loads(l) for l in out.splitlines() if l.strip()]
    if [r["pos"] for r in rows] != list(range(len(ids))):
        sys.exit(f"FAIL: score printed positions {[r['pos'] for r in rows]}")
    return rows


def max_diff(name, got, want):
    worst, where = 0.0, None
    for i, (g, w) in enumerate(zip(got, want)):
        if len(g) != len(w):
            sys.exit(f"FAIL: {name} row {i}: {len(g)} values, reference has {len(w)}")
        for j, (a, b) in enumerate(zip(g, w)):
            d = abs(a - b)
            if d > worst:
                worst, where = d, (i, j, a, b)
    return worst, where


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("case")
    ap.add_argument("layout", choices=["chatglm", "hf"])
    ap.add_argument("--launcher", default="")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    ref = json.load(open(f"{a.case}/reference.json"))
    model = f"{a.case}/{a.layout}"
    launcher = shlex.split(a.launcher)
    ids = ref["ids"]
    failed = False
    for mode, extra in (("prefill", []), ("incremental", ["--incremental"])):
        want_logits = ref["prefill_logits"] if mode == "prefill" else ref["decode_logits"]
        lrows = score(launcher, a.glmtp, model, ids, extra + ["--dump", "logits"])
        hrows = score(launcher, a.glmtp, model, ids, extra + ["--dump", "hidden"])
        for name, got, want in (("logits", [r["logits"] for r in lrows], want_logits),
                                ("hidden", [r["hidden"] for r in hrows], ref["prefill_hidden"])):
            d, where = max_diff(f"{mode} {name}", got, want)
            ok = d <= a.tol
            failed |= not ok
            print(f"{'ok  ' if ok else 'FAIL'} {a.case} {a.layout} {mode:11s} {name:6s} max|diff| {d:.3g}"
                  + ("" if ok else f" at row {where[0]} col {where[1]}: glmtp {where[2]} reference {where[3]}"))
    gen = json.loads(run(launcher + [a.glmtp, "generate", "--model", model, "--ids", ",".join(map(str, ids[:4])),
                                     "--max-new-tokens", str(len(ref["greedy_from_4"])), "--ignore-eos"]))
    ok = gen["token_ids"] == ref["greedy_from_4"]
    failed |= not ok
    print(f"{'ok  ' if ok else 'FAIL'} {a.case} {a.layout} greedy {gen['token_ids']}" + ("" if ok else f" reference {ref['greedy_from_4']}"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
