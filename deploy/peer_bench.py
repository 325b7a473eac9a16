#!/usr/bin/env python3
"""glmtp against HF transformers on the same weights, in the same run (run by
deploy/peer-bench.sh, which checks for PyTorch and makes the model).

Loads the checkpoint DIR (HF layout, GlmForCausalLM) once in transformers, then
for each of --reps rounds, alternately (so that a noisy machine hits both):
  - prefill of --len random ids: `glmtp bench prefill` (a timed step after a
    warm-up, in its own process) and transformers' forward over the same
    count (one warm-up, then timed; logits of the last position only where
    transformers can, as glmtp computes them);
  - batch-1 decode at --len tokens of context: `glmtp bench decode` and
    transformers stepping one token at a time on its KV cache (greedy).
Prints every round's figures, the per-round ratios glmtp / transformers (tokens
per second; > 1: glmtp is faster) and their medians; --json FILE for machines.

usage: peer_bench.py GLMTP DIR [--len 512] [--reps 3] [--decode-steps 16] [--threads N] [--json FILE]
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers


def glmtp_bench(glmtp, args, env=None):
    """Rows of `glmtp bench ARGS --json`, or exit with its stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        js = os.path.join(tmp, "bench.json")
        p = subprocess.run([glmtp, "bench"] + args + ["--json", js, "--quiet"], capture_output=True, text=True,
                           env=env)
        if p.returncode != 0:
            sys.exit(f"peer-bench: glmtp bench {' '.join(args)} exited {p.returncode}:\n{p.stderr[-2000:]}")
        with open(js) as f:
            return json.load(f)


def load_hf(model_dir):
    # transformers >= 4.56 names the argument dtype (torch_dtype is deprecated there).
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **{kw: torch.bfloat16})
    m.eval()
    return m


def cache_names(model):
    """(forward's KV-cache argument, the output's field): cache in transformers 5, past_key_values before."""
    return ("cache", "cache") if "cache" in inspect.signature(model.forward).parameters else \
        ("past_key_values", "past_key_values")


def last_logits_kwargs(model):
    """Ask for the last position's logits only, as glmtp computes (the argument's name by version)."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def hf_prefill(model, ids, extra):
    """Seconds of one forward over ids [1, T] with a fresh KV cache."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=True, **extra)
        return time.perf_counter() - t0


def hf_decode(model, ids, steps, extra):
    """Seconds per greedy step of batch 1 after a prefill of ids [1, T]."""
    arg, field = cache_names(model)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, **extra)
        for i in range(steps + 1):  # step 0 is a warm-up
            if i == 1:
                t0 = time.perf_counter()
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(input_ids=nxt, use_cache=True, **{arg: getattr(out, field)})
        return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("model")
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    model = load_hf(a.model)
    extra = last_logits_kwargs(model)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, a.len), generator=torch.Generator().manual_seed(3))
    hf_prefill(model, ids, extra)  # warm-up: oneDNN primitives, allocator
    print(f"# peer-bench: model {a.model}, {a.len} tokens, {a.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, attention {model.config._attn_implementation}")
    print(f"{'round':>5} {'glmtp prefill':>14} {'HF prefill':>11} {'ratio':>6} {'glmtp decode':>13} "
          f"{'HF decode':>10} {'ratio':>6}")
    print(f"{'':>5} {'(tok/s)':>14} {'(tok/s)':>11} {'(x)':>6} {'(ms/token)':>13} {'(ms/token)':>10} {'(x)':>6}")
    rounds = []
    for r in range(a.reps):
        g = glmtp_bench(a.glmtp, ["prefill", "--model", a.model, "--lens", str(a.len)], env)["results"][0]
        h_pre = hf_prefill(model, ids, extra)
        d = glmtp_bench(a.glmtp, ["decode", "--model", a.model, "--batch", "1", "--context", str(a.len),
                                  "--steps", str(a.decode_steps)], env)["results"][0]
        h_dec = hf_decode(model, ids, a.decode_steps, extra)
        row = {"glmtp_prefill_tok_s": g["tokens_per_s"], "hf_prefill_tok_s": a.len / h_pre,
               "glmtp_linear_gflops": g["linear_gflops"], "glmtp_limit_bf16_gflops": g.get("limit_bf16_gflops"),
               "glmtp_decode_ms": d["step_ms"], "hf_decode_ms": h_dec * 1e3}
        row["prefill_ratio"] = row["glmtp_prefill_tok_s"] / row["hf_prefill_tok_s"]
        row["decode_ratio"] = row["hf_decode_ms"] / row["glmtp_decode_ms"]
        rounds.append(row)
        print(f"{r + 1:>5} {row['glmtp_prefill_tok_s']:>14.1f} {row['hf_prefill_tok_s']:>11.1f} "
              f"{row['prefill_ratio']:>6.2f} {row['glmtp_decode_ms']:>13.1f} {row['hf_decode_ms']:>10.1f} "
              f"{row['decode_ratio']:>6.2f}", flush=True)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0] if rounds[0][k] is not None}
    print(f"{'med':>5} {med['glmtp_prefill_tok_s']:>14.1f} {med['hf_prefill_tok_s']:>11.1f} "
          f"{med['prefill_ratio']:>6.2f} {med['glmtp_decode_ms']:>13.1f} {med['hf_decode_ms']:>10.1f} "
          f"{med['decode_ratio']:>6.2f}")
    if "glmtp_limit_bf16_gflops" in med:
        print(f"# glmtp linear layers {med['glmtp_linear_gflops']:.1f} GFLOP/s, "
              f"{100 * med['glmtp_linear_gflops'] / med['glmtp_limit_bf16_gflops']:.1f}% of the library's bf16 GEMM "
              f"({med['glmtp_limit_bf16_gflops']:.1f} GFLOP/s, same shapes)")
    print("# ratio: glmtp / transformers in tokens per second, per round (paired); med: medians")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "tokens": a.len, "threads": a.threads, "torch": torch.__version__,
                       "transformers": transformers.__version__, "rounds": rounds, "median": med}, f, indent=1)


if __name__ == "__main__":
    main()
