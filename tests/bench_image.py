#!/usr/bin/env python3
"""glmtp bench image (GLM-4V) on the tiny-4v preset, and the memory figures of
a vision model. Structure and sanity only, never speed:
  - bench image --images 1,2 (tp 1, and tp 2 under mpirun): the table with its
    units row, JSON with every figure present and positive, the time to the
    first token at least the tower's time per image (and at least the tower's
    time inside that run), prompt tokens = image rows + question tokens, the
    FLOPs per image equal to the formula computed here from config.json;
  - --vision-layers 1 of 2 (--model: the layers run are cut at run time;
    --preset: a model made with one layer): the FLOPs of one layer, the
    figures scaled to two layers no smaller than those measured;
  - a text model is refused naming the reason;
  - the start-up line gives language weights, vision weights and the KV pool
    apart; --model-only --plan counts the tower's weights and scratch per tp
    (glm-4v-9b at 8K: tp 1 28.24 GiB, tp 2 15.14, tp 4 8.71; 24 GB holds tp 2).
usage: bench_image.py GLMTP --mpirun "mpiexec --oversubscribe" """
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

GIB = 2 ** 30


def run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def vision_flops(cfg, layers):
    """vision_flops() of worker/vision.h from config.json: 2 FLOPs per
    multiply-add of every matmul as the tower runs it (cls row included),
    attention over all T x T pairs; the adapter's 2x2 conv, linear_proj, GLU."""
    v = cfg["vision_config"]
    hv, f, h, fg = v["hidden_size"], v["intermediate_size"], cfg["hidden_size"], cfg["ffn_hidden_size"]
    grid = v["image_size"] // v["patch_size"]
    t, n, k = grid * grid + 1, (grid // 2) ** 2, v["in_channels"] * v["patch_size"] ** 2
    layer = 2 * t * hv * 3 * hv + 4 * t * t * hv + 2 * t * hv * hv + 4 * t * hv * f
    return 2 * t * k * hv + layers * layer + 2 * n * 4 * hv * h + 2 * n * h * h + 6 * n * h * fg


def check_run(name, p, js, cfg, tp, layers_run, layers_full):
    check(f"{name}: runs", p.returncode == 0, p.stderr[-400:] if p.returncode else "")
    if p.returncode or not os.path.exists(js):
        return None
    j = json.load(open(js))
    v, rows = j.get("vision", {}), j.get("results", [])
    check(f"{name}: a table with units rows", "(ms/img)" in p.stdout and "(s)" in p.stdout and "#" in p.stdout)
    nums = ["ms_per_image", "layers_ms", "ms_per_image_full", "gflops_per_rank", "limit_gflops", "ratio",
            "flops_per_image", "flops_per_image_full"]
    bad = [(k, v.get(k)) for k in nums if not isinstance(v.get(k), (int, float)) or v[k] <= 0]
    rnums = ["ttft_s", "ttft_full_s", "vision_in_ttft_s", "floor_s", "ratio", "lm_prefill_flops_per_rank"]
    bad += [(k, r.get(k)) for r in rows for k in rnums if not isinstance(r.get(k), (int, float)) or r[k] <= 0]
    check(f"{name}: JSON figures present and positive, tp {tp}, limits measured",
          not bad and j.get("mode") == "image" and j.get("tp") == tp and j["limits"]["gemm_gflops"] > 0
          and j["limits"]["memory_gbs"] > 0, str(bad[:4]))
    check(f"{name}: a row per --images value", [r.get("images") for r in rows] == [1, 2], str(rows)[:200])
    if bad or len(rows) != 2:
        return j
    rows_img = cfg and (cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"] // 2) ** 2 + 2
    check(f"{name}: prompt tokens = image rows + question tokens",
          v["image_rows"] == rows_img and all(r["prompt_tokens"] == rows_img + j["question_tokens"] for r in rows),
          f"image_rows {v['image_rows']}, rows {[r['prompt_tokens'] for r in rows]}")
    one = rows[0]
    check(f"{name}: TTFT of one image question >= the tower's time per image",
          one["ttft_s"] >= v["ms_per_image"] / 1e3 and one["ttft_s"] >= one["vision_in_ttft_s"],
          f"ttft {one['ttft_s']:.4f} s, vision {v['ms_per_image']:.3f} ms, in run {one['vision_in_ttft_s']:.4f} s")
    check(f"{name}: two images take the tower twice inside the TTFT",
          rows[1]["ttft_s"] >= rows[1]["vision_in_ttft_s"] and rows[1]["lm_prefill_flops_per_rank"] ==
          2 * one["lm_prefill_flops_per_rank"], str(rows[1]))
    check(f"{name}: the tower's layers are part of its time", 0 < v["layers_ms"] <= v["ms_per_image"] * 1.001,
          f"layers {v['layers_ms']} ms of {v['ms_per_image']}")
    check(f"{name}: {layers_run} of {layers_full} vision layers",
          v["layers_run"] == layers_run and v["layers_full"] == layers_full, f"{v['layers_run']}/{v['layers_full']}")
    want, want_full = vision_flops(cfg, layers_run), vision_flops(cfg, layers_full)
    check(f"{name}: FLOPs per image = the formula from config.json",
          abs(v["flops_per_image"] - want) <= 1e-9 * want and abs(v["flops_per_image_full"] - want_full) <= 1e-9 * want_full,
          f"{v['flops_per_image']} vs {want}, full {v['flops_per_image_full']} vs {want_full}")
    rate = v["flops_per_image"] / tp / (v["ms_per_image"] / 1e3) / 1e9
    check(f"{name}: rate = FLOPs per rank / time, ratio = rate / GEMM limit",
          abs(v["gflops_per_rank"] - rate) <= 1e-6 * rate and
          abs(v["ratio"] - rate / v["limit_gflops"]) <= 1e-6 * v["ratio"], f"{v['gflops_per_rank']} vs {rate}")
    if layers_run == layers_full:
        check(f"{name}: nothing scaled when every layer runs",
              abs(v["ms_per_image_full"] - v["ms_per_image"]) < 1e-9 and all(
                  abs(r["ttft_full_s"] - r["ttft_s"]) < 1e-12 for r in rows))
    else:
        scale = v["ms_per_image"] + v["layers_ms"] * (layers_full / layers_run - 1)
        check(f"{name}: scaled to {layers_full} layers: the layers' time times {layers_full}/{layers_run}",
              abs(v["ms_per_image_full"] - scale) <= 1e-6 * scale and all(
                  r["ttft_full_s"] >= r["ttft_s"] for r in rows), f"{v['ms_per_image_full']} vs {scale}")
    return j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/t4v"
        p = run([a.glmtp, "make-model", "--preset", "tiny-4v", "--out", model, "--seed", "1"])
        check("make-model --preset tiny-4v", p.returncode == 0, p.stderr[-300:])
        cfg = json.load(open(f"{model}/config.json"))
        full = cfg["vision_config"]["num_hidden_layers"]
        opts = ["--images", "1,2", "--repeats", "2", "--input", "8"]

        js = f"{tmp}/tp1.json"
        p = run([a.glmtp, "bench", "image", "--model", model, "--json", js] + opts)
        check_run("bench image tp 1", p, js, cfg, 1, full, full)
        # the start-up line: language weights, vision weights and the KV pool apart
        m = re.search(r"rank 0/1: weights (\d+) bytes \(sharded (\d+), replicated (\d+)\), vision weights (\d+) "
                      r"bytes; KV cache (\d+) bytes", p.stderr)
        check("start-up line: language weights, vision weights, KV cache apart", bool(m) and int(m.group(4)) > 0
              and int(m.group(1)) == int(m.group(2)) + int(m.group(3)), p.stderr[:400])
        check("start-up line: GiB of language and of vision weights, the vision scratch for an image",
              re.search(r"GiB of language weights, [\d.]+ GiB of vision weights \(\+ [\d.]+ GiB of vision scratch",
                        p.stderr) is not None, p.stderr[:600])

        js = f"{tmp}/v1.json"
        p = run([a.glmtp, "bench", "image", "--model", model, "--vision-layers", "1", "--json", js] + opts)
        check_run("bench image --vision-layers 1 (--model)", p, js, cfg, 1, 1, full)

        env = dict(os.environ, TMPDIR=tmp)
        js = f"{tmp}/preset.json"
        p = run([a.glmtp, "bench", "image", "--preset", "tiny-4v", "--vision-layers", "1", "--json", js] + opts, env)
        made = f"{tmp}/glmtp-bench-tiny-4v-L2-V1-bf16"
        check("bench image --preset --vision-layers 1 makes a model with one vision layer",
              os.path.exists(f"{made}/config.json") and json.load(open(f"{made}/config.json"))
              ["vision_config"]["num_hidden_layers"] == 1, p.stderr[-300:])
        if os.path.exists(f"{made}/config.json"):
            check_run("bench image --preset tiny-4v --vision-layers 1", p, js, json.load(open(f"{made}/config.json")),
                      1, 1, full)

        if a.mpirun:
            js = f"{tmp}/tp2.json"
            p = run(shlex.split(a.mpirun) + ["-np", "2", a.glmtp, "bench", "image", "--model", model, "--json", js]
                    + opts)
            check_run("bench image tp 2", p, js, cfg, 2, full, full)

        text = f"{tmp}/text"
        run([a.glmtp, "make-model", "--preset", "tiny", "--vocab", "2000", "--out", text, "--seed", "1"])
        for name, cmd, want in (
                ("a text model", ["--model", text], "no vision tower"),
                ("too many vision layers", ["--model", model, "--vision-layers", "3"], "--vision-layers 3"),
                ("zero images", ["--model", model, "--images", "0"], "--images")):
            p = run([a.glmtp, "bench", "image"] + cmd)
            check(f"bench image refuses {name}", p.returncode != 0 and want in p.stderr, p.stderr.strip()[-300:])

        # Memory plan of the real shapes (analytic: no weights made)
        pj = f"{tmp}/plan.json"
        p = run([a.glmtp, "bench", "--model-only", "--plan", "8192", "--preset", "glm-4v-9b", "--memory", "24",
                 "--json", pj])
        rows = {r["tp"]: r for r in json.load(open(pj)).get("per_tp", [])} if p.returncode == 0 else {}
        need = {tp: round(r["need_bytes"] / GIB, 2) for tp, r in rows.items()}
        check("plan glm-4v-9b at 8K: need per rank tp 1 28.24, tp 2 15.14, tp 4 8.71 GiB",
              need.get(1) == 28.24 and need.get(2) == 15.14 and need.get(4) == 8.71, str(need) + p.stderr[-200:])
        check("plan glm-4v-9b: 24 GB holds tp 2 and 4, not tp 1",
              rows and not rows[1]["fits"] and rows[2]["fits"] and rows[4]["fits"], str(rows)[:300])
        parts = ["language_weight_bytes", "vision_weight_bytes", "kv_bytes", "act_bytes", "vision_act_bytes"]
        check("plan glm-4v-9b: the vision tower's weights and scratch counted, need = the parts + 0.5 GiB",
              rows and all(r["vision_weight_bytes"] > 0 and r["vision_act_bytes"] > 0 and
                           abs(sum(r[k] for k in parts) + 0.5 * GIB - r["need_bytes"]) < 1 for r in rows.values()),
              str(rows.get(1)))
        check("plan glm-4v-9b: the tower's sharded weights shrink with tp",
              rows and rows[1]["vision_weight_bytes"] > rows[2]["vision_weight_bytes"] > rows[4]["vision_weight_bytes"],
              str({k: r["vision_weight_bytes"] for k, r in rows.items()}))
        p = run([a.glmtp, "bench", "--model-only", "--plan", "8192", "--preset", "glm-4-9b-chat", "--json", pj])
        rows = json.load(open(pj)).get("per_tp", []) if p.returncode == 0 else []
        check("plan of a text model: no vision bytes", rows and all(
            r["vision_weight_bytes"] == 0 and r["vision_act_bytes"] == 0 for r in rows), str(rows)[:200])
    finish()


if __name__ == "__main__":
    main()
