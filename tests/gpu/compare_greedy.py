#!/usr/bin/env python3
"""GPU against CPU on one model: greedy tokens and logits.

Runs `glmtp generate` greedily for --steps tokens with --ref-args (default the
CPU backend) and with --gpu-args (default "--device cuda"), the latter under
--launcher when given (e.g. "mpirun -np 2": tensor parallel on the GPU), and
scores the reference's whole sequence on both to compare every position's logits.

Pass when the logits agree within --logit-tol and the greedy tokens are equal,
or, where they differ, the GPU's logits put every token of the CPU's path within
--tol of their own top logit (a near-tie that bf16 rounding legitimately breaks
the other way: the GPU is then checked along the CPU's path, teacher-forced).

Prints one JSON line: {"exact": bool, "first_diff": k|null, "margin": m,
"logits_max_diff": d, "ok": bool, ...}; exit 0 when ok. Standard library only.

usage: compare_greedy.py GLMTP MODEL [--ids 1,2,3] [--steps 32] [--gpu-args "--device cuda"]
                         [--ref-args "--device cpu"] [--launcher "mpirun -np 2"] [--tol 0.25] [--logit-tol 0.25]
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))
from check_golden import teacher_forced_margin  # noqa: E402  (same scoring helper)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr}")
    return p.stdout


def greedy(glmtp, model, ids, steps, args, launcher=()):
    out = run(list(launcher) + [glmtp, "generate", "--model", model, "--ids", ",".join(map(str, ids)), "--max-new-tokens", str(steps),
               "--ignore-eos"] + args)
    return json.loads(out)["token_ids"]


def logits(glmtp, model, ids, args, launcher=()):
    out = run(list(launcher) + [glmtp, "score", "--model", model, "--ids", ",".join(map(str, ids)), "--dump", "logits", "--top", "0"]
              + args)
    return [json.loads(l)["logits"] for l in out.splitlines() if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("model")
    ap.add_argument("--ids", default="151331,151333,9703,11,1879,3837,1207")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--gpu-args", default="--device cuda")
    ap.add_argument("--ref-args", default="--device cpu")
    ap.add_argument("--launcher", default="")
    ap.add_argument("--tol", type=float, default=0.25)
    ap.add_argument("--logit-tol", type=float, default=0.25)
    a = ap.parse_args()
    ids = [int(x) for x in a.ids.split(",")]
    gpu_args, ref_args, launcher = shlex.split(a.gpu_args), shlex.split(a.ref_args), shlex.split(a.launcher)
    cpu_tok = greedy(a.glmtp, a.model, ids, a.steps, ref_args)
    gpu_tok = greedy(a.glmtp, a.model, ids, a.steps, gpu_args, launcher)
    first = next((k for k, (c, g) in enumerate(zip(cpu_tok, gpu_tok)) if c != g), None)
    margin = 0.0 if first is None else teacher_forced_margin(launcher, a.glmtp, a.model, ids, cpu_tok, gpu_args)
    seq = ids + cpu_tok[:-1]
    lc, lg = logits(a.glmtp, a.model, seq, ref_args), logits(a.glmtp, a.model, seq, gpu_args, launcher)
    dmax = max(abs(x - y) for rc, rg in zip(lc, lg) for x, y in zip(rc, rg))
    scale = max(abs(x) for r in lc for x in r)
    ok = (first is None or margin <= a.tol) and dmax <= a.logit_tol
    print(json.dumps({"model": a.model, "steps": a.steps, "exact": first is None, "first_diff": first,
                      "margin": margin, "tol": a.tol, "logits_max_diff": dmax, "logits_max_abs": scale,
                      "logit_tol": a.logit_tol, "ok": ok, "cpu_tokens": cpu_tok, "gpu_tokens": gpu_tok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
