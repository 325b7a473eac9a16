#!/usr/bin/env python3
"""Compares glmtp score over a long context with the HF transformers reference.

reference.json (tests/golden/make_long_golden.py) holds the ids of a context of
64K tokens and HF GlmForCausalLM's logits for its last `window` positions,
from one prefill over all of them. This runs `glmtp score --ids-file F --from
n-window --dump logits` (one prefill of the positions before the window without
logits, then the window) and checks every window logit within --tol and each
row's argmax equal wherever HF's top two are further apart than --tol.
Standard library only (CI has no PyTorch).

usage: check_long.py GLMTP CASE_DIR [--launcher "mpirun -np 2 ..."] [--tol 2e-4]
"""
import argparse
import base64
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("case")
    ap.add_argument("--launcher", default="")
    ap.add_argument("--tol", type=float, default=2e-4)
    ap.add_argument("--extra-args", default="")
    a = ap.parse_args()
    with open(os.path.join(a.case, "reference.json")) as f:
        ref = json.load(f)
    ids = list(base64.b64decode(ref["ids_b64"]))
    n, win = ref["n_tokens"], ref["window"]
    if len(ids) != n:
        sys.exit(f"FAIL: reference.json holds {len(ids)} ids, says {n}")
    with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as f:
        f.write(" ".join(map(str, ids)))
        ids_path = f.name
    cmd = shlex.split(a.launcher) + [a.glmtp, "score", "--model", os.path.join(a.case, "chatglm"),
                                     "--ids-file", ids_path, "--from", str(n - win), "--dump", "logits",
                                     "--top", "0"] + shlex.split(a.extra_args)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    dt = time.time() - t0
    os.unlink(ids_path)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr}")
    rows = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    if [r["pos"] for r in rows] != list(range(n - win, n)):
        sys.exit(f"FAIL: score printed positions {[r['pos'] for r in rows][:5]}..., want {n - win}..{n - 1}")
    worst, where, bad_argmax = 0.0, None, []
    for i, (r, want) in enumerate(zip(rows, ref["window_logits"])):
        got = r["logits"]
        for j, (g, w) in enumerate(zip(got, want)):
            if abs(g - w) > worst:
                worst, where = abs(g - w), (n - win + i, j, g, w)
        top = sorted(want, reverse=True)
        am = max(range(len(got)), key=lambda k: got[k])
        if am != ref["window_argmax"][i] and top[0] - top[1] > a.tol:
            bad_argmax.append((n - win + i, am, ref["window_argmax"][i]))
    print(f"{n} tokens ({a.launcher or 'one rank'}): {dt:.1f} s; window of {win} positions: "
          f"max |glmtp - HF| logit = {worst:.3e} at {where}")
    if worst > a.tol or bad_argmax:
        sys.exit(f"FAIL: logits past tol {a.tol} or argmax differs: {bad_argmax[:5]}")
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
