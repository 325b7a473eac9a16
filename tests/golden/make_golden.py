#!/usr/bin/env python3
"""Generate golden reference data for glmtp (GLM-4-9B family inference engine).

Developers only -- never run by CI.  CI compares the engine against the files this
script committed under tests/golden/data/ and needs no PyTorch.

Requirements (CPU is enough):
    pip install torch transformers safetensors      # transformers >= 4.46 (GlmForCausalLM)

Usage:
    python3 tests/golden/make_golden.py [--out tests/golden/data]

For every case it
  1. draws random float32 weights for a tiny GLM-4 model (fixed torch seed),
  2. writes the SAME weights twice:
       <case>/chatglm/{config.json,model.safetensors}  original THUDM "chatglm" layout
       <case>/hf/{config.json,model.safetensors}       HF-native "glm" (GlmForCausalLM) layout
  3. loads <case>/hf/ with transformers.GlmForCausalLM (float32, eager attention) and
     records reference outputs in <case>/reference.json,
  4. cross-checks HF against an independent plain-torch implementation of the spec
     (/work/shared/glm4-spec.md section 2) that reads the chatglm/ files.

Note: GlmForCausalLM (model_type "glm") is the right reference; Glm4ForCausalLM
(model_type "glm4") is the GLM-4-0414 architecture with extra "sandwich" norms.
"""

import argparse
import inspect
import json
import math
import os
import sys

import numpy as np
import torch
import safetensors
import transformers
from safetensors.torch import save_file, load_file
from transformers import GlmForCausalLM

GENERATOR = "tests/golden/make_golden.py"

# ---------------------------------------------------------------- model shapes
HIDDEN = 128
N_HEADS = 8
HEAD_DIM = 16            # kv_channels (a case may set its own: CASES)
FFN = 96                 # ffn_hidden_size / intermediate_size
VOCAB = 256              # padded_vocab_size / vocab_size
N_LAYERS = 2
EPS = 1.5625e-07
SEQ_LEN = 4096           # seq_length / max_position_embeddings
EOS = [1, 2, 3]
PAD = 1

# name, kv groups, rope_ratio (RoPE base = 10000 * rope_ratio), head_dim
# nkv2_d128: GLM-4-9B's head_dim, the shape the CUDA backend's tensor-core
# attention kernels take (64 or 128), with 4 q heads per KV head
CASES = [
    ("nkv2_r500", 2, 500, 16),
    ("nkv4_r10000", 4, 10000, 16),
    ("nkv2_r1", 2, 1, 16),
    ("nkv2_d128", 2, 500, 128),
]

BASE_SEED = 20240605     # case i uses torch.manual_seed(BASE_SEED + i)
IDS_SEED = 4242
N_IDS = 16
PROMPT_LEN = 4           # decode/greedy prefix length
N_GREEDY = 12

# init scales
LIN_GAIN = 1.5           # linear weight std = LIN_GAIN / sqrt(in_features)
QKV_BIAS_STD = 0.3
NORM_STD = 0.1           # norm weights = 1 + N(0, NORM_STD^2)
EMB_STD = 1.0


def chatglm_config(nkv, rope_ratio):
    return {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "num_layers": N_LAYERS,
        "hidden_size": HIDDEN,
        "ffn_hidden_size": FFN,
        "num_attention_heads": N_HEADS,
        "kv_channels": HEAD_DIM,
        "multi_query_attention": True,
        "multi_query_group_num": nkv,
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
        "torch_dtype": "float32",
    }


def hf_config(nkv, rope_ratio):
    return {
        "architectures": ["GlmForCausalLM"],
        "model_type": "glm",
        "num_hidden_layers": N_LAYERS,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": N_HEADS,
        "head_dim": HEAD_DIM,
        "num_key_value_heads": nkv,
        "vocab_size": VOCAB,
        "max_position_embeddings": SEQ_LEN,
        "rope_theta": 10000.0 * rope_ratio,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": EPS,
        "attention_bias": True,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "torch_dtype": "float32",
    }


