#!/usr/bin/env python3
"""The figures of device-check.sh, each as a ratio measured in the same run,
from the result parts it wrote (PARTS_DIR/NN_name.json). Prints one JSON line.

usage: check_summary.py PARTS_DIR LAYERS
"""
import glob
import json
import os
import re
import sys


def main():
    parts = {}
    for f in glob.glob(os.path.join(sys.argv[1], "*.json")):
        try:
            parts[os.path.basename(f)[3:-5]] = json.load(open(f))
        except ValueError:
            pass
    s = {"layers": int(sys.argv[2])}
    dec, pre = parts.get("bench_decode", {}), parts.get("bench_prefill", {})
    hf = parts.get("hf_transformers", {})
    for r in dec.get("results", []):
        s[f"decode_b{r['batch']}_ms"] = r["step_ms"]
        s[f"decode_b{r['batch']}_tok_s"] = r["tokens_per_s"]
    if dec.get("results"):
        r = dec["results"][0]
        s["decode_b1_ms"] = r["step_ms"]
        s["decode_context"] = r["context"]
        s["decode_floor_ms"] = r["step_ms"] * r["ratio"]  # bytes moved / copy bandwidth measured in the run
        s["decode_over_floor"] = 1 / r["ratio"] if r["ratio"] else None
        s["copy_bw_gbs"] = dec["limits"]["memory_gbs"]
    for r in pre.get("results", []):
        n = r["tokens"]
        s[f"prefill_{n}_s"] = r["seconds"]
        s[f"prefill_{n}_linear_vs_gemm"] = r["ratio"]
        s[f"prefill_{n}_linear_tflops"] = r["linear_gflops"] / 1e3
        s[f"prefill_{n}_gemm_tflops"] = r["limit_gflops"] / 1e3
        s[f"attention_{n}_tflops"] = r["attention_gflops"] / 1e3
        # The linear layers' own rate: the step less the attention op's time
        # (measured alone) in every layer; norms, RoPE, SwiGLU stay in.
        rest = r["seconds"] - s["layers"] * r.get("attention_layer_seconds", 0)
        if rest > 0:
            lin = r["linear_gflops"] * r["seconds"] / rest
            s[f"prefill_{n}_linear_excl_attention_tflops"] = lin / 1e3
            s[f"prefill_{n}_linear_excl_attention_vs_gemm"] = lin / r["limit_gflops"]
    ng = parts.get("bench_decode_nographs", {})
    if ng.get("results"):
        s["decode_b1_nographs_ms"] = ng["results"][0]["step_ms"]
    fu = parts.get("bench_decode_unfused", {})
    if fu.get("results"):
        s["decode_b1_unfused_ms"] = fu["results"][0]["step_ms"]
    nm = parts.get("bench_decode_nogemv", {})
    for r in nm.get("results", []):
        s[f"decode_b{r['batch']}_nogemv_ms"] = r["step_ms"]
    for name, key in (("bench_decode_topk", "topk50_gpu"), ("bench_decode_topk_host", "topk50_host"),
                      ("bench_decode_pdl", "pdl"),
                      ("bench_decode_skinny", "skinny"), ("bench_decode_per_head", "per_head"),
                      ("bench_decode_nosplit", "nosplit")):
        for r in parts.get(name, {}).get("results", []):  # sampled decode: candidates on the GPU or the host
            s[f"decode_b{r['batch']}_{key}_ms"] = r["step_ms"]
    for name, key in (("bench_decode_long", "per_head"), ("bench_decode_long_gqa", "grouped")):
        for r in parts.get(name, {}).get("results", []):  # long contexts, each attention kernel
            s[f"decode_b{r['batch']}_ctx{r['context']}_{key}_ms"] = r["step_ms"]
            s[f"decode_b{r['batch']}_ctx{r['context']}_{key}_over_floor"] = 1 / r["ratio"] if r["ratio"] else None
    for name, key in (("decode_kernel_trace", "decode_b1"), ("prefill_kernel_trace", "prefill_1")):
        t = parts.get(name, {})  # CUPTI trace: kernel time per step, time with no kernel running, top kernels
        if t.get("kernels"):
            s[f"{key}_trace_kernel_us"] = t["total_us_per_step"]
            if "no_kernel_us_per_step" in t:
                s[f"{key}_trace_no_kernel_us"] = t["no_kernel_us_per_step"]
            s[f"{key}_trace_top"] = [[k["name"], round(k["us_per_step"], 1)] for k in t["kernels"][:6]]
    for r in parts.get("bench_prefill_ltbias", {}).get("results", []):  # QKV bias in cuBLASLt's epilogue
        s[f"prefill_{r['tokens']}_ltbias_s"] = r["seconds"]
        s[f"prefill_{r['tokens']}_ltbias_linear_vs_gemm"] = r["linear_gflops"] / r["limit_gflops"]
    for v in (1, 2):  # runs that chose a prefill attention variant explicitly
        for r in parts.get(f"bench_prefill_v{v}", {}).get("results", []):
            s[f"prefill_{r['tokens']}_v{v}_s"] = r["seconds"]
            s[f"attention_{r['tokens']}_v{v}_tflops"] = r["attention_gflops"] / 1e3
    nf = parts.get("bench_prefill_noflash", {})
    for r in nf.get("results", []):
        s[f"prefill_{r['tokens']}_noflash_s"] = r["seconds"]
        s[f"attention_{r['tokens']}_noflash_tflops"] = r["attention_gflops"] / 1e3
    if hf.get("decode_ms_per_token") and "decode_b1_ms" in s:
        s["hf_decode_ms"] = hf["decode_ms_per_token"]
        s["speedup_vs_hf_decode"] = hf["decode_ms_per_token"] / s["decode_b1_ms"]
    if hf.get("prefill_s") and pre.get("results"):
        r = next((r for r in pre["results"] if r["tokens"] == hf["prefill_tokens"]), None)
        if r:
            s["hf_prefill_s"] = hf["prefill_s"]
            s["speedup_vs_hf_prefill"] = hf["prefill_s"] / r["seconds"]
    vision_summary(parts, s)
    s["opt_in"] = opt_in_verdicts(parts, s)
    print(json.dumps(s))


