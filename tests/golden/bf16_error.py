#!/usr/bin/env python3
"""How far bf16 weights take glmtp's prefill logits from the f32 golden data.

Developers only (needs PyTorch and safetensors for the bf16 copies; CI runs
check_golden.py on the f32 weights at 1e-4). For every golden case: the chatglm
checkpoint with every tensor rounded to bf16 (a bf16 release of the same
model), scored as one prefill of the reference ids, logits against the HF f32
reference; once through the CPU backend's default prefill GEMM (the library:
bf16 activations x bf16 weights for T >= 16) and once with GLMTP_CPU_OWN_GEMM=1
(the own kernel: fp32 activations x widened weights). The f32 checkpoint's
error is printed beside them (f32 weights take the own kernel either way). The golden prompts have 16 ids, the first count
the library path takes.

usage: bf16_error.py GLMTP [DATA_DIR (default tests/golden/data)]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file


def logits(glmtp, model, ids, own):
    env = dict(os.environ)
    if own:
        env["GLMTP_CPU_OWN_GEMM"] = "1"
    p = subprocess.run([glmtp, "score", "--model", model, "--ids", ",".join(map(str, ids)), "--dump", "logits",
                        "--top", "0", "--quiet"], capture_output=True, text=True, env=env, check=True)
    return [json.loads(l)["logits"] for l in p.stdout.splitlines() if l.strip()]


def max_diff(got, want):
    return max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w))


def bf16_copy(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        if name != "model.safetensors":
            shutil.copy(os.path.join(src, name), dst)
    t = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in t.items()}, os.path.join(dst, "model.safetensors"))
    cfg = json.load(open(os.path.join(dst, "config.json")))
    cfg["torch_dtype"] = "bfloat16"
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)


def main():
    glmtp = sys.argv[1]
    data = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    print(f"{'case':<14} {'f32 lib':>9} {'f32 own':>9} {'bf16 lib':>9} {'bf16 own':>9}   (max |logit - HF f32|)")
    with tempfile.TemporaryDirectory() as tmp:
        for case in sorted(os.listdir(data)):
            ref_path = os.path.join(data, case, "reference.json")
            if not os.path.exists(ref_path) or not os.path.isdir(os.path.join(data, case, "chatglm")):
                continue
            ref = json.load(open(ref_path))
            if "prefill_logits" not in ref:
                continue
            f32 = os.path.join(data, case, "chatglm")
            b16 = os.path.join(tmp, case)
            bf16_copy(f32, b16)
            want = ref["prefill_logits"]
            d = [max_diff(logits(glmtp, m, ref["ids"], own), want) for m in (f32, b16) for own in (0, 1)]
            print(f"{case:<14} {d[0]:>9.2g} {d[1]:>9.2g} {d[2]:>9.3f} {d[3]:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
