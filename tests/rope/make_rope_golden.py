#!/usr/bin/env python3
"""Golden data for RoPE at positions up to 1,048,576 (glm-4-9b-chat-1m's context).

Developers only, never run by CI (needs torch and transformers):
    pip install torch transformers
    python3 tests/rope/make_rope_golden.py [--out tests/rope/golden.json]

The reference is HF transformers' own GLM rotary code (GlmRotaryEmbedding and
apply_rotary_pos_emb of transformers.models.glm), run in float32 exactly as the
model runs it: inv_freq = 1 / base^(arange(0, rd, 2) / rd) in fp32, angle =
float(position) * inv_freq in fp32, cos/sin in fp32, GPT-J adjacent pairs on the
first rd = head_dim / 2 dims. Beside it, the same rotation in float64 with the
exact angle position * base^(-2j/rd): the difference between the two is the
fp32 angle's rounding, which grows with the position (at 1M the angle of the
fastest pair is about 1e6 rad, whose fp32 ulp is 0.0625 rad), and which glmtp
must share with HF rather than "fix".

Output JSON: for each base (chat 5e6, chat-1m 1e8): positions, inputs x
[n_pos][head_dim] (float32 values), hf [n_pos][head_dim], f64 [n_pos][head_dim].
"""
import argparse
import json
import math
import os

import numpy as np
import torch
import transformers
from transformers import GlmConfig
from transformers.models.glm.modeling_glm import GlmRotaryEmbedding, apply_rotary_pos_emb

HEAD_DIM = 128
POSITIONS = [0, 1, 2, 4095, 131071, 131072, 524287, 524288, 999999, 1048000, 1048574, 1048575]
BASES = [5e6, 1e8]  # glm-4-9b-chat (rope_ratio 500), glm-4-9b-chat-1m (rope_ratio 10000)
SEED = 1048576


def hf_rotate(x, base):
    cfg = GlmConfig(head_dim=HEAD_DIM, hidden_size=4096, num_attention_heads=32, partial_rotary_factor=0.5,
                    rope_theta=base, max_position_embeddings=1048576)
    rot = GlmRotaryEmbedding(cfg)
    pos = torch.tensor([POSITIONS], dtype=torch.long)
    cos, sin = rot(x, pos)  # [1, n, rd]
    q = x[None, None]      # [1, 1, n, d]: batch, heads, seq, dim
    out, _ = apply_rotary_pos_emb(q, q.clone(), cos, sin)
    return out[0, 0]


def f64_rotate(x, base):
    rd = HEAD_DIM // 2
    out = x.astype(np.float64).copy()
    for t, p in enumerate(POSITIONS):
        for j in range(rd // 2):
            a = p * base ** (-2.0 * j / rd)
            c, s = math.cos(a), math.sin(a)
            x0, x1 = float(x[t, 2 * j]), float(x[t, 2 * j + 1])
            out[t, 2 * j] = x0 * c - x1 * s
            out[t, 2 * j + 1] = x1 * c + x0 * s
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json"))
    a = ap.parse_args()
    g = torch.Generator().manual_seed(SEED)
    x = torch.rand((len(POSITIONS), HEAD_DIM), generator=g, dtype=torch.float32) * 2 - 1
    cases = []
    for base in BASES:
        hf = hf_rotate(x, base)
        f64 = f64_rotate(x.numpy(), base)
        worst = float(np.abs(hf.numpy().astype(np.float64) - f64).max())
        print(f"base {base:g}: max |HF fp32 - float64| = {worst:.3e}")
        cases.append({"base": base, "x": [[float(v) for v in r] for r in x.numpy()],
                      "hf": [[float(v) for v in r] for r in hf.numpy()],
                      "f64": [[float(v) for v in r] for r in f64]})
    doc = {"generator": "tests/rope/make_rope_golden.py", "torch": torch.__version__,
           "transformers": transformers.__version__, "head_dim": HEAD_DIM, "rot_dim": HEAD_DIM // 2,
           "positions": POSITIONS, "cases": cases}
    with open(a.out, "w") as f:
        json.dump(doc, f)
        f.write("\n")


if __name__ == "__main__":
    main()
