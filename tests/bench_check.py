#!/usr/bin/env python3
"""glmtp bench: every mode runs under mpirun -np 2 on a tiny model and writes
well-formed JSON with every field present and positive (times are never
asserted); --model-only prints the hand-computed glm-4-9b-chat figures; bad
options fail with a clear message; deploy/scaling.sh writes its CSV and PNG.
usage: bench_check.py GLMTP REPO_ROOT --mpirun "mpiexec --oversubscribe" """
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402


def run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


FIELDS = {"decode": ["batch", "context", "step_ms", "tokens_per_s", "moved_gbs", "limit_gbs", "ratio"],
          "prefill": ["tokens", "seconds", "tokens_per_s", "gflops", "linear_gflops", "limit_gflops", "ratio"],
          "throughput": ["requests", "input", "output", "seconds", "output_tokens_per_s", "total_tokens_per_s"],
          "prefix": ["document_tokens", "question_tokens", "ttft_cold_s", "ttft_cached_s", "ttft_uncached_s",
                     "cached_tokens", "ratio"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("root")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    launch = shlex.split(a.mpirun) + ["-np", "2"] if a.mpirun else []
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/m"
        run([a.glmtp, "make-model", "--preset", "tiny", "--vocab", "2000", "--out", model, "--seed", "2"])
        modes = {"decode": ["--batch", "1,3", "--context", "8,40", "--steps", "2"],
                 "prefill": ["--lens", "16,64"],
                 "throughput": ["--requests", "3", "--input", "12", "--output", "5"],
                 "prefix": ["--lens", "40,100", "--input", "5"]}
        for mode, opts in modes.items():
            js = f"{tmp}/{mode}.json"
            p = run(launch + [a.glmtp, "bench", mode, "--model", model, "--json", js] + opts)
            check(f"bench {mode} runs", p.returncode == 0, "" if p.returncode == 0 else p.stderr[-300:])
            if p.returncode:
                continue
            j = json.load(open(js))
            rows = j.get("results", [])
            want_rows = {"decode": 4, "prefill": 2, "throughput": 1, "prefix": 2}[mode]
            ok = len(rows) == want_rows and j.get("tp") == (2 if launch else 1) and j["limits"]["memory_gbs"] > 0
            bad = [(f, r.get(f)) for r in rows for f in FIELDS[mode] + ["allreduce_share"]
                   if not isinstance(r.get(f), (int, float)) or (r[f] <= 0 and f != "allreduce_share") or r[f] < 0]
            check(f"bench {mode} JSON: fields present and positive", ok and not bad, str(bad[:3]))
            if mode == "prefill" and "gemm_bf16_gflops" in j["limits"]:  # a build with the CPU GEMM library
                lim = j["limits"]
                bad = [(f, r.get(f)) for r in rows for f in ("limit_bf16_gflops", "ratio_bf16")
                       if not isinstance(r.get(f), (int, float)) or r[f] <= 0]
                check("bench prefill: the library's bf16 GEMM limit and ratio beside the fp32 one",
                      lim["gemm_bf16_gflops"] > 0 and "bf16" in lim.get("gemm_bf16_how", "") and not bad
                      and "bf16 GEMM" in p.stdout, str(bad[:3]) + " " + str(lim))
            check(f"bench {mode} prints a table with a units row",
                  ("(%)" in p.stdout or "(x)" in p.stdout) and "#" in p.stdout)
            if mode == "prefix":  # question 2 takes the document's full 16-token blocks from the cache
                got = [r.get("cached_tokens") for r in rows]
                check("bench prefix: the second question takes the document's full blocks from the cache",
                      got == [32, 96], f"cached_tokens {got}, want [32, 96]")
        env = dict(os.environ, TMPDIR=tmp)
        p = run([a.glmtp, "bench", "decode", "--preset", "tiny", "--layers", "1", "--batch", "1", "--context", "4",
                 "--steps", "1"], env)
        check("bench --preset makes and uses a random-weight model", p.returncode == 0 and
              os.path.exists(f"{tmp}/glmtp-bench-tiny-L1-bf16/config.json"), p.stderr[-200:])

        p = run([a.glmtp, "bench", "--model-only", "--gpu", "h100", "--tp", "1", "--link", "nvlink4",
                 "--preset", "glm-4-9b-chat"])
        check("model-only tp=1: 17.558 GB per decode step, 40 KiB KV/token",
              p.returncode == 0 and "read per decode step 17.558 GB" in p.stdout and "KV 40.0 KiB/token" in p.stdout,
              p.stdout[:300])
        p = run([a.glmtp, "bench", "--model-only", "--gpu", "h100", "--tp", "4", "--preset", "glm-4-9b-chat"])
        check("model-only tp=4: 20 KiB KV per token per rank", p.returncode == 0 and "KV 20.0 KiB/token" in p.stdout)

        # --plan: the capacity question for glm-4-9b-chat-1m at 1M tokens (figures: tests/test_roofline.c)
        p = run([a.glmtp, "bench", "--model-only", "--plan", "1048576", "--preset", "glm-4-9b-chat-1m",
                 "--json", f"{tmp}/plan.json"])
        rows = {}
        if p.returncode == 0 and os.path.exists(f"{tmp}/plan.json"):
            rows = {(r["kv_dtype"], r["gpu"]): r for r in json.load(open(f"{tmp}/plan.json"))["results"]}
        table = {(l.split()[0], l.split()[1]): l.split() for l in p.stdout.splitlines()
                 if l.split()[:1] in (["bf16"], ["fp8"])}
        want = {("bf16", "h200"): 1, ("bf16", "h100"): 2, ("bf16", "a100"): 2, ("fp8", "h100"): 1, ("fp8", "h200"): 1}
        check("model-only --plan 1M: the table's GPU counts (bf16: one H200, two H100; fp8: one H100)",
              all(k in table and table[k][3] == str(n) for k, n in want.items()), p.stdout[-900:])
        check("model-only --plan 1M: JSON rows for bf16 and fp8 on every GPU kind, same counts",
              len(rows) == 6 and all(rows[k]["gpus"] == n for k, n in want.items()), str(list(rows)))
        h200 = rows.get(("bf16", "h200"), {})
        check("model-only --plan 1M: one H200 holds 80 GiB of KV, prefill ~383 s, decode ~21.6 ms/token",
              h200.get("kv_bytes_per_gpu") == 80 * 2**30 and abs(h200.get("prefill_s", 0) - 383.09) < 0.1
              and abs(h200.get("decode_ms_per_token", 0) - 21.589) < 0.01, str(h200))

        for name, cmd, want in (
                ("tp not dividing heads", ["--model-only", "--tp", "3"], "cannot be split over 3 ranks"),
                ("unknown preset", ["decode", "--preset", "glm-5"], "unknown preset"),
                ("zero length", ["prefill", "--model", model, "--lens", "0"], "--lens"),
                ("zero batch", ["decode", "--model", model, "--batch", "0"], "--batch"),
                ("unknown mode", ["sideways", "--model", model], "unknown mode"),
                ("unknown gpu", ["--model-only", "--gpu", "tpu"], "unknown --gpu")):
            p = run([a.glmtp, "bench"] + cmd)
            check(f"bad option: {name}", p.returncode != 0 and want in p.stderr, p.stderr.strip()[:200])

        if a.mpirun:
            out = f"{tmp}/sweep"
            p = run(["bash", f"{a.root}/deploy/scaling.sh", "--glmtp", a.glmtp, "--model", model, "--max-tp", "2",
                     "--oversubscribe", "--out", out])
            csv = open(f"{out}/scaling.csv").read().splitlines() if os.path.exists(f"{out}/scaling.csv") else []
            check("scaling.sh writes a CSV row per tp", p.returncode == 0 and len(csv) == 3 and
                  csv[0].startswith("tp,"), p.stderr[-300:])
            png = open(f"{out}/scaling.png", "rb").read(8) if os.path.exists(f"{out}/scaling.png") else b""
            check("scaling.sh writes a PNG", png.startswith(b"\x89PNG"))
    finish()


if __name__ == "__main__":
    main()