def vision_summary(parts, s):
    """Step 8 (GLM-4V): the tower's kernels and golden cases passed or not,
    ms per image (with every layer, or scaled to them) against the GEMM of its
    fc1 shape, and the time to the first token of image questions."""
    vk = parts.get("vision_kernels")
    if isinstance(vk, dict):
        s["vision_kernels"] = vk.get("summary") or f"exit {vk.get('exit')}"
    elif vk is not None:
        s["vision_kernels"] = vk  # skipped: no CUDA device
    vg = parts.get("vision_golden")
    if isinstance(vg, dict):
        s["vision_golden_passed"] = vg.get("exit") == 0
    bi = parts.get("bench_image", {})
    v = bi.get("vision") if isinstance(bi, dict) else None
    if not v:
        return
    s["vision_image_px"] = v["image_size"]
    s["vision_layers"] = f"{v['layers_run']}/{v['layers_full']}"
    s["vision_ms_per_image"] = v["ms_per_image"]
    s["vision_ms_per_image_all_layers"] = v["ms_per_image_full"]
    s["vision_tflops"] = v["gflops_per_rank"] / 1e3
    s["vision_gemm_tflops"] = v["limit_gflops"] / 1e3
    s["vision_vs_gemm"] = v["ratio"]
    for r in bi.get("results", []):
        s[f"image_ttft_{r['images']}img_s"] = r["ttft_s"]
        s[f"image_ttft_{r['images']}img_vs_floor"] = r["ratio"]


