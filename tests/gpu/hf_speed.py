#!/usr/bin/env python3
"""HF transformers' speed on a glmtp-made checkpoint, the peer figure of
device-check.sh: GlmForCausalLM in bf16 with sdpa attention, on the GPU when
there is one (else the CPU, for trying the script out).

Measures, on the hf-layout model that `glmtp make-model --layout hf` wrote with
the same seed as the chatglm-layout model glmtp benchmarks (same numbers):
  - prefill of --prefill tokens (one forward, logits of the last row only),
    median of --repeat runs after one warm-up;
  - batch-1 decode at --context tokens of context: prefill the context into a
    DynamicCache, then --steps single-token forwards, each timed alone
    (synchronised), median per token.
Prints one JSON line: {"prefill_tokens", "prefill_s", "prefill_tok_s",
"decode_context", "decode_ms_per_token", "device", "dtype", "attn", ...}.

usage: hf_speed.py HF_MODEL_DIR [--prefill 8192] [--context 1024] [--steps 32] [--repeat 3]
"""
import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import GlmForCausalLM


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def forward(model, ids, cache=None):
    kw = {"use_cache": cache is not None, "past_key_values": cache}
    try:
        return model(input_ids=ids, logits_to_keep=1, **kw)
    except TypeError:  # transformers < 4.50 names it num_logits_to_keep
        return model(input_ids=ids, num_logits_to_keep=1, **kw)


def load(path, dev):
    try:
        m = GlmForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa")
    except TypeError:
        m = GlmForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    return m.to(dev).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prefill", type=int, default=8192)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    model = load(a.model, dev)
    load_s = time.time() - t0
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(5)
    res = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "dtype": "bfloat16",
           "attn": model.config._attn_implementation, "torch": torch.__version__,
           "transformers": transformers.__version__, "load_s": round(load_s, 2)}
    with torch.inference_mode():
        ids = torch.randint(0, vocab, (1, a.prefill), generator=g).to(dev)
        times = []
        for i in range(a.repeat + 1):
            sync(dev)
            t = time.perf_counter()
            forward(model, ids)
            sync(dev)
            if i > 0:
                times.append(time.perf_counter() - t)
        p = statistics.median(times)
        res.update(prefill_tokens=a.prefill, prefill_s=p, prefill_tok_s=a.prefill / p)

        ctx = torch.randint(0, vocab, (1, a.context), generator=g).to(dev)
        cache = transformers.DynamicCache()
        out = forward(model, ctx, cache)
        tok = out.logits[:, -1:].argmax(-1)
        times = []
        for i in range(a.steps + 2):
            sync(dev)
            t = time.perf_counter()
            out = forward(model, tok, cache)
            tok = out.logits[:, -1:].argmax(-1)
            sync(dev)
            if i >= 2:  # two warm-up steps
                times.append(time.perf_counter() - t)
        res.update(decode_context=a.context, decode_ms_per_token=1e3 * statistics.median(times))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