# ---------------------------------------------------------------- weights
def make_chatglm_weights(nkv):
    """Random f32 weights, chatglm names.  Uses the global torch RNG (seeded by caller)."""
    f32 = torch.float32

    def lin(out_f, in_f):
        return torch.randn(out_f, in_f, dtype=f32) * (LIN_GAIN / math.sqrt(in_f))

    def norm(n):
        return 1.0 + torch.randn(n, dtype=f32) * NORM_STD

    qkv_out = (N_HEADS + 2 * nkv) * HEAD_DIM
    w = {}
    w["transformer.embedding.word_embeddings.weight"] = torch.randn(VOCAB, HIDDEN, dtype=f32) * EMB_STD
    rd = HEAD_DIM // 2
    # Present in real checkpoints with base 10000 (NOT scaled by rope_ratio); readers must ignore it.
    w["transformer.rotary_pos_emb.inv_freq"] = (
        1.0 / (10000.0 ** (torch.arange(0, rd, 2, dtype=f32) / rd))).to(f32)
    for L in range(N_LAYERS):
        p = f"transformer.encoder.layers.{L}."
        w[p + "input_layernorm.weight"] = norm(HIDDEN)
        w[p + "self_attention.query_key_value.weight"] = lin(qkv_out, HIDDEN)
        w[p + "self_attention.query_key_value.bias"] = torch.randn(qkv_out, dtype=f32) * QKV_BIAS_STD
        w[p + "self_attention.dense.weight"] = lin(HIDDEN, N_HEADS * HEAD_DIM)
        w[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        w[p + "mlp.dense_h_to_4h.weight"] = lin(2 * FFN, HIDDEN)
        w[p + "mlp.dense_4h_to_h.weight"] = lin(HIDDEN, FFN)
    w["transformer.encoder.final_layernorm.weight"] = norm(HIDDEN)
    w["transformer.output_layer.weight"] = lin(VOCAB, HIDDEN)
    return w


def chatglm_to_hf(w, nkv):
    """Same mapping as transformers' convert_glm_weights_to_hf.py: split fused QKV rows [Q|K|V]."""
    q = N_HEADS * HEAD_DIM
    kv = nkv * HEAD_DIM
    h = {}
    h["model.embed_tokens.weight"] = w["transformer.embedding.word_embeddings.weight"]
    for L in range(N_LAYERS):
        s = f"transformer.encoder.layers.{L}."
        d = f"model.layers.{L}."
        h[d + "input_layernorm.weight"] = w[s + "input_layernorm.weight"]
        for kind in ("weight", "bias"):
            t = w[s + "self_attention.query_key_value." + kind]
            assert t.shape[0] == q + 2 * kv
            h[d + "self_attn.q_proj." + kind] = t[:q]
            h[d + "self_attn.k_proj." + kind] = t[q:q + kv]
            h[d + "self_attn.v_proj." + kind] = t[q + kv:]
        h[d + "self_attn.o_proj.weight"] = w[s + "self_attention.dense.weight"]
        h[d + "post_attention_layernorm.weight"] = w[s + "post_attention_layernorm.weight"]
        h[d + "mlp.gate_up_proj.weight"] = w[s + "mlp.dense_h_to_4h.weight"]
        h[d + "mlp.down_proj.weight"] = w[s + "mlp.dense_4h_to_h.weight"]
    h["model.norm.weight"] = w["transformer.encoder.final_layernorm.weight"]
    h["lm_head.weight"] = w["transformer.output_layer.weight"]
    return h


def write_layout(dirpath, config, tensors):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    # safetensors needs contiguous, non-aliasing tensors; keep sorted-name order (save_file sorts anyway)
    out = {k: tensors[k].detach().to(torch.float32).contiguous().clone() for k in sorted(tensors)}
    save_file(out, os.path.join(dirpath, "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------- independent spec implementation
def spec_forward(w, nkv, rope_ratio, ids):
    """Plain float64 implementation of glm4-spec.md section 2 from the chatglm tensors
    (fused QKV, explicit adjacent-pair RoPE on the first half of each head).
    Returns (final-norm hidden [T,H], logits [T,V])."""
    d64 = {k: v.to(torch.float64) for k, v in w.items()}
    T = len(ids)
    D, NH, RD = HEAD_DIM, N_HEADS, HEAD_DIM // 2
    base = 10000.0 * rope_ratio

    def rms(x, g):
        return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS)

    def rope(v, p):  # v [..., D]
        v = v.clone()
        for j in range(RD // 2):
            ang = p * base ** (-2.0 * j / RD)
            c, s = math.cos(ang), math.sin(ang)
            a, b = v[..., 2 * j].clone(), v[..., 2 * j + 1].clone()
            v[..., 2 * j] = a * c - b * s
            v[..., 2 * j + 1] = b * c + a * s
        return v

    x = d64["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)]
    for L in range(N_LAYERS):
        p = f"transformer.encoder.layers.{L}."
        h = rms(x, d64[p + "input_layernorm.weight"])
        qkv = h @ d64[p + "self_attention.query_key_value.weight"].T + d64[p + "self_attention.query_key_value.bias"]
        q = qkv[:, :NH * D].reshape(T, NH, D)
        k = qkv[:, NH * D:NH * D + nkv * D].reshape(T, nkv, D)
        v = qkv[:, NH * D + nkv * D:].reshape(T, nkv, D)
        for t in range(T):
            q[t] = rope(q[t], float(t))
            k[t] = rope(k[t], float(t))
        ctx = torch.zeros(T, NH, D, dtype=torch.float64)
        grp = NH // nkv
        for t in range(T):
            for i in range(NH):
                g = i // grp
                s = (k[:t + 1, g, :] @ q[t, i]) / math.sqrt(D)
                P = torch.softmax(s, dim=0)
                ctx[t, i] = P @ v[:t + 1, g, :]
        x = x + ctx.reshape(T, NH * D) @ d64[p + "self_attention.dense.weight"].T
        h2 = rms(x, d64[p + "post_attention_layernorm.weight"])
        gu = h2 @ d64[p + "mlp.dense_h_to_4h.weight"].T
        a = torch.nn.functional.silu(gu[:, :FFN]) * gu[:, FFN:]
        x = x + a @ d64[p + "mlp.dense_4h_to_h.weight"].T
    hid = rms(x, d64["transformer.encoder.final_layernorm.weight"])
    return hid, hid @ d64["transformer.output_layer.weight"].T


# ---------------------------------------------------------------- HF reference
def load_hf(hf_dir):
    kw = dict(attn_implementation="eager", output_loading_info=True)
    # transformers >= 4.56 prefers `dtype`; older versions only know `torch_dtype`.
    if "dtype" in inspect.signature(GlmForCausalLM.from_pretrained).parameters or \
            int(transformers.__version__.split(".")[0]) >= 5:
        kw["dtype"] = torch.float32
    else:
        kw["torch_dtype"] = torch.float32
    model, info = GlmForCausalLM.from_pretrained(hf_dir, **kw)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        vals = info.get(key) or []
        assert len(vals) == 0, f"{key} when loading {hf_dir}: {vals}"
    errs = info.get("error_msgs") or []
    assert len(errs) == 0, f"load errors: {errs}"
    model.eval()
    return model


def cache_kwarg_name(model):
    params = inspect.signature(model.forward).parameters
    if "cache" in params:          # transformers 5.x renamed past_key_values -> cache
        return "cache"
    return "past_key_values"


def out_cache(out):
    c = getattr(out, "cache", None)
    if c is None:
        c = getattr(out, "past_key_values", None)
    assert c is not None
    return c


def check_model_matches(model, hf_tensors, nkv, rope_ratio):
    cfg = model.config
    assert cfg.model_type == "glm"
    assert type(model).__name__ == "GlmForCausalLM"
    assert cfg.num_key_value_heads == nkv and cfg.head_dim == HEAD_DIM
    # RoPE: base 10000*rope_ratio on the first head_dim/2 dims -> head_dim/4 frequencies
    inv = model.model.rotary_emb.inv_freq.to(torch.float64)
    rd = HEAD_DIM // 2
    want = 1.0 / ((10000.0 * rope_ratio) ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    assert inv.shape == want.shape, (inv.shape, want.shape)
    assert torch.allclose(inv, want, rtol=1e-6, atol=0), (inv, want)
    # weights really loaded (and lm_head not tied to the embedding)
    sd = model.state_dict()
    for k, t in hf_tensors.items():
        assert torch.equal(sd[k], t), f"weight {k} differs after load"
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


@torch.no_grad()
def hf_reference(model, ids):
    ck = cache_kwarg_name(model)
    ids_t = torch.tensor([ids], dtype=torch.long)

    # prefill over all ids + final-norm hidden via hook
    captured = {}
    hook = model.model.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o.detach().clone()))
    out = model(input_ids=ids_t, use_cache=False)
    hook.remove()
    prefill_logits = out.logits[0].clone()
    prefill_hidden = captured["h"][0]
    assert prefill_logits.shape == (N_IDS, VOCAB) and prefill_hidden.shape == (N_IDS, HIDDEN)
    # sanity: lm_head(hidden) == logits
    assert torch.allclose(prefill_hidden @ model.lm_head.weight.T, prefill_logits, atol=1e-5)

    # incremental decode: ids[0:4] in one forward, then one at a time
    out = model(input_ids=ids_t[:, :PROMPT_LEN], use_cache=True)
    rows = [out.logits[0]]
    cache = out_cache(out)
    for t in range(PROMPT_LEN, N_IDS):
        out = model(input_ids=ids_t[:, t:t + 1], use_cache=True, **{ck: cache})
        cache = out_cache(out)
        rows.append(out.logits[0])
    decode_logits = torch.cat(rows, 0)
    assert decode_logits.shape == (N_IDS, VOCAB)

    # greedy from ids[0:4], manual argmax loop with KV cache
    out = model(input_ids=ids_t[:, :PROMPT_LEN], use_cache=True)
    cache = out_cache(out)
    last = out.logits[0, -1]
    greedy, margins = [], []
    for _ in range(N_GREEDY):
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(last))
        greedy.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{ck: cache})
        cache = out_cache(out)
        last = out.logits[0, -1]

    # cross-check greedy with a no-cache full-recompute loop
    seq = list(ids[:PROMPT_LEN])
    for _ in range(N_GREEDY):
        lg = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        seq.append(int(torch.argmax(lg)))
    assert seq[PROMPT_LEN:] == greedy, (seq[PROMPT_LEN:], greedy)

    return prefill_logits, prefill_hidden, decode_logits, greedy, margins


def fl(t):
    """float32 tensor -> nested lists of Python floats holding the exact float32 values."""
    a = t.detach().to(torch.float32).numpy()
    return [[float(x) for x in row] for row in a]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "data"))
    ap.add_argument("--cases", nargs="*", help="only these cases (default: all)")
    args = ap.parse_args()
    global HEAD_DIM

    torch.set_num_threads(1)          # reproducible reductions
    torch.use_deterministic_algorithms(True)

    print(f"torch {torch.__version__}  transformers {transformers.__version__}  "
          f"safetensors {safetensors.__version__}  numpy {np.__version__}")
    transformers.logging.set_verbosity_error()
    if hasattr(transformers.utils.logging, "disable_progress_bar"):
        transformers.utils.logging.disable_progress_bar()

    g = torch.Generator().manual_seed(IDS_SEED)
    ids = [int(x) for x in torch.randint(0, VOCAB, (N_IDS,), generator=g)]
    print("ids:", ids)

    for ci, (name, nkv, rope_ratio, head_dim) in enumerate(CASES):
        if args.cases and name not in args.cases:
            continue
        HEAD_DIM = head_dim
        torch.manual_seed(BASE_SEED + ci)
        case_dir = os.path.join(args.out, name)
        w = make_chatglm_weights(nkv)
        h = chatglm_to_hf(w, nkv)
        write_layout(os.path.join(case_dir, "chatglm"), chatglm_config(nkv, rope_ratio), w)
        write_layout(os.path.join(case_dir, "hf"), hf_config(nkv, rope_ratio), h)

        # round-trip: files hold exactly what we generated, and hf == chatglm split
        wl = load_file(os.path.join(case_dir, "chatglm", "model.safetensors"))
        hl = load_file(os.path.join(case_dir, "hf", "model.safetensors"))
        assert set(wl) == set(w) and all(torch.equal(wl[k], w[k]) for k in w)
        assert set(hl) == set(h) and all(torch.equal(hl[k], h[k]) for k in h)
        assert all(t.dtype == torch.float32 for t in list(wl.values()) + list(hl.values()))

        model = load_hf(os.path.join(case_dir, "hf"))
        check_model_matches(model, hl, nkv, rope_ratio)
        pl, ph, dl, greedy, margins = hf_reference(model, ids)

        # independent spec implementation from the chatglm files
        sh, sl = spec_forward(wl, nkv, rope_ratio, ids)
        d_spec = float((sl - pl.double()).abs().max())
        d_spec_h = float((sh - ph.double()).abs().max())
        assert d_spec < 1e-3 and d_spec_h < 1e-4, (d_spec, d_spec_h)

        d_pd = float((pl - dl).abs().max())
        assert d_pd < 1e-4, d_pd
        ref = {
            "generator": GENERATOR,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "ids": ids,
            "prefill_logits": fl(pl),
            "prefill_hidden": fl(ph),
            "decode_logits": fl(dl),
            "greedy_from_4": greedy,
        }
        with open(os.path.join(case_dir, "reference.json"), "w") as f:
            json.dump(ref, f)
            f.write("\n")

        print(f"[{name}] nkv={nkv} rope_base={10000.0 * rope_ratio:g} head_dim={HEAD_DIM}")
        print(f"  logits std={float(pl.std()):.4f} min={float(pl.min()):.3f} max={float(pl.max()):.3f}; "
              f"per-row std min={float(pl.std(dim=1).min()):.4f}")
        print(f"  max|prefill - decode| logits = {d_pd:.3e}")
        print(f"  max|HF - spec(float64, chatglm files)| logits = {d_spec:.3e}, hidden = {d_spec_h:.3e}")
        print(f"  greedy_from_4 = {greedy}")
        print(f"  greedy top1-top2 margin min = {min(margins):.4f}")
        assert float(pl.std()) > 0.5, "logit spread too small"
    return 0


if __name__ == "__main__":
    sys.exit(main())
