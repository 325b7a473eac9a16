#!/usr/bin/env python3
"""Two ways of running the same batch that must give the same greedy tokens:
`glmtp generate` of a batch of prompts (a decode batch that is not a power of
two, so graph steps carry padding tokens) with the environment --env-a and
--env-b (VAR=VALUE,...). By default: CUDA graphs (the default) against
GLMTP_NO_CUDA_GRAPHS=1; the same kernels run either way, except that a graph
step sizes attention's sequence splits from its table width. Also used for
fused kernels against the ops they replace. Prints one JSON line; exit 0 when
every request's tokens are equal.

usage: compare_runs.py GLMTP MODEL [--requests 5] [--steps 24] [--args "--device cuda"]
                         [--env-a ""] [--env-b GLMTP_NO_CUDA_GRAPHS=1]
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile


def generate(glmtp, model, path, steps, args, extra_env):
    env = dict(os.environ)
    for kv in filter(None, extra_env.split(",")):
        k, _, v = kv.partition("=")
        env[k] = v
    p = subprocess.run([glmtp, "generate", "--model", model, "--input", path, "--max-new-tokens", str(steps),
                        "--ignore-eos"] + args, capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        sys.exit(f"FAIL: generate ({extra_env or 'default'}) exited {p.returncode}\n{p.stderr}")
    return [json.loads(l)["token_ids"] for l in p.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--args", default="--device cuda")
    ap.add_argument("--env-a", default="")
    ap.add_argument("--env-b", default="GLMTP_NO_CUDA_GRAPHS=1")
    a = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for i in range(a.requests):  # prompts of different lengths: ragged contexts in one decode batch
            ids = [151331, 151333] + [(977 * (i + 1) + 31 * j) % 150000 for j in range(3 + 7 * i)]
            f.write(json.dumps({"id": f"r{i}", "input_ids": ids}) + "\n")
        path = f.name
    try:
        g = generate(a.glmtp, a.model, path, a.steps, shlex.split(a.args), a.env_a)
        e = generate(a.glmtp, a.model, path, a.steps, shlex.split(a.args), a.env_b)
    finally:
        os.unlink(path)
    diffs = [i for i in range(max(len(g), len(e))) if i >= len(g) or i >= len(e) or g[i] != e[i]]
    ok = len(g) == a.requests and not diffs
    print(json.dumps({"requests": a.requests, "steps": a.steps, "env_a": a.env_a, "env_b": a.env_b, "equal": ok,
                      "differ": diffs, "a_tokens": g[:2], "b_tokens": e[:2]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
