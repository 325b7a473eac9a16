#!/usr/bin/env python3
"""Golden data for a 64K-token context on a tiny glm-4-9b-chat-1m-shaped model.

Developers only, never run by CI (needs torch, transformers, safetensors):
    python3 tests/golden/make_long_golden.py [--out tests/golden/data/long_1m] [--tokens 65536]

The model has chat-1m's shape where it matters for long contexts: 4 KV groups,
RoPE base 1e8 (rope_ratio 10000), seq_length 1048576; otherwise the tiny
golden shapes of make_golden.py (hidden 128, 8 heads of 16, FFN 96, vocab 256,
2 layers; f32, same weight scales). It writes the chatglm layout (what
glmtp reads; the layouts are tested by the other cases), and reference.json:
the ids (base64, one byte each since vocab 256) and HF GlmForCausalLM's logits
for the last WINDOW positions of one prefill over all of them (sdpa
attention: the eager matrix at 64K would be 8 x 64K x 64K floats). Cross-check
in the same run: the same window computed by prefilling the rest first and
then the window over HF's KV cache (another attention path), and the spec's
RoPE frequencies.
"""
import argparse
import base64
import json
import os
import sys
import tempfile
import time

import torch
import transformers
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as mg  # noqa: E402  (shapes, weights, layouts, HF loading)

N_KV = 4
ROPE_RATIO = 10000
SEQ_LEN = 1048576
WINDOW = 64
SEED = 20241204


def load_hf_sdpa(hf_dir):
    model = transformers.GlmForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return model


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "data", "long_1m"))
    ap.add_argument("--tokens", type=int, default=65536)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    transformers.logging.set_verbosity_error()
    mg.SEQ_LEN = SEQ_LEN
    mg.HEAD_DIM = 16
    torch.manual_seed(SEED)
    w = mg.make_chatglm_weights(N_KV)
    h = mg.chatglm_to_hf(w, N_KV)
    mg.write_layout(os.path.join(a.out, "chatglm"), mg.chatglm_config(N_KV, ROPE_RATIO), w)
    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, mg.VOCAB, (a.tokens,), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        mg.write_layout(tmp, mg.hf_config(N_KV, ROPE_RATIO), h)
        hl = load_file(os.path.join(tmp, "model.safetensors"))
        model = load_hf_sdpa(tmp)
        mg.check_model_matches(model, hl, N_KV, ROPE_RATIO)
        x = ids[None]
        t0 = time.time()
        full = model(input_ids=x, use_cache=False, logits_to_keep=WINDOW).logits[0]
        t1 = time.time()
        ck = mg.cache_kwarg_name(model)
        out = model(input_ids=x[:, :-WINDOW], use_cache=True, logits_to_keep=1)
        inc = model(input_ids=x[:, -WINDOW:], use_cache=True, **{ck: mg.out_cache(out)}).logits[0]
        t2 = time.time()
    d = float((full - inc).abs().max())
    print(f"torch {torch.__version__} transformers {transformers.__version__}: {a.tokens} tokens, "
          f"prefill {t1 - t0:.1f} s, prefill + cached window {t2 - t1:.1f} s")
    print(f"window logits: std {float(full.std()):.3f}; max |one prefill - over the cache| = {d:.3e}")
    assert full.shape == (WINDOW, mg.VOCAB) and d < 1e-4, d
    ref = {"generator": "tests/golden/make_long_golden.py", "torch": torch.__version__,
           "transformers": transformers.__version__, "n_tokens": a.tokens, "window": WINDOW,
           "ids_b64": base64.b64encode(bytes(int(i) for i in ids)).decode(),
           "window_logits": mg.fl(full), "window_argmax": [int(i) for i in full.argmax(-1)]}
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f)
        f.write("\n")


if __name__ == "__main__":
    main()
