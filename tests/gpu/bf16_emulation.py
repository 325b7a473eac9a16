#!/usr/bin/env python3
"""bf16 emulation of the CUDA backend's forward pass, for choosing (and
checking) the GPU tolerances in device-check.sh. Developers and the GPU check
only: needs torch and safetensors (CI has neither and never runs this).

The forward of glm4-spec.md section 2 (as tests/golden/make_golden.py's
spec_forward), in fp32 with a rounding to bf16 wherever kernels/cuda/ stores
an activation: matrices bf16 and vectors fp32 as uploaded, embedding rows,
RMSNorm outputs, QKV (after the bias), RoPE outputs (= the KV cache),
attention outputs, each GEMM output, SwiGLU, every residual add; logits fp32.

Reads a chatglm-layout model directory (one model.safetensors), runs the given
ids as one prefill, and compares the logits with `glmtp score` output: by
default glmtp's CPU backend (fp32) -- the size of the error bf16 itself makes,
which is what the GPU tolerances must allow -- or any --glmtp-args (e.g.
"--device cuda", whose distance to the emulation should be far smaller). The
golden cases' reference logits can be compared instead with --reference.

Seen when written (three golden cases, tiny preset, 16-38 tokens):
max |logits(bf16 emulation) - logits(fp32)| 0.06-0.10, hidden 0.04-0.07;
one greedy near-tie (top-2 margin 0.009) flipped along 32 tiny-preset steps.

usage: bf16_emulation.py MODEL_DIR --ids 1,2,3 [--glmtp GLMTP [--glmtp-args "..."]] [--reference JSON]
"""
import argparse
import json
import math
import shlex
import subprocess
import sys

import torch
from safetensors.torch import load_file


def rb(x):
    return x.to(torch.bfloat16).float()


def forward(w, cfg, ids):
    H, NH, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_channels"]
    NKV = cfg["multi_query_group_num"] if cfg.get("multi_query_attention", True) else NH
    F, EPS, RD = cfg["ffn_hidden_size"], cfg["layernorm_epsilon"], D // 2
    base = torch.tensor(10000.0 * cfg.get("rope_ratio", 1.0), dtype=torch.float32)
    inv = [1.0 / (base ** torch.tensor(2.0 * j / RD, dtype=torch.float32)).item() for j in range(RD // 2)]
    W = {k: (rb(v.float()) if v.dim() == 2 else v.float()) for k, v in w.items()}
    T = len(ids)

    def rms(x, g):
        return rb(g * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS)))

    def rope(v, p):
        v = v.clone()
        for j in range(RD // 2):
            a = torch.tensor(float(p), dtype=torch.float32) * torch.tensor(inv[j], dtype=torch.float32)
            c, s = torch.cos(a), torch.sin(a)
            x0, x1 = v[..., 2 * j].clone(), v[..., 2 * j + 1].clone()
            v[..., 2 * j], v[..., 2 * j + 1] = x0 * c - x1 * s, x1 * c + x0 * s
        return rb(v)

    x = W["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)]
    for L in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{L}."
        h = rms(x, W[p + "input_layernorm.weight"])
        qkv = h @ W[p + "self_attention.query_key_value.weight"].T
        if p + "self_attention.query_key_value.bias" in W:
            qkv = qkv + W[p + "self_attention.query_key_value.bias"]
        qkv = rb(qkv)
        q = qkv[:, :NH * D].reshape(T, NH, D)
        k = qkv[:, NH * D:(NH + NKV) * D].reshape(T, NKV, D)
        v = qkv[:, (NH + NKV) * D:].reshape(T, NKV, D)
        for t in range(T):
            q[t], k[t] = rope(q[t], t), rope(k[t], t)
        ctx = torch.zeros(T, NH, D)
        for t in range(T):
            for i in range(NH):
                g = i // (NH // NKV)
                P = torch.softmax((k[:t + 1, g] @ q[t, i]) / math.sqrt(D), 0)
                ctx[t, i] = P @ v[:t + 1, g]
        x = rb(x + rb(rb(ctx).reshape(T, NH * D) @ W[p + "self_attention.dense.weight"].T))
        gu = rb(rms(x, W[p + "post_attention_layernorm.weight"]) @ W[p + "mlp.dense_h_to_4h.weight"].T)
        a = rb(torch.nn.functional.silu(gu[:, :F]) * gu[:, F:])
        x = rb(x + rb(a @ W[p + "mlp.dense_4h_to_h.weight"].T))
    hid = rms(x, W["transformer.encoder.final_layernorm.weight"])
    return hid, hid @ W["transformer.output_layer.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ids", required=True)
    ap.add_argument("--glmtp")
    ap.add_argument("--glmtp-args", default="--device cpu")
    ap.add_argument("--reference")
    a = ap.parse_args()
    ids = [int(x) for x in a.ids.split(",")]
    cfg = json.load(open(f"{a.model}/config.json"))
    _, emu = forward(load_file(f"{a.model}/model.safetensors"), cfg, ids)
    if a.reference:
        other = torch.tensor(json.load(open(a.reference))["prefill_logits"])
    elif a.glmtp:
        out = subprocess.run([a.glmtp, "score", "--model", a.model, "--ids", a.ids, "--dump", "logits", "--top", "0"]
                             + shlex.split(a.glmtp_args), capture_output=True, text=True, check=True).stdout
        other = torch.tensor([json.loads(l)["logits"] for l in out.splitlines() if l.strip()])
    else:
        sys.exit("give --glmtp or --reference")
    d = (emu - other).abs()
    print(json.dumps({"model": a.model, "tokens": len(ids), "max_abs_diff": d.max().item(),
                      "mean_abs_diff": d.mean().item(), "max_abs_logit": other.abs().max().item(),
                      "argmax_differs_at": [t for t in range(len(ids)) if emu[t].argmax() != other[t].argmax()]}))


if __name__ == "__main__":
    main()