def opt_in_verdicts(parts, s):
    """Each opt-in switch: did its correctness check pass in this run, and
    what did it do to its figure (< 1: faster)? A switch that passed and is
    faster is a candidate for the default; the verdict is the caller's."""
    kt = parts.get("test_gpu_kernels", {})
    m = re.match(r"(\d+) passed, (\d+) failed", kt.get("summary", "") if isinstance(kt, dict) else "")
    kernels_ok = (int(m.group(2)) == 0 and kt.get("exit") == 0) if m else None

    def own_tests_passed(*tags):
        """None of the kernel test's failures is one of this switch's cases
        (their names carry the tags); None when the test did not run."""
        if kernels_ok is None:
            return None
        return not any(t in f for f in kt.get("failures", []) for t in tags)

    def golden_passed(case):
        g = [g for g in parts.get("golden", []) if g.get("case") == case]
        return all(x.get("exit") == 0 for x in g) if g else None

    def equal(name):
        p = parts.get(name)
        return None if p is None else bool(p.get("equal"))

    def ratio(a, b):
        return s[a] / s[b] if a in s and b in s and s[b] else None

    return {
        "GLMTP_PDL": {"tokens_equal": equal("tiny_pdl"), "decode_b1_vs_default": ratio("decode_b1_pdl_ms", "decode_b1_ms"),
                      "decode_b64_vs_default": ratio("decode_b64_pdl_ms", "decode_b64_ms")},
        # on by default since run 4: their figures are the default against the
        # switch off (< 1: the default is faster)
        "GLMTP_FUSED_* (default)": {"tokens_equal": equal("tiny_fused_add_norm"),
                                    "kernel_tests_passed": own_tests_passed("add_rmsnorm", "rope_kv_store",
                                                                            "matmul_swiglu"),
                                    "decode_b1_vs_unfused": ratio("decode_b1_ms", "decode_b1_unfused_ms")},
        "GLMTP_GPU_TOPK (default)": {"tokens_equal": equal("tiny_gpu_top_k"),
                                     "kernel_tests_passed": own_tests_passed("top_k"),
                                     "decode_b64_topk50_vs_host": ratio("decode_b64_topk50_gpu_ms",
                                                                        "decode_b64_topk50_host_ms")},
        "GLMTP_GQA_ATTENTION (default)": {
            "kernel_tests_passed": own_tests_passed("(grouped)"),
            "golden_passed": golden_passed("nkv2_d128"),
            "per_head_golden_passed": all(g.get("exit") == 0 for g in parts.get("golden_per_head", []))
            if parts.get("golden_per_head") else None,
            "decode_b1_ctx131000_vs_per_head": ratio("decode_b1_ctx131000_grouped_ms", "decode_b1_ctx131000_per_head_ms"),
            "decode_b1_vs_per_head": ratio("decode_b1_ms", "decode_b1_per_head_ms"),
            "decode_b64_vs_per_head": ratio("decode_b64_ms", "decode_b64_per_head_ms")},
        "GLMTP_GEMV_SPLIT (default)": {"kernel_tests_passed": own_tests_passed("matmul T=1", "matmul_f32 T=1",
                                                                                 "(no split)", "matmul_swiglu T=1"),
                                       "decode_b1_vs_no_split": ratio("decode_b1_ms", "decode_b1_nosplit_ms")},
        "GLMTP_SKINNY": {"kernel_tests_passed": own_tests_passed("(skinny)"),
                         "decode_b8_vs_default": ratio("decode_b8_skinny_ms", "decode_b8_ms")},
        "GLMTP_LT_BIAS": {"kernel_tests_passed": own_tests_passed("(bias epilogue)"),
                          "epilogue_taken": None if kernels_ok is None else
                          not any("bias epilogue" in n for n in kt.get("notes", [])),
                          "prefill_vs_default": next((s[k] / s[k.replace("_ltbias", "")] for k in s
                                                      if k.endswith("_ltbias_s") and k.replace("_ltbias", "") in s),
                                                     None)},
    }


if __name__ == "__main__":
    main()
