#!/usr/bin/env python3
"""Generate golden reference data for glmtp's GLM-4V-9B (image + text) support.

Developers only -- never run by CI.  CI reads the files this script committed under
tests/vision/data/ and needs no PyTorch.

What it does (case `tiny4v`, all float32, CPU):
  1. draws random weights (fixed torch seed) for a tiny glm-4v model and writes
       tests/vision/data/tiny4v/config.json        THUDM "chatglm" config + vision_config, boi/eoi ids
       tests/vision/data/tiny4v/model.safetensors  f32, the real checkpoint's tensor names
                                                   (transformer.vision.* included, glm4v-spec.md section 9)
  2. loads that directory with THUDM's own remote code for glm-4v-9b
     (ChatGLMForConditionalGeneration.from_pretrained, float32) and records
       tests/vision/data/tiny4v/reference.json     (layout: tests/vision/README.md)
       tests/vision/data/tiny4v/pixels.f32         the image input, raw little-endian f32, CHW [3,56,56]
  3. cross-checks every recorded tensor against an independent float64 plain-torch
     implementation of /work/shared/glm4v-spec.md (tower, adapter, splice, positions, LM)
     that reads only the safetensors file, and prints the max |diff|.
  4. case `png` (same model, same prompt, stored under the key "png" of the same reference.json; the keys and
     files above are unchanged by it): a real image file, end to end --
       tests/vision/data/tiny4v/image.png          97x61 8-bit RGB PNG made by make_png_rgb() (gradients, rings,
                                                   numpy RandomState(PNG_NOISE_SEED) noise), written with Pillow only
                                                   when the file there does not already decode to those pixels
       tests/vision/data/tiny4v/image_pixels.f32   the preprocessed [3,56,56], raw little-endian f32, CHW
     preprocessed exactly as THUDM's processor does: Image.open(p).convert("RGB") -> torchvision
     Resize((56, 56), BICUBIC) -> ToTensor -> Normalize(CLIP mean/std); also emulated with Pillow's
     Image.resize(BICUBIC) + the same float32 math, which must agree (it does exactly: max diff 0).  Then the
     same THUDM run, spec cross-check and greedy decode as step 2-3; asserts no EOS among the greedy tokens and
     that transformers' generate() gives the same tokens.  Needs torchvision (used: 0.29.2 with torch 2.15.0).

Reference code (THUDM's glm-4v-9b remote code; the HF hub itself is not reachable, so public
vendored copies are used; NONE of it is in this repository -- keep it outside, pass --ref):
  modeling_chatglm.py     github.com/sophgo/LLM-TPU  models/GLM4v/compile/files/glm-4v-9b/modeling_chatglm.py
                          @ 031f42f1ada41fd87417eabc5ccaddc0c7855acd  (transformers-4.44 revision with sdpa/flash
                          classes).  sophgo's edits undone for this CPU run (and nothing else changed):
                            a. removed `print("vit begin")` / `print("vit end")` around self.vision(images);
                            b. removed `import pdb; pdb.set_trace()` in ChatGLMModel.forward;
                            c. SelfAttention KV cache: sophgo returned only the NEW step's (k, v) as the
                               present cache (TPU export edit, the original kept commented out below it);
                               restored THUDM's order -- concatenate the past (k, v) first, then return the
                               concatenated (k, v) -- as in the unedited June-2024 THUDM copy
                               github.com/XuRui314/GLM4v-Finetune modeling_chatglm.py @ 513b75de.
  visual.py               github.com/huggingface/optimum-habana  optimum/habana/transformers/models/glm4v/visual.py
                          @ 14fc5a57594df99c625208574d394a3ccf54a00c (unchanged up to 1d8504c6), "Adapted from
                          https://huggingface.co/THUDM/glm-4v-9b/blob/main/visual.py".  Edits for CPU:
                            d. removed `import habana_frameworks.torch.hpu as ht` and the FusedSDPA import; with
                               FusedSDPA = None the file's own fallback `standard_attention` runs (q/sqrt(d), softmax,
                               no mask) -- the same math as THUDM's `attention_fn_default` (SDPA, is_causal=False).
  configuration_chatglm.py  same optimum-habana directory and commit; edit:
                            e. class renamed GLM4VConfig -> ChatGLMConfig (THUDM's name, imported by modeling_chatglm.py).
  Layout expected under --ref (default $GLM4V_REF or /work/glm4v-ref/run):
      <ref>/glm4v_ref/{__init__.py (empty), modeling_chatglm.py, visual.py, configuration_chatglm.py}

Environment: THUDM's code targets transformers ~4.44 (its config says 4.44.0) and does not run on 5.x:
    python3 -m venv --system-site-packages /work/venv-glm4v
    /work/venv-glm4v/bin/pip install transformers==4.44.2
    /work/venv-glm4v/bin/python tests/vision/make_vision_golden.py [--ref DIR] [--out tests/vision/data]

Spec (glm4v-spec.md) vs THUDM's code at these shapes: no disagreement found; the independent implementation
follows the spec text literally (post-branch LayerNorms eps 1e-6, [Q|K|V] thirds of the fused vision qkv,
bidirectional attention, cls dropped, 2x2 conv, GLU with LayerNorm eps 1e-5 and erf GELU, SiLU on gate_proj,
boi/eoi concatenated and everything / scaling_factor, splice replacing boi,pad,eoi, image tokens sharing the
placeholder's position, decode position = text index).  Notes (not disagreements):
  - the GLU width is config.ffn_hidden_size (the LM's FFN width) and its LayerNorm is nn.LayerNorm's default
    eps 1e-5, as the spec says;
  - THUDM's splice asserts eoi_pos - boi_pos == 2 and finds boi/eoi by the first occurrence (list.index);
  - the number of image tokens THUDM inserts is (image_size // patch_size // 2)**2 from vision_config, and the
    tower's grid is int(sqrt(num_patches)) -- image_size must be a multiple of 2*patch_size;
  - the LM's RoPE table is float32 here (the reference rounds it to bf16 only for bf16/fp16 models).
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
import safetensors
import transformers
from safetensors.torch import save_file, load_file

GENERATOR = "tests/vision/make_vision_golden.py"

REF_SOURCES = {
    "modeling_chatglm.py": "github.com/sophgo/LLM-TPU models/GLM4v/compile/files/glm-4v-9b/modeling_chatglm.py "
                           "@031f42f1ada41fd87417eabc5ccaddc0c7855acd (edits a-c of the generator docstring undone)",
    "visual.py": "github.com/huggingface/optimum-habana optimum/habana/transformers/models/glm4v/visual.py "
                 "@14fc5a57594df99c625208574d394a3ccf54a00c (adapted from THUDM/glm-4v-9b visual.py; "
                 "Habana imports removed, edit d)",
    "configuration_chatglm.py": "github.com/huggingface/optimum-habana "
                                "optimum/habana/transformers/models/glm4v/configuration_chatglm.py "
                                "@14fc5a57594df99c625208574d394a3ccf54a00c (class renamed ChatGLMConfig, edit e)",
}

# ---------------------------------------------------------------- LM shapes (as tests/golden/make_golden.py)
HIDDEN = 128
N_HEADS = 8
HEAD_DIM = 16
NKV = 2
FFN = 96
VOCAB = 256
N_LAYERS = 2
EPS = 1.5625e-07
SEQ_LEN = 4096
EOS = [1, 2, 3]
PAD = 1
BOI = 4
EOI = 5

# ---------------------------------------------------------------- vision shapes
V_HIDDEN = 56
V_HEADS = 4              # head dim 14: not a power of two (the real one is 112)
V_LAYERS = 2
V_FFN = 96
IMG = 56
PATCH = 14
IN_CH = 3
V_EPS = 1e-6
SCALING = 8
GRID = IMG // PATCH                      # 4 -> 16 patches
N_POS = GRID * GRID + 1                  # 17 (cls + patches)
N_IMG = (GRID // 2) ** 2                 # 4 tokens after the 2x2 conv
GLU_EPS = 1e-5                           # nn.LayerNorm default in the GLU

# name, rope_ratio (RoPE base = 10000 * rope_ratio), weight seed
CASES = [
    ("tiny4v", 1, 20240604),
]
PIXEL_SEED = 777
PROMPT = [10, 11, 12, BOI, PAD, EOI, 20, 21, 22]
TEXT_ONLY = [10, 11, 12, 20]
N_DECODE = 8
MIN_MARGIN = 1e-3

# second case `png` (same model): a real image file through the reference preprocessing
PNG_W, PNG_H = 97, 61                    # not square, not a multiple of anything: a real squash + downscale
PNG_NOISE_SEED = 4252                    # numpy.random.RandomState (legacy stream, frozen across numpy versions);
                                         # seeds 4242.. tried in order, the first whose 8+1 greedy tokens hold no
                                         # EOS (1,2,3) and whose min top-2 margin is > 0.05
PNG_NOISE_AMP = 12                       # +-12 grey levels of uniform noise on top of the gradients
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# init scales (LM as tests/golden/make_golden.py)
LIN_GAIN = 1.5
QKV_BIAS_STD = 0.3
NORM_STD = 0.1
EMB_STD = 1.0
V_GAIN = 1.0             # vision linear/conv weight std = V_GAIN / sqrt(fan_in)
V_BIAS_STD = 0.05
V_LN_BIAS_STD = 0.05
V_POS_STD = 0.3
BOI_STD = 1.0


def chatglm_config(rope_ratio):
    return {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "num_layers": N_LAYERS,
        "hidden_size": HIDDEN,
        "ffn_hidden_size": FFN,
        "num_attention_heads": N_HEADS,
        "kv_channels": HEAD_DIM,
        "multi_query_attention": True,
        "multi_query_group_num": NKV,
        "padded_vocab_size": VOCAB,
        "seq_length": SEQ_LEN,
        "rope_ratio": rope_ratio,
        "layernorm_epsilon": EPS,
        "rmsnorm": True,
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_residual_connection_post_layernorm": False,
        "post_layer_norm": True,
        "original_rope": True,
        "tie_word_embeddings": False,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "boi_token_id": BOI,
        "eoi_token_id": EOI,
        "torch_dtype": "float32",
        "vision_config": {
            "dropout_prob": 0.0,
            "hidden_act": "gelu",
            "in_channels": IN_CH,
            "num_hidden_layers": V_LAYERS,
            "hidden_size": V_HIDDEN,
            "patch_size": PATCH,
            "num_heads": V_HEADS,
            "intermediate_size": V_FFN,
            "layer_norm_eps": V_EPS,
            "num_positions": N_POS,
            "image_size": IMG,
            "scaling_factor": SCALING,
        },
    }


# ---------------------------------------------------------------- weights
def make_weights():
    """Random f32 weights with the real checkpoint's names.  Uses the global torch RNG (seeded by caller)."""
    f32 = torch.float32

    def lin(out_f, in_f, gain=LIN_GAIN):
        return torch.randn(out_f, in_f, dtype=f32) * (gain / math.sqrt(in_f))

    def norm(n):
        return 1.0 + torch.randn(n, dtype=f32) * NORM_STD

    def small(n, std):
        return torch.randn(n, dtype=f32) * std

    w = {}
    # ---- language model (same recipe as tests/golden/make_golden.py)
    qkv_out = (N_HEADS + 2 * NKV) * HEAD_DIM
    w["transformer.embedding.word_embeddings.weight"] = torch.randn(VOCAB, HIDDEN, dtype=f32) * EMB_STD
    rd = HEAD_DIM // 2
    # buffer present in real checkpoints, always base 10000 whatever rope_ratio is; readers ignore it
    w["transformer.rotary_pos_emb.inv_freq"] = (1.0 / (10000.0 ** (torch.arange(0, rd, 2, dtype=f32) / rd))).to(f32)
    for L in range(N_LAYERS):
        p = f"transformer.encoder.layers.{L}."
        w[p + "input_layernorm.weight"] = norm(HIDDEN)
        w[p + "self_attention.query_key_value.weight"] = lin(qkv_out, HIDDEN)
        w[p + "self_attention.query_key_value.bias"] = small(qkv_out, QKV_BIAS_STD)
        w[p + "self_attention.dense.weight"] = lin(HIDDEN, N_HEADS * HEAD_DIM)
        w[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        w[p + "mlp.dense_h_to_4h.weight"] = lin(2 * FFN, HIDDEN)
        w[p + "mlp.dense_4h_to_h.weight"] = lin(HIDDEN, FFN)
    w["transformer.encoder.final_layernorm.weight"] = norm(HIDDEN)
    w["transformer.output_layer.weight"] = lin(VOCAB, HIDDEN)

    # ---- vision tower
    v = "transformer.vision."
    fan = IN_CH * PATCH * PATCH
    w[v + "patch_embedding.proj.weight"] = torch.randn(V_HIDDEN, IN_CH, PATCH, PATCH, dtype=f32) * (V_GAIN / math.sqrt(fan))
    w[v + "patch_embedding.proj.bias"] = small(V_HIDDEN, V_BIAS_STD)
    w[v + "patch_embedding.cls_embedding"] = torch.randn(1, V_HIDDEN, dtype=f32)
    w[v + "patch_embedding.position_embedding.weight"] = torch.randn(N_POS, V_HIDDEN, dtype=f32) * V_POS_STD
    for L in range(V_LAYERS):
        p = f"{v}transformer.layers.{L}."
        w[p + "input_layernorm.weight"] = norm(V_HIDDEN)
        w[p + "input_layernorm.bias"] = small(V_HIDDEN, V_LN_BIAS_STD)
        w[p + "attention.query_key_value.weight"] = lin(3 * V_HIDDEN, V_HIDDEN, V_GAIN * 1.5)
        w[p + "attention.query_key_value.bias"] = small(3 * V_HIDDEN, V_BIAS_STD)
        w[p + "attention.dense.weight"] = lin(V_HIDDEN, V_HIDDEN, V_GAIN)
        w[p + "attention.dense.bias"] = small(V_HIDDEN, V_BIAS_STD)
        w[p + "mlp.fc1.weight"] = lin(V_FFN, V_HIDDEN, V_GAIN * 1.5)
        w[p + "mlp.fc1.bias"] = small(V_FFN, V_BIAS_STD)
        w[p + "mlp.fc2.weight"] = lin(V_HIDDEN, V_FFN, V_GAIN)
        w[p + "mlp.fc2.bias"] = small(V_HIDDEN, V_BIAS_STD)
        w[p + "post_attention_layernorm.weight"] = norm(V_HIDDEN)
        w[p + "post_attention_layernorm.bias"] = small(V_HIDDEN, V_LN_BIAS_STD)
    # ---- adapter
    w[v + "conv.weight"] = torch.randn(HIDDEN, V_HIDDEN, 2, 2, dtype=f32) * (V_GAIN / math.sqrt(V_HIDDEN * 4))
    w[v + "conv.bias"] = small(HIDDEN, V_BIAS_STD)
    w[v + "linear_proj.linear_proj.weight"] = lin(HIDDEN, HIDDEN, V_GAIN)
    w[v + "linear_proj.norm1.weight"] = norm(HIDDEN)
    w[v + "linear_proj.norm1.bias"] = small(HIDDEN, V_LN_BIAS_STD)
    w[v + "linear_proj.gate_proj.weight"] = lin(FFN, HIDDEN, V_GAIN * 1.5)
    w[v + "linear_proj.dense_h_to_4h.weight"] = lin(FFN, HIDDEN, V_GAIN * 1.5)
    w[v + "linear_proj.dense_4h_to_h.weight"] = lin(HIDDEN, FFN, V_GAIN * 4.0)   # so that /8 leaves O(0.3-1)
    w[v + "boi"] = torch.randn(1, 1, HIDDEN, dtype=f32) * BOI_STD * SCALING / 2
    w[v + "eoi"] = torch.randn(1, 1, HIDDEN, dtype=f32) * BOI_STD * SCALING / 2
    return w


def write_model(dirpath, config, tensors):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    out = {k: tensors[k].detach().to(torch.float32).contiguous().clone() for k in sorted(tensors)}
    save_file(out, os.path.join(dirpath, "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------- independent float64 implementation of the spec
def spec_vision(w, pixels):
    """glm4v-spec.md sections 5-6: tower + adapter; pixels [3,IMG,IMG] -> [N_IMG+2, HIDDEN]."""
    d = {k: t.to(torch.float64) for k, t in w.items()}
    v = "transformer.vision."
    img = pixels.to(torch.float64)
    # 5.1 patch embedding as im2col GEMM: X[p, c*196 + kh*14 + kw] = img[c, 14r+kh, 14s+kw], p = r*G + s
    X = torch.zeros(GRID * GRID, IN_CH * PATCH * PATCH, dtype=torch.float64)
    for r in range(GRID):
        for s in range(GRID):
            X[r * GRID + s] = img[:, PATCH * r:PATCH * (r + 1), PATCH * s:PATCH * (s + 1)].reshape(-1)
    Wp = d[v + "patch_embedding.proj.weight"].reshape(V_HIDDEN, -1)
    x = X @ Wp.T + d[v + "patch_embedding.proj.bias"]
    x = torch.cat([d[v + "patch_embedding.cls_embedding"], x], 0)
    x = x + d[v + "patch_embedding.position_embedding.weight"]

    def ln(t, g, b, eps):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + eps) * g + b

    def gelu(t):
        return 0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0)))

    T = x.shape[0]
    hd = V_HIDDEN // V_HEADS
    for L in range(V_LAYERS):
        p = f"{v}transformer.layers.{L}."
        qkv = x @ d[p + "attention.query_key_value.weight"].T + d[p + "attention.query_key_value.bias"]
        q = qkv[:, :V_HIDDEN].reshape(T, V_HEADS, hd)
        k = qkv[:, V_HIDDEN:2 * V_HIDDEN].reshape(T, V_HEADS, hd)
        vv = qkv[:, 2 * V_HIDDEN:].reshape(T, V_HEADS, hd)
        ctx = torch.zeros(T, V_HEADS, hd, dtype=torch.float64)
        for h in range(V_HEADS):
            s = q[:, h] @ k[:, h].T / math.sqrt(hd)          # bidirectional, no mask
            ctx[:, h] = torch.softmax(s, -1) @ vv[:, h]
        a = ctx.reshape(T, V_HIDDEN) @ d[p + "attention.dense.weight"].T + d[p + "attention.dense.bias"]
        x = x + ln(a, d[p + "input_layernorm.weight"], d[p + "input_layernorm.bias"], V_EPS)
        m = gelu(x @ d[p + "mlp.fc1.weight"].T + d[p + "mlp.fc1.bias"]) @ d[p + "mlp.fc2.weight"].T + d[p + "mlp.fc2.bias"]
        x = x + ln(m, d[p + "post_attention_layernorm.weight"], d[p + "post_attention_layernorm.bias"], V_EPS)
    x = x[1:]                                               # drop cls
    # 6: 2x2 stride-2 conv as GEMM: X[t, i*4 + kh*2 + kw] = v[(2r+kh)*G + (2c+kw), i]
    g = GRID // 2
    Xc = torch.zeros(g * g, V_HIDDEN * 4, dtype=torch.float64)
    for r in range(g):
        for c in range(g):
            blk = torch.zeros(V_HIDDEN, 2, 2, dtype=torch.float64)
            for kh in range(2):
                for kw in range(2):
                    blk[:, kh, kw] = x[(2 * r + kh) * GRID + (2 * c + kw)]
            Xc[r * g + c] = blk.reshape(-1)
    y = Xc @ d[v + "conv.weight"].reshape(HIDDEN, -1).T + d[v + "conv.bias"]
    y = y @ d[v + "linear_proj.linear_proj.weight"].T
    y = gelu(ln(y, d[v + "linear_proj.norm1.weight"], d[v + "linear_proj.norm1.bias"], GLU_EPS))
    y = (F.silu(y @ d[v + "linear_proj.gate_proj.weight"].T) * (y @ d[v + "linear_proj.dense_h_to_4h.weight"].T)) \
        @ d[v + "linear_proj.dense_4h_to_h.weight"].T
    y = torch.cat([d[v + "boi"].reshape(1, HIDDEN), y, d[v + "eoi"].reshape(1, HIDDEN)], 0)
    return y / SCALING


def spec_splice(w, ids, vis):
    """glm4v-spec.md 7.1/7.2: embeddings and RoPE positions of the spliced sequence."""
    emb = w["transformer.embedding.word_embeddings.weight"].to(torch.float64)
    b = ids.index(BOI)
    e = ids.index(EOI)
    assert e - b == 2 and ids[b + 1] == PAD
    E = torch.cat([emb[torch.tensor(ids[:b])], vis, emb[torch.tensor(ids[e + 1:])]], 0)
    pos = list(range(b + 1)) + [b + 1] * N_IMG + list(range(e, len(ids)))
    assert len(pos) == E.shape[0] == len(ids) + N_IMG - 1
    return E, pos


def spec_lm(w, E, pos, rope_ratio):
    """Plain float64 GLM-4 forward (glm4-spec.md section 2) over embeddings E with explicit positions; causal."""
    d = {k: t.to(torch.float64) for k, t in w.items()}
    T = E.shape[0]
    D, NH, RD = HEAD_DIM, N_HEADS, HEAD_DIM // 2
    base = 10000.0 * rope_ratio

    def rms(x, g):
        return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS)

    def rope(vec, p):
        vec = vec.clone()
        for j in range(RD // 2):
            ang = p * base ** (-2.0 * j / RD)
            c, s = math.cos(ang), math.sin(ang)
            a, b = vec[..., 2 * j].clone(), vec[..., 2 * j + 1].clone()
            vec[..., 2 * j] = a * c - b * s
            vec[..., 2 * j + 1] = b * c + a * s
        return vec

    x = E.clone()
    for L in range(N_LAYERS):
        p = f"transformer.encoder.layers.{L}."
        h = rms(x, d[p + "input_layernorm.weight"])
        qkv = h @ d[p + "self_attention.query_key_value.weight"].T + d[p + "self_attention.query_key_value.bias"]
        q = qkv[:, :NH * D].reshape(T, NH, D)
        k = qkv[:, NH * D:NH * D + NKV * D].reshape(T, NKV, D)
        v = qkv[:, NH * D + NKV * D:].reshape(T, NKV, D)
        for t in range(T):
            q[t] = rope(q[t], float(pos[t]))
            k[t] = rope(k[t], float(pos[t]))
        ctx = torch.zeros(T, NH, D, dtype=torch.float64)
        grp = NH // NKV
        for t in range(T):
            for i in range(NH):
                gi = i // grp
                s = (k[:t + 1, gi, :] @ q[t, i]) / math.sqrt(D)
                ctx[t, i] = torch.softmax(s, 0) @ v[:t + 1, gi, :]
        x = x + ctx.reshape(T, NH * D) @ d[p + "self_attention.dense.weight"].T
        h2 = rms(x, d[p + "post_attention_layernorm.weight"])
        gu = h2 @ d[p + "mlp.dense_h_to_4h.weight"].T
        x = x + (F.silu(gu[:, :FFN]) * gu[:, FFN:]) @ d[p + "mlp.dense_4h_to_h.weight"].T
    hid = rms(x, d["transformer.encoder.final_layernorm.weight"])
    return hid @ d["transformer.output_layer.weight"].T


# ---------------------------------------------------------------- the `png` case: image file + preprocessing
def make_png_rgb():
    """Deterministic [PNG_H, PNG_W, 3] uint8 image: smooth gradients + a ring pattern + seeded uniform noise."""
    y, x = np.mgrid[0:PNG_H, 0:PNG_W].astype(np.float64)
    u, v = x / (PNG_W - 1), y / (PNG_H - 1)
    r = 30.0 + 200.0 * u                                         # left -> right
    g = 220.0 - 180.0 * v                                        # top -> bottom
    rad = np.hypot(x - 0.62 * PNG_W, y - 0.4 * PNG_H)
    b = 128.0 + 90.0 * np.cos(rad / 7.0) * (1.0 - 0.5 * u)       # rings, fading to the right
    img = np.stack([r, g, b], -1)
    noise = np.random.RandomState(PNG_NOISE_SEED).randint(-PNG_NOISE_AMP, PNG_NOISE_AMP + 1, size=img.shape)
    return np.clip(np.rint(img) + noise, 0, 255).astype(np.uint8)


def write_png(path, rgb):
    """Write rgb as an 8-bit RGB PNG with Pillow, unless the file there already decodes to exactly rgb (so a
    regenerate keeps the committed bytes even where another zlib would compress differently)."""
    from PIL import Image
    if os.path.exists(path):
        with Image.open(path) as im:
            if im.mode == "RGB" and np.array_equal(np.asarray(im), rgb):
                return False
    Image.fromarray(rgb, "RGB").save(path, format="PNG", optimize=False, compress_level=9)
    return True


def preprocess_png(path):
    """THUDM's glm-4v-9b processor (tokenization_chatglm.py) at image_size IMG:
    Image.open(p).convert("RGB") -> Resize((IMG, IMG), BICUBIC) -> ToTensor -> Normalize(CLIP mean/std).
    Returns (pixels [3,IMG,IMG] f32, resized uint8 [IMG,IMG,3], max|torchvision - PIL-resize emulation|)."""
    from PIL import Image
    import torchvision
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode
    tf = transforms.Compose([
        transforms.Resize((IMG, IMG), interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    with Image.open(path) as im:
        rgb_img = im.convert("RGB")
    pixels = tf(rgb_img).to(torch.float32).contiguous()
    # emulation without torchvision: Pillow's bicubic resize, then the same math in float32
    small = rgb_img.resize((IMG, IMG), Image.BICUBIC)
    resized = np.asarray(small).copy()                                        # [IMG, IMG, 3] uint8
    t = torch.from_numpy(resized).permute(2, 0, 1).to(torch.float32).div(255)
    emu = (t - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    d_emu = float((emu - pixels).abs().max())
    return pixels, resized, d_emu, torchvision.__version__


# ---------------------------------------------------------------- THUDM reference
def load_reference(ref_dir, case_dir):
    sys.path.insert(0, ref_dir)
    from glm4v_ref.modeling_chatglm import ChatGLMForConditionalGeneration  # noqa: E402
    model, info = ChatGLMForConditionalGeneration.from_pretrained(
        case_dir, torch_dtype=torch.float32, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        vals = info.get(key) or []
        assert len(vals) == 0, f"{key} when loading {case_dir}: {vals}"
    model.eval()
    return model


def rope_positions(model, rot):
    """Recover the RoPE position of each token from the rotary rows the encoder received."""
    table = model.transformer.rotary_pos_emb(model.transformer.seq_length)      # [seq_length, RD/2, 2]
    rot = rot[0]                                                                # [T, RD/2, 2]
    pos = []
    for t in range(rot.shape[0]):
        diff = (table - rot[t]).abs().flatten(1).max(1).values
        p = int(torch.argmin(diff))
        assert float(diff[p]) == 0.0, "rotary row not found in the table"
        pos.append(p)
    return pos


@torch.no_grad()
def reference_run(model, pixels, ids):
    enc_in = {}

    def pre_hook(mod, args, kwargs):
        enc_in.setdefault("embeds", args[0].detach().clone())
        enc_in.setdefault("rot", kwargs["rotary_pos_emb"].detach().clone())

    vis = model.transformer.vision(pixels[None])[0]
    assert vis.shape == (N_IMG + 2, HIDDEN)

    h = model.transformer.encoder.register_forward_pre_hook(pre_hook, with_kwargs=True)
    ids_t = torch.tensor([ids])
    out = model(input_ids=ids_t, images=pixels[None], return_dict=True, use_cache=False)
    h.remove()
    prefill = out.logits[0]
    T = len(ids) + N_IMG - 1
    assert prefill.shape == (T, VOCAB), prefill.shape
    embeds = enc_in["embeds"][0]
    assert embeds.shape == (T, HIDDEN)
    pos = rope_positions(model, enc_in["rot"])

    # greedy decoding as THUDM's generate drives it: prepare_inputs_for_generation /
    # _update_model_kwargs_for_generation of the remote code, tokenizer-style position_ids and
    # attention_mask over the TEXT-level ids
    L = len(ids)
    kw = {"images": pixels[None], "attention_mask": torch.ones(1, L, dtype=torch.long),
          "position_ids": torch.arange(L)[None], "use_cache": True}
    seq = ids_t.clone()
    first = True
    rows, toks, step_pos, kv_lens, margins = [], [], [], [], []
    for step in range(N_DECODE + 1):
        mi = model.prepare_inputs_for_generation(seq, is_first_forward=first, **kw)
        out = model(**mi, return_dict=True)
        last = out.logits[0, -1]
        if not first:
            rows.append(last.clone())
            step_pos.append(int(mi["position_ids"][0, -1]))
            kv_lens.append(int(out.past_key_values[0][0].shape[2]))
        else:
            assert torch.allclose(last, prefill[-1], atol=1e-5, rtol=0)
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(last))
        toks.append(nxt)
        seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
        kw = model._update_model_kwargs_for_generation(out, kw)
        first = kw.pop("is_first_forward", False)
    tokens = toks[:N_DECODE]          # tokens[k] = argmax(prefill[-1]) for k=0, argmax(rows[k-1]) after
    next_token = toks[N_DECODE]        # argmax(rows[N_DECODE-1])
    decode_logits = torch.stack(rows)  # row k: logits after feeding tokens[k] (incremental, KV cache)
    assert decode_logits.shape == (N_DECODE, VOCAB)

    # the same through transformers' own generate() (greedy, no EOS stop) where it runs
    gen_ok = None
    try:
        gc = transformers.GenerationConfig(max_new_tokens=N_DECODE + 1, do_sample=False,
                                           eos_token_id=None, pad_token_id=PAD, use_cache=True)
        g = model.generate(input_ids=ids_t, images=pixels[None], attention_mask=torch.ones(1, L, dtype=torch.long),
                           position_ids=torch.arange(L)[None], generation_config=gc,
                           output_logits=True, return_dict_in_generate=True)
        gtok = g.sequences[0, L:].tolist()
        glog = torch.stack([t[0] for t in g.logits])
        gen_ok = (gtok == toks, float((glog[1:] - decode_logits).abs().max()))
        assert gtok == toks, (gtok, toks)
    except Exception as ex:  # noqa: BLE001
        gen_ok = ("generate() failed: %r" % (ex,), None)

    # full recompute without cache: prompt + tokens through the image path
    full = model(input_ids=torch.tensor([ids + tokens]), images=pixels[None], return_dict=True,
                 use_cache=False).logits[0]
    d_full = float((full[T:] - decode_logits).abs().max())

    text = model(input_ids=torch.tensor([TEXT_ONLY]), return_dict=True, use_cache=False).logits[0]
    return dict(vis=vis, prefill=prefill, embeds=embeds, pos=pos, tokens=tokens, next_token=next_token,
                decode_logits=decode_logits, step_pos=step_pos, kv_lens=kv_lens, margins=margins,
                text=text, d_full=d_full, gen=gen_ok)


def r7(t):
    """tensor -> nested lists of floats rounded to 7 significant digits."""
    a = t.detach().to(torch.float64).numpy()
    if a.ndim == 0:
        return float(f"{a:.7g}")
    return [r7(torch.from_numpy(np.array(x))) if np.ndim(x) else float(f"{x:.7g}") for x in a]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "data"))
    ap.add_argument("--ref", default=os.environ.get("GLM4V_REF", "/work/glm4v-ref/run"),
                    help="directory holding the glm4v_ref/ package (THUDM remote code, see docstring)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  "
          f"safetensors {safetensors.__version__}  numpy {np.__version__}")

    for name, rope_ratio, seed in CASES:
        case_dir = os.path.join(args.out, name)
        torch.manual_seed(seed)
        w = make_weights()
        write_model(case_dir, chatglm_config(rope_ratio), w)
        wl = load_file(os.path.join(case_dir, "model.safetensors"))
        assert set(wl) == set(w) and all(torch.equal(wl[k], w[k]) for k in w)

        g = torch.Generator().manual_seed(PIXEL_SEED)
        pixels = torch.randn(IN_CH, IMG, IMG, generator=g, dtype=torch.float32)
        with open(os.path.join(case_dir, "pixels.f32"), "wb") as f:
            f.write(pixels.contiguous().numpy().astype("<f4").tobytes())

        model = load_reference(args.ref, case_dir)
        sd = model.state_dict()
        for k, t in wl.items():
            assert torch.equal(sd[k], t), f"weight {k} differs after load"
        R = reference_run(model, pixels, PROMPT)

        # ---- independent implementation
        svis = spec_vision(wl, pixels)
        sE, spos = spec_splice(wl, PROMPT, svis)
        slog = spec_lm(wl, sE, spos, rope_ratio)
        # decode: full recompute, new tokens take the next text indices
        sdec = []
        for k in range(N_DECODE):
            ids_k = PROMPT + R["tokens"][:k + 1]
            E_k, pos_k = spec_splice(wl, ids_k, svis)
            sdec.append(spec_lm(wl, E_k, pos_k, rope_ratio)[-1])
        sdec = torch.stack(sdec)
        emb = wl["transformer.embedding.word_embeddings.weight"].to(torch.float64)
        stext = spec_lm(wl, emb[torch.tensor(TEXT_ONLY)], list(range(len(TEXT_ONLY))), rope_ratio)

        diffs = {
            "vision_out": float((svis - R["vis"].double()).abs().max()),
            "inputs_embeds": float((sE - R["embeds"].double()).abs().max()),
            "prefill_logits": float((slog - R["prefill"].double()).abs().max()),
            "decode_logits": float((sdec - R["decode_logits"].double()).abs().max()),
            "text_only_logits": float((stext - R["text"].double()).abs().max()),
        }
        assert spos == R["pos"], (spos, R["pos"])
        want_step_pos = [len(PROMPT) + k for k in range(N_DECODE)]
        assert R["step_pos"] == want_step_pos, (R["step_pos"], want_step_pos)
        for k, v in diffs.items():
            assert v < 1e-4, (k, v)
        assert R["d_full"] < 1e-4, R["d_full"]
        assert min(R["margins"]) > MIN_MARGIN, R["margins"]
        assert float(R["prefill"].std()) > 0.5

        T = len(PROMPT) + N_IMG - 1
        ref = {
            "generator": GENERATOR,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "reference_code": REF_SOURCES,
            "seeds": {"weights_torch_manual_seed": seed, "pixels_generator_seed": PIXEL_SEED,
                      "pixels": "torch.randn(3,56,56, generator=torch.Generator().manual_seed(seed))"},
            "rope_ratio": rope_ratio,
            "boi_token_id": BOI, "eoi_token_id": EOI, "placeholder_token_id": PAD,
            "n_image_tokens": N_IMG + 2,
            "pixels_shape": [IN_CH, IMG, IMG],
            "pixels": r7(pixels),
            "vision_out": r7(R["vis"]),
            "input_ids": PROMPT,
            "inputs_embeds": r7(R["embeds"]),
            "position_ids": R["pos"],
            "prefill_logits": r7(R["prefill"]),
            "decode": {
                "tokens": R["tokens"],
                "next_token": R["next_token"],
                "logits": r7(R["decode_logits"]),
                "position_ids": R["step_pos"],
                "kv_len": R["kv_lens"],
                "top2_margin_min": float(f"{min(R['margins']):.4g}"),
                "note": "tokens[0] = argmax(prefill_logits[-1]); logits[k] = one incremental forward feeding "
                        "tokens[k] at position position_ids[k] (its text-token index) with the KV cache "
                        "(kv_len[k] keys after it); tokens[k+1] = argmax(logits[k]); next_token = "
                        "argmax(logits[-1]). EOS ids not stopped on. Greedy top1-top2 margins all > 1e-3 "
                        "(first seed tried).",
            },
            "text_only": {"input_ids": TEXT_ONLY, "position_ids": list(range(len(TEXT_ONLY))),
                          "logits": r7(R["text"])},
            "spec_crosscheck_max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        }

        # ---- second case: a real PNG file through the reference preprocessing, same model and prompt
        png_path = os.path.join(case_dir, "image.png")
        rgb = make_png_rgb()
        png_written = write_png(png_path, rgb)
        ppix, presized, d_emu, tv_version = preprocess_png(png_path)
        assert ppix.shape == (IN_CH, IMG, IMG)
        assert d_emu < 1e-6, d_emu          # torchvision's Resize on a PIL image is PIL's bicubic resize
        with open(os.path.join(case_dir, "image_pixels.f32"), "wb") as f:
            f.write(ppix.numpy().astype("<f4").tobytes())
        P = reference_run(model, ppix, PROMPT)
        assert torch.equal(P["text"], R["text"])
        pvis = spec_vision(wl, ppix)
        pE, ppos = spec_splice(wl, PROMPT, pvis)
        plog = spec_lm(wl, pE, ppos, rope_ratio)
        pdec = torch.stack([spec_lm(wl, *spec_splice(wl, PROMPT + P["tokens"][:k + 1], pvis), rope_ratio)[-1]
                            for k in range(N_DECODE)])
        pdiffs = {
            "vision_out": float((pvis - P["vis"].double()).abs().max()),
            "inputs_embeds": float((pE - P["embeds"].double()).abs().max()),
            "prefill_logits": float((plog - P["prefill"].double()).abs().max()),
            "decode_logits": float((pdec - P["decode_logits"].double()).abs().max()),
        }
        assert ppos == P["pos"] == R["pos"], (ppos, P["pos"])
        assert P["step_pos"] == want_step_pos, P["step_pos"]
        for k, v in pdiffs.items():
            assert v < 1e-4, ("png", k, v)
        assert P["d_full"] < 1e-4, P["d_full"]
        assert min(P["margins"]) > MIN_MARGIN, P["margins"]
        assert not set(P["tokens"] + [P["next_token"]]) & set(EOS), P["tokens"]   # a plain run does not stop early
        assert P["gen"][0] is True, P["gen"]                                      # transformers generate() agrees
        assert float((P["vis"] - R["vis"]).abs().max()) > 1e-2     # the image matters
        ref["png"] = {
            "image": "image.png",
            "image_size_wh": [PNG_W, PNG_H],
            "image_recipe": f"make_png_rgb(): R = 30 + 200 x/(W-1), G = 220 - 180 y/(H-1), B = 128 + 90 cos(r/7)"
                            f"(1 - x/(2(W-1))) with r = distance to (0.62 W, 0.4 H); rounded, plus "
                            f"numpy.random.RandomState({PNG_NOISE_SEED}).randint(-{PNG_NOISE_AMP}, "
                            f"{PNG_NOISE_AMP + 1}, (H, W, 3)); clipped to uint8; 8-bit RGB PNG (Pillow)",
            "preprocess": f"Image.open(p).convert('RGB') -> torchvision Resize(({IMG}, {IMG}), BICUBIC) -> ToTensor "
                          f"-> Normalize(mean={list(CLIP_MEAN)}, std={list(CLIP_STD)}) (THUDM's processor)",
            "torchvision": tv_version,
            "pillow": __import__("PIL").__version__,
            "resized_rgb": presized.tolist(),
            "pixels_file": "image_pixels.f32",
            "pixels": r7(ppix),
            "torchvision_vs_pil_resize_emulation_max_abs_diff": float(f"{d_emu:.3g}"),
            "vision_out": r7(P["vis"]),
            "input_ids": PROMPT,
            "position_ids": P["pos"],
            "prefill_logits": r7(P["prefill"]),
            "decode": {
                "tokens": P["tokens"],
                "next_token": P["next_token"],
                "logits": r7(P["decode_logits"]),
                "position_ids": P["step_pos"],
                "kv_len": P["kv_lens"],
                "top2_margin_min": float(f"{min(P['margins']):.4g}"),
                "note": "as decode of the random-pixels case. No EOS (1,2,3) among tokens or next_token, so a "
                        "plain generation of 8 (or 9) tokens does not stop early; transformers generate() gives "
                        "the same tokens.",
            },
            "spec_crosscheck_max_abs_diff": {k: float(f"{v:.3g}") for k, v in pdiffs.items()},
        }
        with open(os.path.join(case_dir, "reference.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
            f.write("\n")

        print(f"[{name}] rope_base={10000.0 * rope_ratio:g}  spliced length {T}")
        print(f"  vision_out std={float(R['vis'].std()):.4f} absmax={float(R['vis'].abs().max()):.3f}; "
              f"word-emb std={float(emb.std()):.3f}")
        print(f"  prefill logits std={float(R['prefill'].std()):.4f}; text_only std={float(R['text'].std()):.4f}")
        print(f"  position_ids = {R['pos']}")
        print(f"  decode tokens = {R['tokens']} next {R['next_token']}; positions {R['step_pos']}; kv {R['kv_lens']}")
        print(f"  greedy top1-top2 margin min = {min(R['margins']):.4f}")
        print(f"  max|incremental - full recompute (THUDM)| = {R['d_full']:.3e}")
        print(f"  transformers generate(): {R['gen']}")
        for k, v in diffs.items():
            print(f"  max|THUDM - spec(float64)| {k:17s} = {v:.3e}")
        print(f"[{name}/png] {png_path} {os.path.getsize(png_path)} bytes ({'written' if png_written else 'kept'}); "
              f"torchvision {tv_version}; max|torchvision - PIL emulation| = {d_emu:.3e}")
        print(f"  pixels min {float(ppix.min()):.3f} max {float(ppix.max()):.3f}; vision_out std={float(P['vis'].std()):.4f}; "
              f"max|vision_out - random-pixels case| = {float((P['vis'] - R['vis']).abs().max()):.3f}")
        print(f"  decode tokens = {P['tokens']} next {P['next_token']}; positions {P['step_pos']}; kv {P['kv_lens']}")
        print(f"  greedy top1-top2 margins = {[round(m, 4) for m in P['margins']]} min {min(P['margins']):.4f}")
        print(f"  max|incremental - full recompute (THUDM)| = {P['d_full']:.3e}")
        print(f"  transformers generate(): {P['gen']}")
        for k, v in pdiffs.items():
            print(f"  max|THUDM - spec(float64)| {k:17s} = {v:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
